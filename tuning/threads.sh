#!/usr/bin/env bash
# Where a single member's CPU goes, per thread: one ferrocd (BIN, default the release build)
# with a fresh data dir, one loadgen run (put at 100 clients over 10 connections unless
# WORKLOAD/CLIENTS/CONNS say otherwise), and each thread's CPU time over the run from
# /proc/PID/task/*/stat, summed by thread name, in us per request; then the run's fdatasyncs
# from /metrics. glommio's blocking thread (log zeroing, bcrypt) inherits its shard's name and
# is counted with it; threads that exit during the run are not counted.
#
# usage: tuning/threads.sh [BIN [TOTAL]]   (defaults target/release/ferrocd, 300000)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/ferrocd} total=${2:-300000}
source tuning/lib.sh

start_one t "$bin"
pid=$PIDS
snap() {
  for t in /proc/"$pid"/task/*; do
    echo "$(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done | awk '{ a[$1] += $2 } END { for (k in a) print k, a[k] }' | LC_ALL=C sort -k1,1
}
snap >"$work/before"
target/release/loadgen run --endpoints "$ENDPOINTS" --workload "${WORKLOAD:-put}" \
  --clients "${CLIENTS:-100}" --conns "${CONNS:-10}" --total "$total" --key-space 100000 \
  --server-pid "$pid" | sed -n 1,2p
snap >"$work/after"
hz=$(getconf CLK_TCK)
LC_ALL=C command join -a 2 "$work/before" "$work/after" | awk -v n="$total" -v hz="$hz" \
  '{ d = $NF - (NF == 3 ? $2 : 0); if (d > 0) printf "%-18s %6.2f us/request\n", $1, d * 1e6 / hz / n }'
curl -s "http://$ENDPOINTS/metrics" | awk '
  $1 == "etcd_disk_wal_fsync_duration_seconds_count" { n = $2 }
  $1 == "etcd_disk_wal_fsync_duration_seconds_sum" { s = $2 }
  $1 == "etcd_server_proposals_committed_total" { w = $2 }
  END { if (n > 0) printf "fdatasyncs %d, writes per fdatasync %.1f, mean fdatasync %.3f ms\n", n, w / n, 1000 * s / n
        else print "no fdatasync counts in /metrics" }'

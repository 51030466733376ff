#!/usr/bin/env bash
# Puts at a fixed rate while checkpoints run: one member (BIN, default the release build) on a
# fresh data dir, six runs of loadgen put in open loop at RATE/s (100 clients over 10
# connections, 8 B keys in 100k, 256 B values, 100,000 puts each); with the default
# --checkpoint-min-bytes (64 MiB) a checkpoint runs during the 3rd and the 5th. Prints each
# run's latency line, the fdatasync histogram and the checkpoints' log lines.
#
# usage: tuning/checkpoint-latency.sh [BIN] [RATE]   (defaults target/release/ferrocd, 15000)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/ferrocd} rate=${2:-15000}
source tuning/lib.sh
start_one c "$bin"
for i in 1 2 3 4 5 6; do
  target/release/loadgen run --endpoints "$ENDPOINTS" --server-pid "$PIDS" --workload put \
    --clients 100 --conns 10 --total 100000 --rate "$rate" 2>/dev/null | grep -E "req/s|late" | sed "s/^/run $i: /"
done
curl -s "http://$ENDPOINTS/metrics" | grep -E '^etcd_disk_wal_fsync_duration_seconds_bucket' | awk '{print $1, $2}'
grep -E "checkpoint taken" "$work/c0.log" || true

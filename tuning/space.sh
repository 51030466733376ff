#!/usr/bin/env bash
# The storage issue's space goal, side by side with etcd: 1,000 keys of 256 B overwritten 20
# times (loadgen --sequential-keys), then compaction at the current revision and Defragment.
# Reports dbSize and dbSizeInUse (etcdctl endpoint status) after the writes and after
# compaction + defragment, and the data dir's size on disk. One server at a time.
# Writes tuning/results/<date>-space.md.
#
# usage: tuning/space.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source tuning/lib.sh

status() { etcdctl --endpoints "$1" endpoint status -w json | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; print(s["dbSize"], s.get("dbSizeInUse", 0), s["header"]["revision"])'; }

# measure KIND BIN [FLAGS...]: prints one table row
measure() {
  local kind=$1 bin=$2
  shift 2
  start_one "$kind" "$bin" "$@"
  local eps=$ENDPOINTS pid=$PIDS
  target/release/loadgen run --endpoints "$eps" --workload put --clients 10 --conns 2 \
    --total 20000 --key-space 1000 --sequential-keys --val-size 256 >/dev/null
  local size0 use0 rev size1 use1 du1
  read -r size0 use0 rev < <(status "$eps")
  etcdctl --endpoints "$eps" compact --physical "$rev" >/dev/null
  etcdctl --endpoints "$eps" --command-timeout=60s defrag >/dev/null
  read -r size1 use1 _ < <(status "$eps")
  du1=$(du -sk "$work/${kind}0" | awk '{print $1}')
  printf '| %s | %s | %s | %s | %s | %.2fx | %s KiB |\n' "$kind" "$size0" "$use0" "$size1" "$use1" \
    "$(echo "$size1 / 256000" | bc -l)" "$du1"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

out="tuning/results/$(date -u +%Y-%m-%d)-space.md"
[ -e "$out" ] && out="tuning/results/$(date -u +%Y-%m-%d-%H%M)-space.md"
{
  echo "# Space after overwrites, compaction and defragment: ferrocd vs etcd $(etcd --version | head -n1 | awk '{print $3}')"
  echo
  stamp
  echo "- one member, fresh data dir; 1,000 keys (8 B) of 256 B values written 20 times each (loadgen --sequential-keys, 10 clients): 256,000 B of live values at the end"
  echo "- then \`etcdctl compact --physical <current revision>\` (it answers once the compaction is done) and \`etcdctl defrag\`; sizes from \`etcdctl endpoint status\` (bytes), du of the data dir"
  echo
  echo "| server | dbSize after writes | in use | dbSize after compact + defrag | in use | dbSize / live values | du after |"
  echo "|---|---|---|---|---|---|---|"
  measure ferrocd target/release/ferrocd
  measure etcd etcd
} | tee "$out.tmp"
mv "$out.tmp" "$out"

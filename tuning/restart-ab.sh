#!/usr/bin/env bash
# Restart A/B of two ferrocd binaries on the same data: one member filled with KEYS puts of
# 256 B values (one per key, loadgen, 100 clients) and Defragment (one checkpoint), killed
# with -9; then ROUNDS restarts of each binary, alternating, each on a fresh copy of that data
# dir (page cache warm): the time from the process start to the first healthy /health, the
# checkpoint's restore time from its log, and the RSS then. Writes
# tuning/results/<date>-<HHMM>-restart-ab.md.
#
# usage: tuning/restart-ab.sh OLD_BIN NEW_BIN [KEYS] [ROUNDS]   (defaults 1000000 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 keys=${3:-1000000} rounds=${4:-5}
source tuning/lib.sh

start_one fill "$new"
target/release/loadgen run --endpoints "$ENDPOINTS" --workload put --key-space "$keys" \
  --val-size 256 --total "$keys" --clients 100 --conns 10 >"$work/fill.txt" 2>/dev/null
etcdctl --endpoints "$ENDPOINTS" --command-timeout 600s defrag >/dev/null
kill -9 "$PIDS"; wait "$PIDS" 2>/dev/null || true
size=$(du -sm "$work/fill0" | cut -f1)

restart() { # BIN -> "ms restore_ms rss_mib"
  local bin=$1 cp pp pid t0 t1 restore rss
  rm -rf "$work/r"; cp -a "$work/fill0" "$work/r"
  cp=$(port); pp=$(port)
  t0=$(date +%s%N)
  "$bin" --name fill0 --data-dir "$work/r" \
    --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "fill0=http://127.0.0.1:$pp" --initial-cluster-token fill-bench \
    2>"$work/r.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 6000); do curl -sf "http://127.0.0.1:$cp/health" >/dev/null && break; sleep 0.005; done
  t1=$(date +%s%N)
  restore=$(grep -o -m1 -E 'checkpoint restored.*ms=[0-9]+' "$work/r.log" | grep -o -E 'ms=[0-9]+' | cut -d= -f2 || echo "?")
  rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status")
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  echo "$(((t1 - t0) / 1000000)) $restore $rss"
}

out="tuning/results/$(date -u +%Y-%m-%d-%H%M)-restart-ab.md"
{
  echo "# Restart A/B with $keys revisions: $(basename "$(dirname "$old")")/$(basename "$old") and $(basename "$(dirname "$new")")/$(basename "$new")"
  echo
  stamp
  echo "- data: $keys puts of 256 B values (key space $keys, 8 B keys; $(grep -o -E '[0-9]+ req/s' "$work/fill.txt" | head -1)), Defragment, kill -9; $size MiB data dir"
  echo "- each restart on a fresh copy of the data dir, alternating; time from the process start to the first healthy /health; restore = \`checkpoint restored ... ms=\` of its log"
  echo
  echo "| round | old: restart ms | restore ms | RSS MiB | new: restart ms | restore ms | RSS MiB |"
  echo "|---|---|---|---|---|---|---|"
  for r in $(seq "$rounds"); do
    read -r a ar am <<<"$(restart "$old")"
    read -r b br bm <<<"$(restart "$new")"
    echo "| $r | $a | $ar | $am | $b | $br | $bm |"
  done
} >"$out"
cat "$out"

#!/usr/bin/env bash
# Defragment while puts run flat out: one member (each BIN given, default the release build)
# on a fresh data dir, filled with KEYS keys of 1 KiB (default 200,000); then loadgen put at
# 100 clients, closed loop, 1 KiB values over the same keys (the log grows tens of MB a
# second, so size-triggered checkpoints run one after another), and meanwhile five
# `etcdctl defrag` calls one after another, each timed. Prints each call's seconds, the
# load's report and the checkpoints' log lines (nice value, whether hurried).
#
# usage: tuning/defrag-under-load.sh [BIN...]   (KEYS=200000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- target/release/ferrocd
keys=${KEYS:-200000}
source tuning/lib.sh
n=0
for bin in "$@"; do
  n=$((n + 1))
  start_one "d$n" "$bin"
  fill "$ENDPOINTS" "$keys" >/dev/null
  echo "== $bin ($keys keys of 1 KiB)"
  target/release/loadgen run --endpoints "$ENDPOINTS" --server-pid "$PIDS" --workload put \
    --clients 100 --conns 10 --total 100000000 --key-space "$keys" --val-size 1024 \
    >"$work/load$n.txt" 2>/dev/null &
  load=$!
  sleep 5
  for i in 1 2 3 4 5; do
    t0=$(date +%s.%N)
    etcdctl --endpoints "$ENDPOINTS" --command-timeout=600s defrag >/dev/null
    t1=$(date +%s.%N)
    printf 'defrag %d: %.2f s\n' "$i" "$(echo "$t1 - $t0" | bc)"
  done
  kill -INT "$load"; wait "$load" || true
  grep -E "req/s" "$work/load$n.txt" || true
  grep "checkpoint taken" "$work/d${n}0.log" | while read -r line; do
    echo "checkpoint: $(grep -oE '(ms|nice|hurried)=[-a-z0-9]+' <<<"$line" | tr '\n' ' ')"
  done
  kill "$PIDS"; wait "$PIDS" 2>/dev/null || true
done

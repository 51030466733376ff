#!/usr/bin/env bash
# Puts at a fixed rate while checkpoints run, for builds side by side (alternating, ROUNDS
# times): each on a fresh data dir with --checkpoint-min-bytes 32 MiB, 100,000 puts at RATE/s,
# then 300,000 at RATE/s (open loop, 100 clients over 10 connections, 8 B keys in 100k, 256 B
# values) during which two checkpoints run. Prints each build's latency line for the second
# run and its checkpoints' log lines (tuning/results/2026-11-26-checkpoint-pacing.md).
#
# usage: tuning/checkpoint-pacing.sh BIN_A BIN_B [RATE [ROUNDS]]   (defaults 30000, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rate=${3:-30000} rounds=${4:-3}
source tuning/lib.sh
for r in $(seq "$rounds"); do
  for bin in "$a" "$b"; do
    start_one c "$bin" --checkpoint-min-bytes 33554432
    target/release/loadgen run --endpoints "$ENDPOINTS" --workload put --clients 100 --conns 10 \
      --total 100000 --rate "$rate" >/dev/null 2>&1
    line=$(target/release/loadgen run --endpoints "$ENDPOINTS" --workload put --clients 100 \
      --conns 10 --total 300000 --rate "$rate" 2>/dev/null | grep -E "req/s" | sed 's/.*latency/latency/')
    echo "round $r $bin: $line"
    grep -E "checkpoint taken" "$work/c0.log" | sed 's/\x1b\[[0-9;]*m//g; s/.*revisions=/  revisions=/' || true
    kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); rm -rf "$work"/c0 "$work"/c0.log
  done
done

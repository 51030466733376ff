#!/usr/bin/env bash
# Puts at a fixed rate while checkpoints run, for two builds alternating ROUNDS times (then in
# the other order as many times): each on a fresh data dir with --checkpoint-min-bytes 32 MiB,
# 100,000 puts at RATE/s, then 300,000 at RATE/s (open loop, 100 clients over 10 connections,
# 8 B keys in 100k, 256 B values) during which two checkpoints run. Prints, per run, the
# latency line, the log's fdatasyncs over the measured run counted above 2, 4 and 8 ms (from
# etcd_disk_wal_fsync_duration_seconds), the server's CPU per put, and the checkpoints' log lines
# (tuning/results/2026-11-27-checkpoint-write-back.md).
#
# usage: tuning/checkpoint-fsync.sh BIN_A BIN_B [RATE [ROUNDS]]   (defaults 30000, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rate=${3:-30000} rounds=${4:-3}
source tuning/lib.sh
fsyncs() { curl -s "http://$ENDPOINTS/metrics" | grep -E '^etcd_disk_wal_fsync_duration_seconds_(bucket|count)'; }
one() {
  local bin=$1 before line
  start_one c "$bin" --checkpoint-min-bytes 33554432
  target/release/loadgen run --endpoints "$ENDPOINTS" --workload put --clients 100 --conns 10 \
    --total 100000 --rate "$rate" >/dev/null 2>&1
  # A second idle first: connections opened while the owner is busy go half to the other
  # shard (src/server/balance.rs), which costs more CPU and latency than any checkpoint.
  sleep 1
  before=$(fsyncs)
  out=$(target/release/loadgen run --endpoints "$ENDPOINTS" --server-pid "$PIDS" --workload put \
    --clients 100 --conns 10 --total 300000 --rate "$rate" 2>/dev/null)
  line=$(echo "$out" | grep -E "req/s" | sed 's/.*latency/latency/')
  cpu=$(echo "$out" | grep -E "server CPU" | sed 's/.*server CPU/CPU/')
  echo "$bin: $line; $cpu"
  paste <(echo "$before") <(fsyncs) | awk '
    /le="0.002"/ {b2 = $4 - $2} /le="0.004"/ {b4 = $4 - $2} /le="0.008"/ {b8 = $4 - $2}
    /_count/ {n = $4 - $2}
    END {printf "  fdatasyncs %d: over 2 ms %d, over 4 ms %d, over 8 ms %d\n", n, n - b2, n - b4, n - b8}'
  grep -E "checkpoint taken" "$work/c0.log" | sed 's/\x1b\[[0-9;]*m//g; s/.*revisions=/  revisions=/' || true
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); rm -rf "$work"/c0 "$work"/c0.log
}
for _ in $(seq "$rounds"); do one "$a"; one "$b"; done
for _ in $(seq "$rounds"); do one "$b"; one "$a"; done

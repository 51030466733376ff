#!/usr/bin/env bash
# Puts while a large previous checkpoint is removed, for two builds alternating ROUNDS times
# (then in the other order as many times): each on a fresh data dir is filled with KEYS keys of
# 1 KiB (in key order), and a Defragment takes a checkpoint of them (parts up to 1 GiB); then
# TOTAL puts at RATE/s (open loop, 100 clients over 10 connections, 256 B values over the same
# keys), with a second Defragment 3 s in, which copies the live data into a new checkpoint and
# removes the first one's files. Prints, per run, the latency line, the log's fdatasyncs over
# the measured run counted above 8, 16 and 32 ms (etcd_disk_wal_fsync_duration_seconds), the
# Defragment's time and the checkpoints' log lines
# (tuning/results/2026-11-27-checkpoint-cut.md).
#
# usage: tuning/checkpoint-cut.sh BIN_A BIN_B [ROUNDS]   (KEYS 1000000, RATE 20000, TOTAL 400000)
#   A "binary" may be /usr/bin/etcd (its defrag rewrites its bbolt file). EXTRA adds server
#   flags to both (e.g. EXTRA="--quota-backend-bytes 8589934592").
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-1}
keys=${KEYS:-1000000} rate=${RATE:-20000} total=${TOTAL:-400000}
read -r -a extra <<<"${EXTRA:-}"
source tuning/lib.sh
fsyncs() { curl -s "http://$ENDPOINTS/metrics" | grep -E '^etcd_disk_wal_fsync_duration_seconds_(bucket|count)'; }
one() {
  local bin=$1 before line t0 t1
  start_one c "$bin" "${extra[@]}"
  target/release/loadgen run --endpoints "$ENDPOINTS" --workload put --clients 100 --conns 10 \
    --total "$keys" --key-space "$keys" --sequential-keys --val-size 1024 >/dev/null 2>&1
  etcdctl --endpoints "$ENDPOINTS" --command-timeout 600s defrag >/dev/null
  # A second idle first: connections opened while the owner is busy go half to the other
  # shard (src/server/balance.rs).
  sleep 1
  before=$(fsyncs)
  ( sleep 3; t0=$(date +%s.%N)
    etcdctl --endpoints "$ENDPOINTS" --command-timeout 600s defrag >/dev/null
    t1=$(date +%s.%N); echo "$t0 $t1" >"$work/defrag" ) &
  out=$(target/release/loadgen run --endpoints "$ENDPOINTS" --server-pid "$PIDS" --workload put \
    --clients 100 --conns 10 --total "$total" --key-space "$keys" --rate "$rate" 2>/dev/null)
  wait $!
  line=$(echo "$out" | grep -E "req/s" | sed 's/.*latency/latency/')
  cpu=$(echo "$out" | grep -E "server CPU" | sed 's/.*server CPU/CPU/')
  echo "$bin: $line; $cpu"
  read -r t0 t1 <"$work/defrag"
  echo "  defrag $(echo "$t1 - $t0" | bc) s; data dir $(du -sh "$work/c0" | cut -f1)"
  paste <(echo "$before") <(fsyncs) | awk '
    /le="0.008"/ {b8 = $4 - $2} /le="0.016"/ {b16 = $4 - $2} /le="0.032"/ {b32 = $4 - $2}
    /_count/ {n = $4 - $2}
    END {printf "  fdatasyncs %d: over 8 ms %d, over 16 ms %d, over 32 ms %d\n", n, n - b8, n - b16, n - b32}'
  grep -E "checkpoint taken" "$work/c0.log" | sed 's/\x1b\[[0-9;]*m//g; s/.*revisions=/  revisions=/' | tail -n 2 || true
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); rm -rf "$work"/c0 "$work"/c0.log
}
for _ in $(seq "$rounds"); do one "$a"; one "$b"; done
for _ in $(seq "$rounds"); do one "$b"; one "$a"; done

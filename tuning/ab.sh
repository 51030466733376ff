#!/usr/bin/env bash
# A/B of two ferrocd builds (or one build run two ways), single node each, side by side on
# loopback with fresh data dirs: `loadgen compare` alternates them, in both orders (whichever is
# measured first has been favoured on this machine), for put and range at 100 clients over 10
# connections, 8 B keys in 100k, 256 B values. A "binary" may be a wrapper script that execs
# ferrocd (the pid loadgen measures stays the server's).
#
# usage: tuning/ab.sh A_BIN B_BIN [A_NAME B_NAME [TOTAL [WORKLOADS]]]
#   e.g. tuning/ab.sh /tmp/ferrocd-old target/release/ferrocd old new 100000 "put range"
#   CLIENTS and CONNS (environment) change the 100 clients over 10 connections; RATE (requests
#   per second) runs an open loop at that rate instead of a closed one. FILL=N first puts N
#   keys (0..N in order, --key-space N) into each server; EXTRA adds loadgen flags to the
#   measured runs (e.g. EXTRA="--key-space 1000000" to read those keys).
# Prints one markdown table (both orders, every workload) on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
a_bin=$1 b_bin=$2 a_name=${3:-a} b_name=${4:-b} total=${5:-100000} workloads=${6:-put range}
clients=${CLIENTS:-100} conns=${CONNS:-10}
rate=(); [ -n "${RATE:-}" ] && rate=(--rate "$RATE")
read -r -a extra <<<"${EXTRA:-}"
fill=${FILL:-0}
source tuning/lib.sh

echo "| order | workload | $a_name req/s | $b_name req/s | $a_name p50 ms | $b_name p50 ms | $a_name p99 ms | $b_name p99 ms | $a_name CPU us/req | $b_name CPU us/req |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for order in ab ba; do
  for w in $workloads; do
    start_one a "$a_bin"; a_ep=$ENDPOINTS; a_pid=$PIDS
    start_one b "$b_bin"; b_ep=$ENDPOINTS; b_pid=$PIDS
    if [ "$fill" -gt 0 ]; then
      for ep in "$a_ep" "$b_ep"; do
        target/release/loadgen run --endpoints "$ep" --workload put --total "$fill" \
          --key-space "$fill" --sequential-keys --clients 100 --conns 10 >/dev/null 2>&1
      done
    fi
    if [ "$order" = ab ]; then
      first=(--a "$a_ep" --a-pid "$a_pid" --a-name "$a_name" --b "$b_ep" --b-pid "$b_pid" --b-name "$b_name")
    else
      first=(--a "$b_ep" --a-pid "$b_pid" --a-name "$b_name" --b "$a_ep" --b-pid "$a_pid" --b-name "$a_name")
    fi
    row=$(target/release/loadgen compare "${first[@]}" --total "$total" --workload "$w" \
      --clients "$clients" --conns "$conns" "${rate[@]}" "${extra[@]}" 2>/dev/null | grep '^|' | tail -n1) || row=""
    # | workload | first req/s | second req/s | ratio | p50 p50 | p99 p99 | CPU CPU |
    IFS='|' read -r _ _ r1 r2 _ m1 m2 q1 q2 c1 c2 _ <<<"$row"
    if [ "$order" = ab ]; then
      echo "| $a_name first | $w c=$clients${RATE:+ at $RATE/s} | $r1 | $r2 | $m1 | $m2 | $q1 | $q2 | $c1 | $c2 |"
    else
      echo "| $b_name first | $w c=$clients${RATE:+ at $RATE/s} | $r2 | $r1 | $m2 | $m1 | $q2 | $q1 | $c2 | $c1 |"
    fi
    kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=()
    rm -rf "$work"/a0 "$work"/b0
  done
done

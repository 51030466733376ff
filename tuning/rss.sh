#!/usr/bin/env bash
# Memory of one member holding KEYS keys of VAL-byte values (issue 3: with 1M x 1 KiB, RSS
# far below 1 GiB: values stay in the log, not on the heap). Fills with loadgen (one put per
# key), reads every key back once (loadgen range over the key space), then restarts from a
# checkpoint (Defragment, kill -9) and reads again. Reports VmRSS, RssAnon (heap) and RssFile
# (log pages mapped; they are unmapped at each new segment, after a checkpoint, after recovery, and every 10 s) at each step. Writes tuning/results/<date>-<HHMM>-rss.md.
#
# usage: tuning/rss.sh [KEYS] [VAL]   (defaults 1000000 and 1024; BIN=path runs another build)
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-1000000} val=${2:-1024} bin=${BIN:-target/release/ferrocd}
source tuning/lib.sh

mem() { # PID -> "rss anon file" in MiB
  awk '/^VmRSS/ {r=int($2/1024)} /^RssAnon/ {a=int($2/1024)} /^RssFile/ {f=int($2/1024)} END {print r, a, f}' "/proc/$1/status"
}
row() { # STEP PID
  read -r r a f <<<"$(mem "$2")"
  echo "| $1 | $r | $a | $f | $(du -sm "$work/rss0" | cut -f1) |"
}
read_all() {
  target/release/loadgen run --endpoints "$ENDPOINTS" --workload range --key-space "$keys" \
    --sequential-keys --total "$keys" --clients 50 --conns 5 >/dev/null 2>&1
}
later() { # STEP PID: 11 s later, after one more request (the mapped pages are let go of every 10 s)
  sleep 11
  etcdctl --endpoints "$ENDPOINTS" get nothing >/dev/null
  row "$1" "$2"
}

out="tuning/results/$(date -u +%Y-%m-%d-%H%M)-rss.md"
{
  echo "# Memory of one member with $keys keys of $val B values"
  echo
  stamp
  echo "- server: $bin"
  echo "- fill: loadgen put, one per key in key order, 100 clients over 10 connections, 8 B keys; reads: loadgen range (linearizable) of every key once, 50 clients"
  echo
  echo "| step | VmRSS MiB | RssAnon MiB | RssFile MiB | data dir MiB |"
  echo "|---|---|---|---|---|"
  start_one rss "$bin"
  pid=$PIDS
  row "started, empty" "$pid"
  target/release/loadgen run --endpoints "$ENDPOINTS" --workload put --key-space "$keys" \
    --sequential-keys --val-size "$val" --total "$keys" --clients 100 --conns 10 >/dev/null 2>&1
  row "after the fill" "$pid"
  read_all
  row "after reading every key" "$pid"
  later "11 s later, one more request" "$pid"
  etcdctl --endpoints "$ENDPOINTS" --command-timeout 600s defrag >/dev/null
  row "after Defragment (a checkpoint)" "$pid"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  start_one rss "$bin"
  pid=$PIDS
  row "restarted (checkpoint restored)" "$pid"
  read_all
  row "after reading every key" "$pid"
  later "11 s later, one more request" "$pid"
} >"$out"
cat "$out"

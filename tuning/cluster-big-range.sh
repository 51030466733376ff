#!/usr/bin/env bash
# usage: tuning/cluster-big-range.sh BIN NAME [KEYS]: three members of BIN (ferrocd or etcd) on
# loopback; KEYS keys of 256 B (default 1M); puts at 3k/s open loop through every member for
# 10 s; 4 s in, a read of every key on the leader, timed. Prints one row: the puts' latency,
# the read's time and answer, the highest Raft term before and after (an election shows).
# The read, by environment: RANGER=N: N loadgen range reads of every key, keys only, one
# after the other (RANGER_ARGS replaces that shape: e.g. "--prefix-digits 5 --keys-only
# --clients 200 --conns 10", a storm of 200 clients reading 100k keys each; default: one
# `etcdctl get "" --prefix --keys-only`, which spends much CPU
# printing); COUNT=1: a count-only Range through the JSON gateway; NOGET=1: none (the
# baseline). PERF=FILE: `perf record -g` of the leader for 3 s from the read's start.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1 name=$2 keys=${3:-1000000}
source tuning/lib.sh
# EXTRA: more flags for every member (word-split), e.g. EXTRA="--read-step-keys 1000".
start fc "$bin" ${EXTRA:-}
LG=$PWD/target/release/loadgen
$LG run --endpoints "$ENDPOINTS" --workload put --total "$keys" --key-space "$keys" --sequential-keys --clients 100 --conns 10 >/dev/null 2>&1
status() { etcdctl --endpoints "$ENDPOINTS" endpoint status -w json; }
s0=$(status)
leader_ep=$(echo "$s0" | python3 -c 'import json,sys; d=json.load(sys.stdin); print([e["Endpoint"] for e in d if e["Status"]["header"]["member_id"]==e["Status"]["leader"]][0])')
term0=$(echo "$s0" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(max(e["Status"]["raftTerm"] for e in d))')
$LG run --endpoints "$ENDPOINTS" --workload put --total 30000 --key-space "$keys" --rate 3000 --clients 100 --conns 10 > "$work/lg" 2>&1 &
lg=$!
sleep 4
t0=$(date +%s.%N)
if [ -n "${PERF:-}" ]; then
  lpid=$(for p in ${PIDS//,/ }; do if tr '\0' ' ' < /proc/$p/cmdline | grep -q "${leader_ep##*:}"; then echo $p; fi; done)
  perf record -F 999 -g -p "$lpid" -o "$PERF" -- sleep 3 >/dev/null 2>&1 &
fi
if [ "${NOGET:-}" = 1 ]; then sleep 3; lines=0; elif [ -n "${RANGER:-}" ]; then lines=$($LG run --endpoints "$leader_ep" --workload range ${RANGER_ARGS:---prefix-digits 8 --keys-only --clients 1 --conns 1} --total "$RANGER" > "$work/rg" 2>&1; grep -m1 "latency ms" "$work/rg" | sed "s/.*latency ms //" || cat "$work/rg"); elif [ "${COUNT:-}" = 1 ]; then lines=$(curl -s -X POST "http://$leader_ep/v3/kv/range" -d '{"key":"AA==","range_end":"AA==","count_only":true}'); else lines=$(etcdctl --endpoints "$leader_ep" --command-timeout=60s get "" --prefix ${GETFLAGS:---keys-only} | wc -l); fi
t1=$(date +%s.%N)
wait $lg
s1=$(status)
term1=$(echo "$s1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(max(e["Status"]["raftTerm"] for e in d))')
lat=$(grep -m1 "latency ms" "$work/lg" | sed 's/.*latency ms //')
errs=$(grep -m1 -o "([0-9]* errors)" "$work/lg" || true)
echo "| $name | $lat $errs | $(echo "$t1 - $t0" | bc) s | $lines lines | term $term0 -> $term1 |"
grep -h -i "elect\|became\|campaign" "$work"/fc*.log | tail -5 || true

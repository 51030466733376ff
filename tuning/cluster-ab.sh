#!/usr/bin/env bash
# A/B of two ferrocd builds as three-member clusters on loopback (fresh data dirs), measured by
# `loadgen compare` in both orders; then build B against three etcd members (Debian's
# etcd-server) in the same run. Server CPU is summed over each cluster's members.
#
# usage: tuning/cluster-ab.sh A_BIN B_BIN [A_NAME B_NAME [TOTAL [WORKLOADS]]]
#   e.g. tuning/cluster-ab.sh /tmp/ferrocd-old target/release/ferrocd old new 50000 "lease-keepalive put"
#   CLIENTS and CONNS (environment) change the 100 clients over 10 connections.
# Prints one markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
a_bin=$1 b_bin=$2 a_name=${3:-a} b_name=${4:-b} total=${5:-50000} workloads=${6:-lease-keepalive}
clients=${CLIENTS:-100} conns=${CONNS:-10}
source tuning/lib.sh
# FERROCD_CPUS: as in tuning/cluster.sh (one CPU per member by default), for both builds.
ferrocd_cpus=${FERROCD_CPUS-$(one_cpu_each)}
START_CPUS=$ferrocd_cpus start "$a_name" "$a_bin"; a_ep=$ENDPOINTS; a_pid=$PIDS
START_CPUS=$ferrocd_cpus start "$b_name" "$b_bin"; b_ep=$ENDPOINTS; b_pid=$PIDS
START_CPUS= start etcd etcd; e_ep=$ENDPOINTS; e_pid=$PIDS
row() { # first-ep first-pid first-name second-ep second-pid second-name workload
  target/release/loadgen compare --a "$1" --a-pid "$2" --a-name "$3" --b "$4" --b-pid "$5" \
    --b-name "$6" --total "$total" --workload "$7" --clients "$clients" --conns "$conns" \
    2>/dev/null | grep '^|' | tail -n1
}
echo "- date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD); $(nproc) cores, shared; nine servers and loadgen on the same machine; ferrocd members' CPUs: ${ferrocd_cpus:-not pinned}; $clients clients over $conns connections, $total requests per run"
echo
echo "| first | workload | first req/s | second req/s | ratio | p50 ms | p99 ms | CPU us/req |"
echo "|---|---|---|---|---|---|---|---|"
for w in $workloads; do
  IFS='|' read -r _ _ r1 r2 ra m1 m2 q1 q2 c1 c2 _ <<<"$(row "$a_ep" "$a_pid" "$a_name" "$b_ep" "$b_pid" "$b_name" "$w")"
  echo "| $a_name | $w | $r1 | $r2 | $ra | $m1 / $m2 | $q1 / $q2 | $c1 / $c2 |"
  IFS='|' read -r _ _ r1 r2 ra m1 m2 q1 q2 c1 c2 _ <<<"$(row "$b_ep" "$b_pid" "$b_name" "$a_ep" "$a_pid" "$a_name" "$w")"
  echo "| $b_name | $w | $r1 | $r2 | $ra | $m1 / $m2 | $q1 / $q2 | $c1 / $c2 |"
  IFS='|' read -r _ _ r1 r2 ra m1 m2 q1 q2 c1 c2 _ <<<"$(row "$b_ep" "$b_pid" "$b_name" "$e_ep" "$e_pid" etcd "$w")"
  echo "| $b_name (vs etcd) | $w | $r1 | $r2 | $ra | $m1 / $m2 | $q1 / $q2 | $c1 / $c2 |"
done

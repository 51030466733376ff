#!/usr/bin/env bash
# Three ferrocd members against three etcd members (Debian's etcd-server), all on this machine
# on loopback with fresh temporary data dirs; the same loadgen workloads against both,
# alternating; server CPU summed over the three members. Writes
# tuning/results/<date>-cluster.md with the machine and the commit.
#
# usage: tuning/cluster.sh [TOTAL_REQUESTS]   (default 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-50000}
source tuning/lib.sh
# Each ferrocd member gets one CPU (member i: the (i mod count)-th CPU this script may use), as
# thread-per-core servers sharing a machine are deployed: left to itself every member pins its
# Raft shard to the first CPU it may use, so all three would share one core while the loadgen
# has the other (tuning/results/2026-11-27-cluster-placement.md). FERROCD_CPUS="" starts them
# unpinned, or gives other lists. etcd's members are left to Go's scheduler: pinned the same
# way they were slower.
ferrocd_cpus=${FERROCD_CPUS-$(one_cpu_each)}
START_CPUS=$ferrocd_cpus start ferrocd target/release/ferrocd; fe=$ENDPOINTS; fpids=$PIDS
START_CPUS= start etcd etcd; ee=$ENDPOINTS; epids=$PIDS

out="tuning/results/$(date -u +%Y-%m-%d)-cluster.md"
# A second run on the same day gets its own file.
[ -e "$out" ] && out="tuning/results/$(date -u +%Y-%m-%d-%H%M)-cluster.md"
{
  echo "# Three ferrocd members vs three etcd $(etcd --version | head -n1 | awk '{print $3}') members, side by side"
  echo
  echo "- date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, shared and noisy; six servers and loadgen on the same machine"
  echo "- each cluster: 3 members on loopback, fresh data dirs on the same disk, default heartbeat/election; clients spread over all members' endpoints"
  echo "- ferrocd members' CPUs (taskset, member 0 1 2): ${ferrocd_cpus:-not pinned}; etcd's: not pinned"
  echo "- loadgen alternates ferrocd, etcd, twice; best run of each shown; CPU is the sum over the three members"
  echo "- $total requests per run; 8 B keys in a space of 100k, 256 B values; closed loop"
  echo
} > "$out.tmp"
run() {
  local n=$1; shift
  target/release/loadgen compare --a "$fe" --b "$ee" --a-name ferrocd --b-name etcd \
    --a-pid "$fpids" --b-pid "$epids" --total "$n" "$@" | tee -a "$work/raw.txt" | grep '^|' | tail -n1
}
{
  echo "| workload | ferrocd req/s | etcd req/s | ratio | ferrocd p50 ms | etcd p50 ms | ferrocd p99 ms | etcd p99 ms | ferrocd CPU us/req | etcd CPU us/req |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  run "$total" --workload put --clients 100 --conns 10
  run $((total / 10)) --workload put --clients 1 --conns 1
  run "$total" --workload range --clients 100 --conns 10
  run "$total" --workload range-serializable --clients 100 --conns 10
  run "$total" --workload mixed --read-ratio 0.9 --clients 100 --conns 10
  run "$total" --workload lease-keepalive --clients 100 --conns 10
} | tee -a "$out.tmp"
echo >> "$out.tmp"
echo '```' >> "$out.tmp"; cat "$work/raw.txt" >> "$out.tmp"; echo '```' >> "$out.tmp"
mv "$out.tmp" "$out"

#!/usr/bin/env bash
# etcd's usual way to grow a cluster: a member started alone holds N keys of 1 KiB; `etcdctl
# member add` adds a second (a voter), which is then started. ferrocd runs without Raft until
# that MemberAdd (it starts Raft then, and the new member gets a snapshot); etcd runs Raft from
# the start (--snapshot-count 10000). One server at a time on this machine. Measures how long
# `member add` took, the time from starting the new member to it serving the last key written,
# and the first member's put rate alone before it (loadgen's fill). Writes
# tuning/results/<date>-grow.md.
#
# usage: tuning/grow.sh [KEYS]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-100000}
source tuning/lib.sh

# measure KIND BIN [FLAGS...]: prints one table row
measure() {
  local kind=$1 bin=$2
  shift 2
  start_one "$kind" "$bin" "$@"
  local eps=$ENDPOINTS first=$PIDS rate
  rate=$(fill "$eps" "$keys" | sed -n 's/.* \([0-9]*\) req\/s;.*/\1/p' | head -n1)
  local np nc initial t0 t1
  np=$(port); nc=$(port)
  t0=$(date +%s.%N)
  initial=$(etcdctl --endpoints "$eps" member add "${kind}1" --peer-urls="http://127.0.0.1:$np" \
    | sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p')
  t1=$(date +%s.%N)
  join "$kind" "$bin" "${kind}1" "$initial" "$np" "$nc" "$@"
  local after
  after=$(etcdctl --endpoints "$eps" put after-growth 1 >/dev/null 2>&1 && echo yes || echo no)
  printf '| %s | %s | %s/s | %.2f s | %.2f s | %s | %s | %s |\n' "$kind" "$keys" "$rate" \
    "$(echo "$t1 - $t0" | bc)" "$JOIN_SECONDS" "$JOIN_HOW" "$JOIN_OK" "$after"
  kill "$first" "$JOIN_PID" 2>/dev/null || true
  wait "$first" "$JOIN_PID" 2>/dev/null || true
}

out="tuning/results/$(date -u +%Y-%m-%d)-grow.md"
[ -e "$out" ] && out="tuning/results/$(date -u +%Y-%m-%d-%H%M)-grow.md"
{
  echo "# Growing a single member into a cluster with member add: ferrocd vs etcd $(etcd --version | head -n1 | awk '{print $3}')"
  echo
  stamp
  echo "- one member alone, fresh data dir; $keys keys of 1 KiB put by loadgen (50 clients), then a marker key; then \`etcdctl member add\` of a voter, which is started at once"
  echo "- etcd: --snapshot-count 10000; ferrocd: defaults"
  echo "- catch-up: from starting the new member to its serializable get of the marker answering; then a put through the first member (the two voters' quorum)"
  echo
  echo "| server | keys | fill rate alone | member add | catch-up | how (new member's log) | caught up | put after |"
  echo "|---|---|---|---|---|---|---|---|"
  measure ferrocd target/release/ferrocd
  measure etcd etcd --snapshot-count 10000
} | tee "$out.tmp"
mv "$out.tmp" "$out"

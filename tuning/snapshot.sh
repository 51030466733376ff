#!/usr/bin/env bash
# A member added to a three-member cluster that holds N keys of 1 KiB, after the leader's log
# was released: it catches up through a Raft snapshot. ferrocd (checkpoints, then Defragment
# on each member so that the log is released at once) against etcd (Debian's etcd-server,
# --snapshot-count 10000 so that it snapshots and compacts its Raft log), one cluster at a
# time on this machine. Measures the time from starting the new member to it serving the last
# key written, and the data dirs' sizes. Writes tuning/results/<date>-snapshot.md.
#
# usage: tuning/snapshot.sh [KEYS]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-100000}
source tuning/lib.sh

# measure KIND BIN [FLAGS...]: prints one table row
measure() {
  local kind=$1 bin=$2
  shift 2
  start "$kind" "$bin" "$@"
  local cluster_pids=$PIDS eps=$ENDPOINTS
  fill "$eps" "$keys" >"$work/$kind-fill.txt"
  if [ "$kind" = ferrocd ]; then
    for ep in ${eps//,/ }; do etcdctl --endpoints "$ep" --command-timeout=120s defrag >/dev/null; done
  fi
  local data_mb
  data_mb=$(du -sm "$work/${kind}0" | awk '{print $1}')
  local np nc initial
  np=$(port); nc=$(port)
  initial=$(etcdctl --endpoints "$eps" member add "${kind}3" --peer-urls="http://127.0.0.1:$np" \
    | sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p')
  join "$kind" "$bin" "${kind}3" "$initial" "$np" "$nc" "$@"
  local new_mb newpid=$JOIN_PID
  new_mb=$(du -sm "$work/${kind}3" | awk '{print $1}')
  printf '| %s | %s | %s MiB | %.2f s | %s MiB | %s | %s |\n' "$kind" "$keys" "$data_mb" \
    "$JOIN_SECONDS" "$new_mb" "$JOIN_HOW" "$JOIN_OK"
  kill ${cluster_pids//,/ } "$newpid" 2>/dev/null || true
  wait ${cluster_pids//,/ } "$newpid" 2>/dev/null || true
}

out="tuning/results/$(date -u +%Y-%m-%d)-snapshot.md"
# A second run on the same day gets its own file.
[ -e "$out" ] && out="tuning/results/$(date -u +%Y-%m-%d-%H%M)-snapshot.md"
{
  echo "# A new member catching up through a snapshot: ferrocd vs etcd $(etcd --version | head -n1 | awk '{print $3}')"
  echo
  stamp
  echo "- three members on loopback, fresh data dirs; $keys keys of 1 KiB put by loadgen (50 clients), then a marker key; then a fourth member added with etcdctl and started"
  echo "- ferrocd: Defragment on each member first (a checkpoint, the log before it released); etcd: --snapshot-count 10000"
  echo "- catch-up: from starting the new member to its serializable get of the marker answering"
  echo
  echo "| server | keys | data dir of member 0 | catch-up | new member's data dir | how (its log) | caught up |"
  echo "|---|---|---|---|---|---|---|"
  measure ferrocd target/release/ferrocd
  measure etcd etcd --snapshot-count 10000
} | tee "$out.tmp"
mv "$out.tmp" "$out"

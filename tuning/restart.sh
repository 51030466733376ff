#!/usr/bin/env bash
# Restart time after kill -9 with many keys: ferrocd restoring a checkpoint (taken by
# Defragment after the fill) plus the log after it, ferrocd replaying its whole log
# (--checkpoint-min-bytes 0, no Defragment), and etcd (Debian's etcd-server). Time from the
# process start to the first healthy /health answer, and the server's RSS then. Writes
# tuning/results/<date>-restart.md with the machine and the commit.
#
# usage: tuning/restart.sh [KEYS]   (default 1000000 puts of 256 B values, one per key)
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-1000000}
cargo build --release --workspace --bins >/dev/null
work=$(mktemp -d)
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
launch() { # name binary flags... ; sets <name>_pid, uses <name>_cp/<name>_pp
  local name=$1 bin=$2; shift 2
  local cp pp; cp=${name}_cp; pp=${name}_pp
  "$bin" --name "$name" --data-dir "$work/$name" \
    --listen-client-urls "http://127.0.0.1:${!cp}" --advertise-client-urls "http://127.0.0.1:${!cp}" \
    --listen-peer-urls "http://127.0.0.1:${!pp}" --initial-advertise-peer-urls "http://127.0.0.1:${!pp}" \
    --initial-cluster "$name=http://127.0.0.1:${!pp}" "$@" 2>>"$work/$name.log" &
  eval "${name}_pid=$!"
  pids+=($!)
}
healthy_after() { # port start-ns -> seconds
  for _ in $(seq 6000); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null && break
    sleep 0.01
  done
  python3 -c "import time; print(f'{(time.time_ns() - $2) / 1e9:.2f}')"
}
rss_mib() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }

out="tuning/results/$(date -u +%Y-%m-%d)-restart.md"
{
  echo "# Restart after kill -9 with $keys keys: ferrocd from a checkpoint, ferrocd replaying its log, etcd $(etcd --version | head -n1 | awk '{print $3}')"
  echo
  echo "- date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, shared and noisy"
  echo "- fill: $keys puts, one per key (key space $keys, 8 B keys, 256 B values), 100 clients over 10 connections; then (ferrocd with checkpoints) Defragment; kill -9; start again; the time to the first healthy /health, RSS then"
  echo
  echo "| server | data dir MiB | restart s | RSS MiB after restart |"
  echo "|---|---|---|---|"
} > "$out.tmp"
for name in ckpt replay etcd; do
  eval "${name}_cp=$(port); ${name}_pp=$(port)"
  case $name in
    ckpt) bin=target/release/ferrocd; flags=() ;;
    replay) bin=target/release/ferrocd; flags=(--checkpoint-min-bytes 0) ;;
    etcd) bin=etcd; flags=(--quota-backend-bytes 8589934592) ;;
  esac
  launch "$name" "$bin" "${flags[@]}"
  cp=${name}_cp; pid=${name}_pid
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:${!cp}/health" >/dev/null && break; sleep 0.1; done
  target/release/loadgen run --endpoints "127.0.0.1:${!cp}" --workload put --key-space "$keys" \
    --val-size 256 --total "$keys" --clients 100 --conns 10 >"$work/$name.fill.txt" 2>/dev/null
  if [ "$name" = ckpt ]; then
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${!cp}" --command-timeout 600s defrag >/dev/null
  fi
  kill -9 "${!pid}"; wait "${!pid}" 2>/dev/null || true
  size=$(du -sm "$work/$name" | cut -f1)
  t0=$(python3 -c 'import time; print(time.time_ns())')
  launch "$name" "$bin" "${flags[@]}"
  secs=$(healthy_after "${!cp}" "$t0")
  echo "| $name | $size | $secs | $(rss_mib "${!pid}") |" >> "$out.tmp"
  kill -9 "${!pid}"; wait "${!pid}" 2>/dev/null || true
  rm -rf "${work:?}/$name"
done
{
  echo
  echo "ferrocd's log lines of the restarts:"
  echo
  echo '```'
  grep -hE "checkpoint restored|log replayed" "$work"/ckpt.log "$work"/replay.log | sed -E 's/^[^ ]+ +INFO [^ ]+ //' || true
  echo '```'
} >> "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"

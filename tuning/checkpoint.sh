#!/usr/bin/env bash
# Checkpoints and defragmentation, measured side by side on loopback, fresh data dirs:
# ferrocd with checkpoints (the default thresholds), ferrocd without (--checkpoint-min-bytes 0:
# its log keeps everything), and etcd (Debian's etcd-server). The same put workload fills
# each; then the disk each uses; then, under a steady open-loop put load, a compaction and a
# defragmentation: how long it takes and what the puts' latency did meanwhile. Writes
# tuning/results/<date>-checkpoint.md with the machine and the commit.
#
# usage: tuning/checkpoint.sh [PUTS]   (default 300000 puts of 1 KiB over 100k keys per server)
set -euo pipefail
cd "$(dirname "$0")/.."
puts=${1:-300000}
cargo build --release --workspace --bins >/dev/null
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
start() { # name binary extra-flags...
  local name=$1 bin=$2; shift 2
  local cp pp; cp=$(port); pp=$(port)
  "$bin" --name "$name" --data-dir "$work/$name" \
    --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "$name=http://127.0.0.1:$pp" "$@" 2>"$work/$name.log" &
  pids+=($!)
  eval "${name}_port=$cp; ${name}_pid=$!"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$cp/health" >/dev/null && break; sleep 0.1; done
}
start ckpt target/release/ferrocd
start nockpt target/release/ferrocd --checkpoint-min-bytes 0
start etcd etcd --quota-backend-bytes 8589934592

out="tuning/results/$(date -u +%Y-%m-%d)-checkpoint.md"
status() { ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$1" --command-timeout 60s endpoint status -w json |
  python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; print(s["header"]["revision"], s["dbSize"], s.get("dbSizeInUse", 0))'; }
row() { # name port pid
  local rev size inuse du
  read -r rev size inuse < <(status "$2")
  du=$(du -sb "$work/$1" | cut -f1)
  echo "| $1 | $rev | $((size / 1048576)) | $((inuse / 1048576)) | $((du / 1048576)) |"
}
{
  echo "# Checkpoints and defragmentation: ferrocd with and without checkpoints, and etcd $(etcd --version | head -n1 | awk '{print $3}')"
  echo
  echo "- date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, shared and noisy; the three servers and loadgen on the same machine"
  echo "- fill: $puts puts per server, 1 KiB values, 8 B keys in a space of 100k, 100 clients over 10 connections, closed loop, one server after the other"
  echo
  echo "## Fill"
  echo
  echo '```'
} > "$out.tmp"
for s in ckpt nockpt etcd; do
  p=${s}_port; pid=${s}_pid
  echo "### $s" >> "$out.tmp"
  target/release/loadgen run --endpoints "127.0.0.1:${!p}" --server-pid "${!pid}" --workload put \
    --key-space 100000 --val-size 1024 --total "$puts" --clients 100 --conns 10 2>/dev/null >> "$out.tmp"
done
{
  echo '```'
  echo
  echo "ferrocd's checkpoints during the fill (from its log):"
  echo
  echo '```'
  grep -E "checkpoint taken" "$work/ckpt.log" | sed -E 's/^.*checkpoint taken //' || true
  echo '```'
  echo
  echo "## Disk after the fill (MiB; dbSize and dbSizeInUse as Status reports them, du of the data dir)"
  echo
  echo "| server | revision | dbSize | dbSizeInUse | du |"
  echo "|---|---|---|---|---|"
  row ckpt "$ckpt_port"
  row nockpt "$nockpt_port"
  row etcd "$etcd_port"
  echo
  echo "## Compaction, then defragmentation under a steady load"
  echo
  echo "Each server in turn: loadgen puts at 2,000/s (open loop, latency from the intended send"
  echo "time) for 15 s; after 3 s, a physical compaction at the current revision, then \`etcdctl defrag\`,"
  echo "timed. The puts' latency over the whole 15 s:"
  echo
  echo '```'
} >> "$out.tmp"
for s in ckpt nockpt etcd; do
  p=${s}_port; pid=${s}_pid
  target/release/loadgen run --endpoints "127.0.0.1:${!p}" --server-pid "${!pid}" --workload put \
    --key-space 100000 --val-size 1024 --total 30000 --rate 2000 --clients 100 --conns 10 \
    >"$work/$s.defrag-load.txt" 2>/dev/null &
  lg=$!
  sleep 3
  read -r rev _ _ < <(status "${!p}")
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${!p}" --command-timeout 300s compaction --physical "$rev" >/dev/null
  t0=$(date +%s.%N)
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${!p}" --command-timeout 300s defrag >/dev/null
  t1=$(date +%s.%N)
  wait "$lg"
  {
    echo "### $s: defrag took $(python3 -c "print(f'{$t1 - $t0:.2f}')") s"
    cat "$work/$s.defrag-load.txt"
  } >> "$out.tmp"
done
{
  echo '```'
  echo
  echo "## Disk after compaction and defragmentation (MiB)"
  echo
  echo "| server | revision | dbSize | dbSizeInUse | du |"
  echo "|---|---|---|---|---|"
  row ckpt "$ckpt_port"
  row nockpt "$nockpt_port"
  row etcd "$etcd_port"
} >> "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"

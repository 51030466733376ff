#!/usr/bin/env bash
# Side by side: ferrocd and etcd (Debian's etcd-server) on loopback, fresh temporary data dirs,
# the same loadgen workloads against both, alternating. Prints one markdown table per workload
# and writes them to tuning/results/<date>-compare.md with the machine and the commit.
#
# usage: tuning/compare.sh [TOTAL_REQUESTS]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-100000}
cargo build --release --workspace --bins >/dev/null
work=$(mktemp -d)
cleanup() { kill "${fpid:-}" "${epid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
fp=$(port); fpp=$(port); ep=$(port); epp=$(port)
target/release/ferrocd --name f --data-dir "$work/f" \
  --listen-client-urls "http://127.0.0.1:$fp" --advertise-client-urls "http://127.0.0.1:$fp" \
  --listen-peer-urls "http://127.0.0.1:$fpp" --initial-advertise-peer-urls "http://127.0.0.1:$fpp" \
  --initial-cluster "f=http://127.0.0.1:$fpp" 2>"$work/f.log" &
fpid=$!
etcd --name e --data-dir "$work/e" \
  --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
  --listen-peer-urls "http://127.0.0.1:$epp" --initial-advertise-peer-urls "http://127.0.0.1:$epp" \
  --initial-cluster "e=http://127.0.0.1:$epp" 2>"$work/e.log" &
epid=$!
for p in "$fp" "$ep"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
done

out="tuning/results/$(date -u +%Y-%m-%d)-compare.md"
{
  echo "# ferrocd vs etcd $(etcd --version | head -n1 | awk '{print $3}'), side by side"
  echo
  echo "- date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, shared and noisy; server and loadgen on the same machine"
  echo "- both single node, fresh data dirs on the same disk; loadgen alternates ferrocd, etcd, twice; best run of each shown"
  echo "- $total requests per run; 8 B keys in a space of 100k, 256 B values; closed loop"
  echo
} > "$out.tmp"
run() {
  local n=$1; shift
  target/release/loadgen compare --a "127.0.0.1:$fp" --b "127.0.0.1:$ep" --a-name ferrocd --b-name etcd \
    --a-pid "$fpid" --b-pid "$epid" --total "$n" "$@" | tee -a "$work/raw.txt" | grep '^|' | tail -n1
}
{
  echo "| workload | ferrocd req/s | etcd req/s | ratio | ferrocd p50 ms | etcd p50 ms | ferrocd p99 ms | etcd p99 ms | ferrocd CPU us/req | etcd CPU us/req |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  run "$total" --workload put --clients 100 --conns 10
  run "$total" --workload put --clients 100 --conns 10 --rate 15000
  run $((total / 10)) --workload put --clients 1 --conns 1
  run "$total" --workload txn-put --clients 100 --conns 10
  run "$total" --workload range --clients 100 --conns 10
  run "$total" --workload range-serializable --clients 100 --conns 10
  # A list: the 100 keys that share a prefix, at most 50 of them in the answer.
  run "$total" --workload range --prefix-digits 2 --limit 50 --clients 100 --conns 10
  run "$total" --workload mixed --read-ratio 0.9 --clients 100 --conns 10
  run "$total" --workload lease-keepalive --clients 100 --conns 10
  run $((total / 2)) --workload k8s --key-space 10000 --val-size 1024 --clients 100 --conns 10
  # Watch rows are about events (events/s, put-to-event latency, server CPU per event).
  run 1500 --workload watch --watchers 1000 --watch-streams 10 --watch-keys 1 --clients 10 --conns 2 --rate 150
  run 20000 --workload watch --watchers 10000 --watch-streams 10 --watch-keys 10000 --clients 10 --conns 2 --rate 2000
} | tee -a "$out.tmp"
# The group commit over the whole run, from each server's /metrics (etcd's WAL fsyncs and
# proposals; ferrocd's fdatasyncs of its log and the records they covered).
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }
{
  echo
  echo "| over the run | fdatasyncs | writes committed | writes per fdatasync | mean fdatasync ms |"
  echo "|---|---|---|---|---|"
  for s in "ferrocd $fp" "etcd $ep"; do
    set -- $s
    n=$(metric "$2" etcd_disk_wal_fsync_duration_seconds_count)
    sum=$(metric "$2" etcd_disk_wal_fsync_duration_seconds_sum)
    w=$(metric "$2" etcd_server_proposals_committed_total)
    awk -v name="$1" -v n="$n" -v s="$sum" -v w="$w" \
      'BEGIN { printf "| %s | %d | %d | %.1f | %.3f |\n", name, n, w, w / n, 1000 * s / n }'
  done
} | tee -a "$out.tmp"
echo >> "$out.tmp"
echo '```' >> "$out.tmp"; cat "$work/raw.txt" >> "$out.tmp"; echo '```' >> "$out.tmp"
mv "$out.tmp" "$out"
echo "written: $out"

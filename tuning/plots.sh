#!/usr/bin/env bash
# Plots for tuning/ and the README: ferrocd and etcd (Debian's etcd-server) on loopback with
# fresh data dirs; put at 100 clients (percentile distributions), and an open-loop sweep of
# put up to saturation (latency against throughput; the sweep stops when the server no longer
# keeps up or p99 passes 200 ms). SVGs and their data go to tuning/results/plots/.
#
# usage: tuning/plots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins >/dev/null
work=$(mktemp -d)
cleanup() { kill "${fpid:-}" "${epid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
fp=$(port); ep=$(port); epp=$(port)
target/release/ferrocd --data-dir "$work/f" \
  --listen-client-urls "http://127.0.0.1:$fp" --advertise-client-urls "http://127.0.0.1:$fp" 2>"$work/f.log" &
fpid=$!
etcd --data-dir "$work/e" \
  --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
  --listen-peer-urls "http://127.0.0.1:$epp" 2>"$work/e.log" &
epid=$!
for p in "$fp" "$ep"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
done
out=tuning/results/plots
mkdir -p "$out"
stamp="$(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), $(nproc) cores"
lg=target/release/loadgen
for s in "ferrocd $fp" "etcd $ep"; do
  set -- $s
  $lg run --endpoints "127.0.0.1:$2" --workload put --clients 100 --conns 10 --total 100000 \
    --hgrm "$out/put-c100-$1.hgrm" > "$work/run-$1.txt"
  head -n1 "$work/run-$1.txt"
done
$lg plot --out "$out/put-c100-percentiles.svg" \
  --title "put, 100 clients, 256 B values ($stamp)" \
  "ferrocd=$out/put-c100-ferrocd.hgrm" "etcd 3.4=$out/put-c100-etcd.hgrm"
for s in "ferrocd $fp" "etcd $ep"; do
  set -- $s
  $lg sweep --endpoints "127.0.0.1:$2" --workload put --clients 100 --conns 10 \
    --start-rate 2000 --factor 1.3 --step-seconds 3 --slo-p99-ms 200 \
    --csv "$out/put-sweep-$1.csv" | tail -n1
done
$lg plot --out "$out/put-sweep.svg" \
  --title "put, open loop, latency against throughput ($stamp)" \
  "ferrocd=$out/put-sweep-ferrocd.csv" "etcd 3.4=$out/put-sweep-etcd.csv"

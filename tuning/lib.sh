# Shared by the tuning scripts (sourced from the repository's root): release binaries built,
# etcdctl on API v3, a temporary work dir with cleanup, free ports, members on loopback.
cargo build --release --workspace --bins >/dev/null
export ETCDCTL_API=3
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The CPUs this script may run on, one per line (its affinity mask, not 0..nproc-1).
allowed_cpus() { python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)), sep="\n")'; }
# One CPU per member of three: member i on the (i mod count)-th allowed CPU.
one_cpu_each() { local -a a; mapfile -t a < <(allowed_cpus); echo "${a[0]} ${a[1 % ${#a[@]}]} ${a[2 % ${#a[@]}]}"; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# start KIND BIN [FLAGS...]: three members named KIND0..KIND2 with data dirs under $work;
# sets ENDPOINTS (host:port,...), PIDS (comma-separated) and INITIAL (--initial-cluster).
# With START_CPUS set (one taskset CPU list per member, space-separated, e.g. "0 1 0"), member
# i starts under `taskset -c` its list. Fails if a member is gone once the others answer.
start() {
  local kind=$1 bin=$2 cp pp initial="" eps="" ps="" p
  shift 2
  local -a cports pports cpus pin=() started=()
  read -r -a cpus <<<"${START_CPUS:-}"

  for i in 0 1 2; do cports[$i]=$(port); pports[$i]=$(port); done
  for i in 0 1 2; do initial+="${initial:+,}$kind$i=http://127.0.0.1:${pports[$i]}"; done
  for i in 0 1 2; do
    cp=${cports[$i]}; pp=${pports[$i]}
    pin=(); [ -n "${cpus[$i]:-}" ] && pin=(taskset -c "${cpus[$i]}")
    "${pin[@]}" "$bin" --name "$kind$i" --data-dir "$work/$kind$i" \
      --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
      --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
      --initial-cluster "$initial" --initial-cluster-token "$kind-bench" "$@" 2>"$work/$kind$i.log" &
    pids+=($!); started+=($!); ps+="${ps:+,}$!"; eps+="${eps:+,}127.0.0.1:$cp"
  done
  for i in 0 1 2; do
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:${cports[$i]}/health" >/dev/null && break; sleep 0.1; done
  done
  for p in "${started[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "start $kind: member pid $p exited (logs under $work)" >&2; exit 1; }
  done
  ENDPOINTS=$eps; PIDS=$ps; INITIAL=$initial
}

# start_one KIND BIN [FLAGS...]: one member named KIND0 alone in its --initial-cluster, with its
# data dir under $work; sets ENDPOINTS, PIDS and INITIAL as start does.
start_one() {
  local kind=$1 bin=$2 cp pp
  shift 2
  cp=$(port); pp=$(port)
  "$bin" --name "${kind}0" --data-dir "$work/${kind}0" \
    --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "${kind}0=http://127.0.0.1:$pp" --initial-cluster-token "$kind-bench" "$@" \
    2>"$work/${kind}0.log" &
  pids+=($!)
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$cp/health" >/dev/null && break; sleep 0.1; done
  ENDPOINTS="127.0.0.1:$cp"; PIDS=$!; INITIAL="${kind}0=http://127.0.0.1:$pp"
}

# join KIND BIN NAME INITIAL PEER_PORT CLIENT_PORT [FLAGS...]: starts a member that `member add`
# added (--initial-cluster-state existing) and waits (at most 10 min) until its serializable get
# of the key `marker` answers `done`; sets JOIN_SECONDS, JOIN_OK (yes/no), JOIN_PID and
# JOIN_HOW (what its log says it installed).
join() {
  local kind=$1 bin=$2 name=$3 initial=$4 np=$5 nc=$6 t0 t1
  shift 6
  t0=$(date +%s.%N)
  "$bin" --name "$name" --data-dir "$work/$name" \
    --listen-client-urls "http://127.0.0.1:$nc" --advertise-client-urls "http://127.0.0.1:$nc" \
    --listen-peer-urls "http://127.0.0.1:$np" --initial-advertise-peer-urls "http://127.0.0.1:$np" \
    --initial-cluster "$initial" --initial-cluster-token "$kind-bench" \
    --initial-cluster-state existing "$@" 2>"$work/$name.log" &
  JOIN_PID=$!
  pids+=("$JOIN_PID")
  JOIN_OK=no
  for _ in $(seq 6000); do
    if [ "$(etcdctl --endpoints "127.0.0.1:$nc" --command-timeout=1s get marker --print-value-only --consistency=s 2>/dev/null)" = done ]; then
      JOIN_OK=yes; break
    fi
    sleep 0.1
  done
  t1=$(date +%s.%N)
  JOIN_SECONDS=$(echo "$t1 - $t0" | bc)
  JOIN_HOW=$(grep -m1 -o -E 'snapshot installed|applied incoming snapshot|applied snapshot' "$work/$name.log" || echo "no snapshot in its log")
}

# fill ENDPOINTS KEYS: KEYS puts of 1 KiB values, one per key (loadgen, 50 clients), then the
# key `marker` (what `join` waits for); prints loadgen's report.
fill() {
  target/release/loadgen run --endpoints "$1" --workload put --clients 50 --conns 5 \
    --total "$2" --key-space "$2" --val-size 1024
  etcdctl --endpoints "$1" put marker done >/dev/null
}

# stamp: the date, commit and machine lines of a results file.
stamp() {
  echo "- date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, shared and noisy"
}

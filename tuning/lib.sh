# Shared by the tuning scripts (sourced): temporary work dir with cleanup, free ports, and
# three-member clusters on loopback.
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# start KIND BIN [FLAGS...]: three members named KIND0..KIND2 with data dirs under $work;
# sets ENDPOINTS (host:port,...), PIDS (comma-separated) and INITIAL (--initial-cluster).
start() {
  local kind=$1 bin=$2 cp pp initial="" eps="" ps=""
  shift 2
  local -a cports pports
  for i in 0 1 2; do cports[$i]=$(port); pports[$i]=$(port); done
  for i in 0 1 2; do initial+="${initial:+,}$kind$i=http://127.0.0.1:${pports[$i]}"; done
  for i in 0 1 2; do
    cp=${cports[$i]}; pp=${pports[$i]}
    "$bin" --name "$kind$i" --data-dir "$work/$kind$i" \
      --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
      --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
      --initial-cluster "$initial" --initial-cluster-token "$kind-bench" "$@" 2>"$work/$kind$i.log" &
    pids+=($!); ps+="${ps:+,}$!"; eps+="${eps:+,}127.0.0.1:$cp"
  done
  for i in 0 1 2; do
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:${cports[$i]}/health" >/dev/null && break; sleep 0.1; done
  done
  ENDPOINTS=$eps; PIDS=$ps; INITIAL=$initial
}

# stamp: the date, commit and machine lines of a results file.
stamp() {
  echo "- date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, shared and noisy"
}

#!/usr/bin/env bash
# The reference topology, measured in one run with one client: two
# todo-server processes (one core each) behind
#   1. nginx (least_conn, keep-alive upstream pool), the reference design's
#      balancer;
#   2. todo-lb (one core), the same settings;
#   3. nothing: both processes share one port through SO_REUSEPORT.
# Then the effect of CPU steering (TODO_STEER=cpu) on one two-core server.
# Prints a markdown table (saved to bench/results/topology-latest.md).
#
#   ./bench/topology.sh [--duration 10s] [--connections 2000] [--pipelining 80]
#                       [--baseline-lb PATH]
#
# --baseline-lb PATH: also run the todo-lb row with the todo-lb binary at PATH
# (another build, e.g. of an earlier commit) in front of the same two
# servers, right after this build's row, and print new/baseline for req/s and
# balancer CPU per request.
#
# CPUs: servers and balancer on SERVER_CPU (0), client on CLIENT_CPU (1).
# Balancer CPU per request = its utime+stime over the run / responses.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-2000}
PIPELINING=${PIPELINING:-80}
BASELINE_LB=${BASELINE_LB:-}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
parse_flags "$@"
if [ -n "$BASELINE_LB" ] && [ ! -x "$BASELINE_LB" ]; then
  echo "--baseline-lb $BASELINE_LB: not an executable file" >&2
  exit 2
fi

ensure_apt nginx-light curl
build_release
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/todo-topology.XXXXXX)
PIDS=()
stop_all() {
  stop_pids "${PIDS[@]}"
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

# two_servers PORT_A PORT_B: one-core servers; sets A_PID B_PID.
two_servers() {
  start_server "$1" "$WORK/a$1" --cores 1 --pin false --instance 1; A_PID=$SERVER_PID
  start_server "$2" "$WORK/b$2" --cores 1 --pin false --instance 2; B_PID=$SERVER_PID
  pin "$SERVER_CPU" "$A_PID"; pin "$SERVER_CPU" "$B_PID"
  PIDS+=("$A_PID" "$B_PID")
}

declare -A RPS P99 NS
# measure NAME URL [BALANCER_PID...]: one todo-bench run.
measure() {
  local name=$1 url=$2; shift 2
  local before=0 after=0 out responses errors
  [ $# -gt 0 ] && before=$(cpu_ticks "$@")
  out=$("$BIN/todo-bench" "$url" -c "$CONNECTIONS" -p "$PIPELINING" -d "$DURATION" --cpus "$CLIENT_CPU" --json)
  [ $# -gt 0 ] && after=$(cpu_ticks "$@")
  responses=$(json_field "$out" responses)
  errors=$(bench_errors "$out")
  RPS[$name]=$(json_field "$out" requests_per_sec)
  P99[$name]=$(json_field "$out" latency.p99_us)
  NS[$name]=$(python3 -c "print(($after-$before)*1e9/$TICK/max(1,$responses))")
  log "$name: $(printf '%.0f' "${RPS[$name]}") req/s, p99 ${P99[$name]} us, balancer ${NS[$name]%.*} ns CPU/req, errors $errors"
  [ "$errors" = 0 ] || { echo "$name: $errors errors: $out" >&2; exit 1; }
}

# --- 1 and 2: nginx and todo-lb in front of the same two servers ---------------
PA=$(free_port); PB=$(free_port)
two_servers "$PA" "$PB"

NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
nginx_conf "$WORK/nginx" nginx "$NGINX_PORT" - proxy "127.0.0.1:$PA" "127.0.0.1:$PB"
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -g 'daemon off;' &
NGINX_MASTER=$!
PIDS+=("$NGINX_MASTER")
wait_http "http://127.0.0.1:$NGINX_PORT/todos?limit=1"
NGINX_PIDS=("$NGINX_MASTER" $(pgrep -P "$NGINX_MASTER"))
for p in "${NGINX_PIDS[@]}"; do pin "$SERVER_CPU" "$p"; done

# start_lb BINARY: a one-core todo-lb before both servers; sets LB_PORT LB_PID.
start_lb() {
  LB_PORT=$(free_port)
  "$1" --listen "127.0.0.1:$LB_PORT" --upstream "127.0.0.1:$PA" --upstream "127.0.0.1:$PB" \
    --cores 1 --pin false 2> "$WORK/lb-$LB_PORT.log" &
  LB_PID=$!
  PIDS+=("$LB_PID")
  wait_http "http://127.0.0.1:$LB_PORT/todos?limit=1" || { cat "$WORK/lb-$LB_PORT.log" >&2; exit 1; }
  pin "$SERVER_CPU" "$LB_PID"
}
start_lb "$BIN/todo-lb"
if [ -n "$BASELINE_LB" ]; then
  NEW_LB_PORT=$LB_PORT NEW_LB_PID=$LB_PID
  start_lb "$BASELINE_LB"
  BASE_LB_PORT=$LB_PORT BASE_LB_PID=$LB_PID
  LB_PORT=$NEW_LB_PORT LB_PID=$NEW_LB_PID
fi

# The balancers pass the servers' bytes through (each server seeded its own
# data, so the body is one of the two).
same() {
  local got
  got=$(curl -fs "$1")
  [ "$got" = "$(curl -fs "http://127.0.0.1:$PA/todos?limit=1")" ] || [ "$got" = "$(curl -fs "http://127.0.0.1:$PB/todos?limit=1")" ]
}
same "http://127.0.0.1:$NGINX_PORT/todos?limit=1" || { echo "nginx serves other bytes" >&2; exit 1; }
same "http://127.0.0.1:$LB_PORT/todos?limit=1" || { echo "todo-lb serves other bytes" >&2; exit 1; }

measure nginx "http://127.0.0.1:$NGINX_PORT/todos?limit=1" "${NGINX_PIDS[@]}"
measure todo-lb "http://127.0.0.1:$LB_PORT/todos?limit=1" "$LB_PID"
if [ -n "$BASELINE_LB" ]; then
  same "http://127.0.0.1:$BASE_LB_PORT/todos?limit=1" || { echo "the baseline todo-lb serves other bytes" >&2; exit 1; }
  measure todo-lb-baseline "http://127.0.0.1:$BASE_LB_PORT/todos?limit=1" "$BASE_LB_PID"
fi
stop_all

# --- 3: no balancer: two processes on one port ----------------------------------
PD=$(free_port)
two_servers "$PD" "$PD"
measure direct "http://127.0.0.1:$PD/todos?limit=1"
stop_all

# --- steering: one two-core server, client on both CPUs ------------------------
PS=$(free_port)
steer_row() { # steer_row MODE
  start_server "$PS" "$WORK/steer-$1" --cores 2 --steer "$1"
  PIDS+=("$SERVER_PID")
  local out
  out=$("$BIN/todo-bench" "http://127.0.0.1:$PS/todos?limit=1" -c "$CONNECTIONS" -p "$PIPELINING" -d "$DURATION" -t 2 --json)
  RPS[steer-$1]=$(json_field "$out" requests_per_sec)
  P99[steer-$1]=$(json_field "$out" latency.p99_us)
  log "steer $1: $(printf '%.0f' "${RPS[steer-$1]}") req/s"
  stop_all
}
steer_row hash; steer_row cpu

RESULTS="$ROOT/bench/results"
mkdir -p "$RESULTS"
python3 - "$CONNECTIONS" "$PIPELINING" "$DURATION" \
  "${RPS[nginx]}" "${P99[nginx]}" "${NS[nginx]}" \
  "${RPS[todo-lb]}" "${P99[todo-lb]}" "${NS[todo-lb]}" \
  "${RPS[direct]}" "${P99[direct]}" \
  "${RPS[steer-hash]}" "${P99[steer-hash]}" "${RPS[steer-cpu]}" "${P99[steer-cpu]}" \
  "${RPS[todo-lb-baseline]:-0}" "${P99[todo-lb-baseline]:-0}" "${NS[todo-lb-baseline]:-0}" \
  <<'PY' | tee "$RESULTS/topology-latest.md"
import sys, datetime, platform, os
a = sys.argv[1:]
conns, depth, duration = a[0], a[1], a[2]
n_rps, n_p99, n_ns, l_rps, l_p99, l_ns, d_rps, d_p99, h_rps, h_p99, c_rps, c_p99, b_rps, b_p99, b_ns = map(float, a[3:])
cpu = next((l.split(':',1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}.")
print(f"Two todo-server processes (one core each) and the balancer (one worker / one core) share CPU 0; the client (todo-bench, one executor) runs on CPU 1; -c {conns} -p {depth}, {duration} per row, GET /todos?limit=1.\n")
print("| topology | req/s | p99 | balancer CPU/req | req/s vs nginx-fronted | p99 vs nginx-fronted | balancer CPU/req vs nginx |")
print("|---|---:|---:|---:|---:|---:|---:|")
print(f"| nginx least_conn -> 2 servers | {n_rps:,.0f} | {n_p99/1000:.1f} ms | {n_ns:,.0f} ns | 1.00x | 1.000 | 1.000 |")
print(f"| todo-lb -> 2 servers | {l_rps:,.0f} | {l_p99/1000:.1f} ms | {l_ns:,.0f} ns | {l_rps/n_rps:.2f}x | {l_p99/n_p99:.3f} | {l_ns/n_ns:.3f} |")
if b_rps:
    print(f"| todo-lb (baseline build) -> 2 servers | {b_rps:,.0f} | {b_p99/1000:.1f} ms | {b_ns:,.0f} ns | {b_rps/n_rps:.2f}x | {b_p99/n_p99:.3f} | {b_ns/n_ns:.3f} |")
print(f"| 2 servers on one port (SO_REUSEPORT), no balancer | {d_rps:,.0f} | {d_p99/1000:.1f} ms | - | {d_rps/n_rps:.2f}x | {d_p99/n_p99:.3f} | - |")
print(f"\nTargets: todo-lb >= 5x nginx as a balancer: {'met' if l_rps/n_rps >= 5 else 'NOT met'} ({l_rps/n_rps:.2f}x); direct >= 10x the nginx-fronted path: {'met' if d_rps/n_rps >= 10 else 'NOT met'} ({d_rps/n_rps:.2f}x).")
if b_rps:
    print(f"\ntodo-lb, this build against the baseline build, same run: req/s {l_rps/b_rps:.3f}x, balancer CPU/req {l_ns/b_ns:.3f}x, p99 {l_p99/b_p99:.3f}x.")
print(f"\nCPU steering, one two-core todo-server, client on both CPUs (-t 2): hash {h_rps:,.0f} req/s (p99 {h_p99/1000:.1f} ms), cpu {c_rps:,.0f} req/s (p99 {c_p99/1000:.1f} ms): {c_rps/h_rps:.2f}x. On loopback the CPU that receives a connection is its client's, so steering keeps each connection on its client's CPU.")
PY

#!/usr/bin/env bash
# One run, one machine: todo-server against nginx returning the same bytes,
# with the same client, plus wrk as a second client and callgrind
# instruction counts. Prints a markdown table (also saved to
# bench/results/compare-latest.md), then the reference topology
# (bench/topology.sh: nginx least_conn vs todo-lb vs SO_REUSEPORT, TOPOLOGY=0
# skips it) and the write row (bench/writes.sh, WRITES=0 skips it). A
# "todo-server, access log on" row runs this build with TODO_ACCESS_LOG=on
# (lines to a file) beside the same build with it off (ACCESS_LOG=0 skips;
# ACCESS_LOG_MODE=sample:100 measures a sampled log instead).
#
#   ./bench/compare.sh [--duration 10s] [--connections 2000] [--baseline-bin PATH]
#                      [--baseline-lb PATH]
#
# --baseline-bin PATH: also run the todo-server rows (depth 1 and 80) with the
# todo-server binary at PATH (another build, e.g. of an earlier commit), in
# the same run with the same settings; the table gets "todo-server
# (baseline)" rows and, under it, depth-80 server CPU/request new/baseline;
# callgrind also counts the baseline's instructions per request.
# --baseline-lb PATH: the same for todo-lb in the reference topology
# (bench/topology.sh --baseline-lb).
#
# Layout on a 2-CPU machine: each server gets one core on CPU 0, the client
# runs on CPU 1 (SERVER_CPU / CLIENT_CPU to change). Server CPU per request is
# (utime+stime of the server processes over the run) / responses counted, so
# kernel time spent on its sockets is included.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-2000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
CALLGRIND_REQUESTS=${CALLGRIND_REQUESTS:-200000}
BASELINE_BIN=${BASELINE_BIN:-}
BASELINE_LB=${BASELINE_LB:-}
parse_flags "$@"
if [ -n "$BASELINE_BIN" ] && [ ! -x "$BASELINE_BIN" ]; then
  echo "--baseline-bin $BASELINE_BIN: not an executable file" >&2
  exit 2
fi

ensure_apt nginx-light wrk valgrind curl
build_release
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/todo-compare.XXXXXX)
PIDS=()
cleanup() {
  stop_pids "${PIDS[@]}"
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- todo-server, one core --------------------------------------------------
TODO_PORT=$(free_port)
mkdir -p "$WORK/data"
taskset -c "$SERVER_CPU" true # fail early if the CPU does not exist
start_server "$TODO_PORT" "$WORK/data" --cores 1 --pin false
pin "$SERVER_CPU" "$SERVER_PID"
PIDS+=("$SERVER_PID")
TODO_PID=$SERVER_PID
TODO_URL="http://127.0.0.1:$TODO_PORT/todos?limit=1"

# --- the baseline build (--baseline-bin), the same settings ---------------------
if [ -n "$BASELINE_BIN" ]; then
  BASE_PORT=$(free_port)
  mkdir -p "$WORK/base-data"
  start_server --bin "$BASELINE_BIN" "$BASE_PORT" "$WORK/base-data" --cores 1 --pin false
  pin "$SERVER_CPU" "$SERVER_PID"
  PIDS+=("$SERVER_PID")
  BASE_PID=$SERVER_PID
  BASE_URL="http://127.0.0.1:$BASE_PORT/todos?limit=1"
fi

# --- this build with the access log on (ACCESS_LOG=0 skips) ---------------------
# The same settings; its JSON lines go to a file, as an operator would keep them.
if [ "${ACCESS_LOG:-1}" = 1 ]; then
  LOG_PORT=$(free_port)
  mkdir -p "$WORK/log-data"
  start_server "$LOG_PORT" "$WORK/log-data" --cores 1 --pin false --access-log "${ACCESS_LOG_MODE:-on}" > "$WORK/access.log"
  pin "$SERVER_CPU" "$SERVER_PID"
  PIDS+=("$SERVER_PID")
  LOG_PID=$SERVER_PID
  LOG_URL="http://127.0.0.1:$LOG_PORT/todos?limit=1"
fi

# --- nginx, one worker, the same body -------------------------------------------
curl -fs "$TODO_URL" > "$WORK/body.json"
NGINX_PORT=$(free_port)
BODY=$(cat "$WORK/body.json")
mkdir -p "$WORK/nginx"
nginx_conf "$WORK/nginx" nginx "$NGINX_PORT" "$SERVER_CPU" static "$BODY"
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -g 'daemon off;' &
NGINX_MASTER=$!
PIDS+=("$NGINX_MASTER")
NGINX_URL="http://127.0.0.1:$NGINX_PORT/todos?limit=1"
wait_http "$NGINX_URL"
NGINX_PIDS=("$NGINX_MASTER" $(pgrep -P "$NGINX_MASTER"))
cmp -s <(curl -fs "$NGINX_URL") "$WORK/body.json" || { echo "nginx does not serve the same body" >&2; exit 1; }

# client_cpu FILE CMD...: run CMD; write its CPU seconds (user+system) to FILE.
client_cpu() {
  local file=$1; shift
  python3 -c 'import resource, subprocess, sys
p = subprocess.run(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(str(r.ru_utime + r.ru_stime))
sys.exit(p.returncode)' "$file" "$@"
}

# run_bench NAME URL DEPTH PID...: one todo-bench run; appends a result line.
declare -A RPS P99 NS
run_bench() {
  local name=$1 url=$2 depth=$3; shift 3
  local before after out
  before=$(cpu_ticks "$@")
  out=$(client_cpu "$WORK/client.$name.$depth" "$BIN/todo-bench" "$url" -c "$CONNECTIONS" -p "$depth" -d "$DURATION" --cpus "$CLIENT_CPU" --json)
  after=$(cpu_ticks "$@")
  local responses errors
  responses=$(json_field "$out" responses)
  echo "$responses" > "$WORK/responses.$name.$depth"
  errors=$(bench_errors "$out")
  RPS[$name/$depth]=$(json_field "$out" requests_per_sec)
  P99[$name/$depth]=$(json_field "$out" latency.p99_us)
  NS[$name/$depth]=$(python3 -c "print(($after-$before)*1e9/$TICK/max(1,$responses))")
  log "$name depth $depth: $(printf '%.0f' "${RPS[$name/$depth]}") req/s, p99 ${P99[$name/$depth]} us, ${NS[$name/$depth]%.*} ns CPU/req, errors $errors"
}

for depth in 1 80; do
  run_bench todo "$TODO_URL" "$depth" "$TODO_PID"
  if [ -n "$BASELINE_BIN" ]; then run_bench baseline "$BASE_URL" "$depth" "$BASE_PID"; fi
  if [ -n "${LOG_PID:-}" ]; then run_bench logged "$LOG_URL" "$depth" "$LOG_PID"; fi
  run_bench nginx "$NGINX_URL" "$depth" "${NGINX_PIDS[@]}"
done

# --- second client: wrk, one thread on the client CPU, pipelined ------------------
cat > "$WORK/pipeline.lua" <<'LUA'
init = function(args)
  local r = {}
  for i = 1, 80 do r[i] = wrk.format(nil, wrk.path) end
  req = table.concat(r)
end
request = function() return req end
LUA
WRK_SECONDS=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)(ms|s|m)?', '$DURATION'); v=int(m[1]); u=m[2] or 's'; print(max(1, v//1000 if u=='ms' else v*60 if u=='m' else v))")
log "wrk -t1 -c $CONNECTIONS pipelined 80"
WRK_OUT=$(client_cpu "$WORK/client.wrk" taskset -c "$CLIENT_CPU" wrk -t1 -c "$CONNECTIONS" -d "${WRK_SECONDS}s" -s "$WORK/pipeline.lua" "$TODO_URL")
WRK_REQUESTS=$(echo "$WRK_OUT" | awk '/requests in/ {print $1}')
WRK_CPU=$(cat "$WORK/client.wrk")
BENCH_CPU=$(cat "$WORK/client.todo.80")
BENCH_RESPONSES=$(cat "$WORK/responses.todo.80")
WRK_RPS=$(echo "$WRK_OUT" | awk '/Requests\/sec/ {print $2}')
WRK_ERRORS=$(echo "$WRK_OUT" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')

# --- instructions per request (callgrind), both servers ------------------------
# Two runs of N and 2N requests; (Ir(2N) - Ir(N)) / N removes start-up and
# shutdown. Legacy (epoll) driver: valgrind does not model io_uring.
callgrind_run() { # callgrind_run NAME REQUESTS -> total Ir
  local name=$1 n=$2 port out pid
  port=$(free_port)
  out="$WORK/callgrind.$name.$n"
  case $name in
    todo|baseline)
      local server="$BIN/todo-server"
      [ "$name" = baseline ] && server=$BASELINE_BIN
      rm -rf "$WORK/cg-data"
      valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$server" --listen "127.0.0.1:$port" --data-dir "$WORK/cg-data" --cores 1 --driver legacy --seed 10000 \
        2>"$WORK/cg.log" &
      pid=$!
      ;;
    nginx)
      nginx_conf "$WORK/nginx" cg "$port" - static "$BODY"
      valgrind --tool=callgrind --callgrind-out-file="$out" --trace-children=no \
        "$NGINX" -c "$WORK/nginx/cg.conf" -p "$WORK/nginx" -g 'daemon off; master_process off;' 2>"$WORK/cg.log" &
      pid=$!
      ;;
  esac
  wait_http "http://127.0.0.1:$port/todos?limit=1" 60 || cat "$WORK/cg.log" >&2
  "$BIN/todo-bench" "http://127.0.0.1:$port/todos?limit=1" -c 10 -p 80 -n "$n" -d 600s --cpus "$CLIENT_CPU" --json > /dev/null
  kill -TERM "$pid"
  # nginx under valgrind has been seen to miss a TERM: QUIT (graceful, and
  # callgrind still writes its counts) if it is not gone within 20 s.
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -QUIT "$pid"
  wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
log "callgrind: todo-server"
T1=$(callgrind_run todo "$CALLGRIND_REQUESTS"); T2=$(callgrind_run todo $((2 * CALLGRIND_REQUESTS)))
log "callgrind: nginx"
N1=$(callgrind_run nginx "$CALLGRIND_REQUESTS"); N2=$(callgrind_run nginx $((2 * CALLGRIND_REQUESTS)))
TODO_IR=$(( (T2 - T1) / CALLGRIND_REQUESTS ))
BASE_IR=0
if [ -n "$BASELINE_BIN" ]; then
  log "callgrind: todo-server (baseline)"
  B1=$(callgrind_run baseline "$CALLGRIND_REQUESTS"); B2=$(callgrind_run baseline $((2 * CALLGRIND_REQUESTS)))
  BASE_IR=$(( (B2 - B1) / CALLGRIND_REQUESTS ))
fi
NGINX_IR=$(( (N2 - N1) / CALLGRIND_REQUESTS ))

# --- the table -----------------------------------------------------------------
RESULTS="$ROOT/bench/results"
mkdir -p "$RESULTS"
BASELINE_ARGS=()
if [ -n "$BASELINE_BIN" ]; then
  BASELINE_ARGS=("$BASELINE_BIN" "${RPS[baseline/1]}" "${P99[baseline/1]}" "${NS[baseline/1]}" \
    "${RPS[baseline/80]}" "${P99[baseline/80]}" "${NS[baseline/80]}")
fi
LOGGED=""
if [ -n "${LOG_PID:-}" ]; then
  LOG_LINES=$(wc -l < "$WORK/access.log")
  LOG_DROPPED=$(curl -fs "http://127.0.0.1:$LOG_PORT/metrics" | awk '/^todo_access_log_dropped_total/ {print $2}')
  LOGGED="${RPS[logged/1]} ${P99[logged/1]} ${NS[logged/1]} ${RPS[logged/80]} ${P99[logged/80]} ${NS[logged/80]} $LOG_LINES ${LOG_DROPPED:-0}"
  rm -f "$WORK/access.log"
fi
LOG_MODE=${ACCESS_LOG_MODE:-on} LOGGED=$LOGGED BASE_IR=$BASE_IR python3 - "$CONNECTIONS" "$DURATION" "$WRK_RPS" "$TODO_IR" "$NGINX_IR" "$WRK_REQUESTS" "$WRK_CPU" "$BENCH_CPU" "$BENCH_RESPONSES" \
  "${RPS[todo/1]}" "${P99[todo/1]}" "${NS[todo/1]}" "${RPS[nginx/1]}" "${P99[nginx/1]}" "${NS[nginx/1]}" \
  "${RPS[todo/80]}" "${P99[todo/80]}" "${NS[todo/80]}" "${RPS[nginx/80]}" "${P99[nginx/80]}" "${NS[nginx/80]}" \
  "${BASELINE_ARGS[@]}" \
  <<'PY' | tee "$RESULTS/compare-latest.md"
import sys, datetime, platform, os
a = sys.argv[1:]
conns, duration, wrk_rps, todo_ir, nginx_ir = a[0], a[1], float(a[2]), int(a[3]), int(a[4])
wrk_requests, wrk_cpu, bench_cpu, bench_responses = float(a[5]), float(a[6]), float(a[7]), float(a[8])
v = list(map(float, a[9:21]))
rows = {(n, d): v[i*3:(i+1)*3] for i, (d, n) in enumerate([(1,'todo'),(1,'nginx'),(80,'todo'),(80,'nginx')])}
baseline = a[21] if len(a) > 21 else None  # --baseline-bin PATH, then its rows at depth 1 and 80
if baseline:
    b = list(map(float, a[22:28]))
    rows[('baseline', 1)], rows[('baseline', 80)] = b[0:3], b[3:6]
logged = os.environ.get("LOGGED", "").split()
if logged:
    g = list(map(float, logged))
    rows[('logged', 1)], rows[('logged', 80)] = g[0:3], g[3:6]
    log_lines, log_dropped = int(g[6]), int(g[7])
cpu = next((l.split(':',1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}.")
print(f"Server on one core, client (todo-bench, one executor) on another; -c {conns}, {duration} per row, GET /todos?limit=1.\n")
print("| server | depth | req/s | p99 | server CPU/req | req/s vs nginx | CPU/req vs nginx |")
print("|---|---:|---:|---:|---:|---:|---:|")
for d in (1, 80):
    t, n = rows[('todo', d)], rows[('nginx', d)]
    servers = [('todo-server', t)]
    if baseline:
        servers.append(('todo-server (baseline)', rows[('baseline', d)]))
    if logged:
        servers.append((f"todo-server, access log {os.environ['LOG_MODE']}", rows[('logged', d)]))
    servers.append(('nginx (same bytes)', n))
    for name, r in servers:
        print(f"| {name} | {d} | {r[0]:,.0f} | {r[1]/1000:.1f} ms | {r[2]:,.0f} ns | {r[0]/n[0]:.2f}x | {r[2]/n[2]:.3f} |")
if baseline:
    print(f"\nDepth 80, server CPU/request, this build / baseline ({baseline}): {rows[('todo', 80)][2]:,.0f} / {rows[('baseline', 80)][2]:,.0f} ns = {rows[('todo', 80)][2]/rows[('baseline', 80)][2]:.3f}.")
if logged:
    print(f"\nAccess log {os.environ['LOG_MODE']} / off (lines to a file), same build, same run:")
    for d in (1, 80):
        on, off = rows[('logged', d)], rows[('todo', d)]
        print(f"- depth {d}: req/s {on[0]/off[0]:.3f}, server CPU/request {on[2]/off[2]:.3f}")
    print(f"- {log_lines:,} lines written, {log_dropped:,} dropped (the writer behind)")
bench80 = rows[('todo', 80)][0]
bench_ns = bench_cpu * 1e9 / bench_responses
wrk_ns = wrk_cpu * 1e9 / wrk_requests
print(f"\nTwo clients, one client core, the same todo-server, depth 80, -c {conns}:\n")
print("| client | req/s | client CPU/response | req/s vs wrk | CPU/response vs wrk |")
print("|---|---:|---:|---:|---:|")
print(f"| todo-bench | {bench80:,.0f} | {bench_ns:,.0f} ns | {bench80/wrk_rps:.2f}x | {bench_ns/wrk_ns:.2f} |")
print(f"| wrk (pipelining script) | {wrk_rps:,.0f} | {wrk_ns:,.0f} ns | 1.00x | 1.00 |")
print(f"\nInstructions per request (callgrind, epoll driver, depth 80): todo-server {todo_ir:,}, nginx {nginx_ir:,}: {todo_ir/nginx_ir:.3f} of nginx.")
base_ir = int(os.environ.get("BASE_IR", "0"))
if baseline and base_ir:
    print(f"Instructions per request, this build / baseline: {todo_ir:,} / {base_ir:,} = {todo_ir/base_ir:.3f} (callgrind counts do not depend on the machine's load).")
PY
[ -n "$WRK_ERRORS" ] && echo "wrk reported: $WRK_ERRORS" >&2

cleanup_servers() { stop_pids "${PIDS[@]}"; }
cleanup_servers

# --- the reference topology: nginx vs todo-lb vs direct (bench/topology.sh) -----
if [ "${TOPOLOGY:-1}" = 1 ]; then
  echo
  DURATION=$DURATION CONNECTIONS=$CONNECTIONS BASELINE_LB=$BASELINE_LB "$ROOT/bench/topology.sh"
fi

# --- the write row: accepted writes vs the broker alone (bench/writes.sh) -------
if [ "${WRITES:-1}" = 1 ] && command -v tansu >/dev/null; then
  echo
  DURATION=$DURATION "$ROOT/bench/writes.sh"
else
  echo "(write row skipped: WRITES=0, or no tansu on PATH; scripts/services.sh install builds it)" >&2
fi
exit 0

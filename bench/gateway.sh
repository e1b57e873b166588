#!/usr/bin/env bash
# todo-lb's balancing policies with one slow upstream, in one run: three
# todo-servers (embedded default, one core each), one of them stalled as a
# noisy neighbour stalls a process (SIGSTOP for 15 ms of every 20 ms), and
# todo-lb (one core) in front with each --balance in turn. The client sends
# GET /todos?limit=1 at a fixed open-loop rate, so a stall shows as
# latency, measured from when each request was due; p99 and the share of
# requests that reached the stalled server are compared with round-robin's.
#
# `hash` is keyed by the client's address here, and every request comes from
# one client: it sends everything to one server, whichever the hash names.
# Its row shows what a hash that ignores latency does, nothing more.
#
#   ./bench/gateway.sh [--duration 10s] [--rate 20000] [--connections 64]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
RATE=${RATE:-20000}
CONNECTIONS=${CONNECTIONS:-64}
parse_flags "$@"

build_release todo-server todo-lb todo-bench
DIR=$(mktemp -d /tmp/todo-gateway.XXXXXX)
PIDS=()
STALLER=
SLOW_PID=
cleanup() {
  # The staller first, then wake the stalled server: a stopped process
  # would never act on the SIGTERM below.
  [ -z "$STALLER" ] || stop_pids "$STALLER"
  [ -z "$SLOW_PID" ] || kill -CONT "$SLOW_PID" 2>/dev/null || true
  stop_pids "${PIDS[@]}"
  rm -rf "$DIR"
}
trap cleanup EXIT
LAST_CPU=$(($(nproc) - 1))

# The three servers share the last CPU; the balancer and the client the first.
PORTS=()
SERVER_PIDS=()
for i in 1 2 3; do
  port=$(free_port)
  mkdir -p "$DIR/s$i"
  start_server "$port" "$DIR/s$i" --cores 1 --pin false --instance "$i"
  pin "$LAST_CPU" "$SERVER_PID"
  PIDS+=("$SERVER_PID")
  SERVER_PIDS+=("$SERVER_PID")
  PORTS+=("$port")
done
SLOW_PID=${SERVER_PIDS[2]}

# served PORT: list requests the server at PORT has answered.
served() {
  curl -fs "http://127.0.0.1:$1/metrics" |
    awk '/^todo_requests_total\{route="todos_list",status="200"\}/ {n += $2} END {print n + 0}'
}

# The noisy neighbour: the third server is stopped 15 ms of every 20 ms.
python3 - "$SLOW_PID" <<'PY' &
import os, signal, sys, time
pid = int(sys.argv[1])
while True:
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.015)
    os.kill(pid, signal.SIGCONT)
    time.sleep(0.005)
PY
STALLER=$!

ROWS=()
for balance in round-robin least-conn p2c hash; do
  port=$(free_port)
  ups=()
  for p in "${PORTS[@]}"; do ups+=(--upstream "127.0.0.1:$p"); done
  "$BIN/todo-lb" --listen "127.0.0.1:$port" "${ups[@]}" --cores 1 --pin false \
    --balance "$balance" --health-interval 1s 2>"$DIR/lb-$balance.log" &
  lb=$!
  pin 0 "$lb"
  wait_http "http://127.0.0.1:$port/readyz"
  before=$(served "${PORTS[2]}")
  log "todo-lb --balance $balance: $RATE req/s for $DURATION"
  out=$("$BIN/todo-bench" "http://127.0.0.1:$port/todos?limit=1" -c "$CONNECTIONS" --rate "$RATE" \
    -d "$DURATION" --cpus 0 --json)
  after=$(served "${PORTS[2]}")
  total=$(json_field "$out" responses)
  ROWS+=("$balance|$(json_field "$out" latency.p50_us)|$(json_field "$out" latency.p99_us)|$(json_field "$out" latency.p999_us)|$(json_field "$out" latency.max_us)|$((after - before))|$total|$(bench_errors "$out")")
  stop_pids "$lb"
done

python3 - "$RATE" "$DURATION" "$CONNECTIONS" "${ROWS[@]}" <<'PY' | tee "$ROOT/bench/results/gateway-latest.md"
import sys, datetime
rate, duration, conns = sys.argv[1:4]
rows = [r.split("|") for r in sys.argv[4:]]
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. Three todo-servers (one core each) share the last CPU, "
      f"the third stopped 15 ms of every 20 ms; todo-lb (one core) and todo-bench share CPU 0; "
      f"GET /todos?limit=1 at {int(rate):,}/s open loop, {conns} connections, {duration} per policy.\n")
print("| --balance | p50 | p99 | p99.9 | max | to the stalled server | p99 vs round-robin | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
rr = next(float(r[2]) for r in rows if r[0] == "round-robin")
ms = lambda us: f"{int(us) / 1000:.1f} ms"
for name, p50, p99, p999, mx, slow, total, errors in rows:
    share = int(slow) / max(int(total), 1)
    print(f"| {name} | {ms(p50)} | {ms(p99)} | {ms(p999)} | {ms(mx)} | {share:.1%} | {float(p99) / rr:.2f} | {errors} |")
PY

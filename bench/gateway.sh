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
# With --baseline-lb PATH (another todo-lb build, e.g. from before a change):
# then, with no server stalled, the plain path A/B: this todo-lb with every
# new feature off (--balance least-conn) against PATH, pipelined (-c 200
# -p 80), alternating, three rounds each; req/s and the balancer's CPU per
# request.
#
#   ./bench/gateway.sh [--duration 10s] [--rate 20000] [--connections 64]
#                      [--baseline-lb PATH]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
RATE=${RATE:-20000}
CONNECTIONS=${CONNECTIONS:-64}
BASELINE_LB=${BASELINE_LB:-}
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

ABROWS=()
if [ -n "$BASELINE_LB" ]; then
  stop_pids "$STALLER"
  STALLER=
  kill -CONT "$SLOW_PID"
  ups=()
  for p in "${PORTS[@]}"; do ups+=(--upstream "127.0.0.1:$p"); done
  for round in 1 2 3; do
    for which in this baseline; do
      port=$(free_port)
      if [ "$which" = this ]; then
        "$BIN/todo-lb" --listen "127.0.0.1:$port" "${ups[@]}" --cores 1 --pin false --balance least-conn 2>/dev/null &
      else
        "$BASELINE_LB" --listen "127.0.0.1:$port" "${ups[@]}" --cores 1 --pin false 2>/dev/null &
      fi
      lb=$!
      pin 0 "$lb"
      wait_http "http://127.0.0.1:$port/readyz"
      log "plain path, $which todo-lb, round $round"
      before=$(cpu_ticks "$lb")
      out=$("$BIN/todo-bench" "http://127.0.0.1:$port/todos?limit=1" -c 200 -p 80 -d "$DURATION" --cpus 0 --json)
      after=$(cpu_ticks "$lb")
      ABROWS+=("$which|$round|$(json_field "$out" requests_per_sec)|$(json_field "$out" seconds)|$((after - before))|$(bench_errors "$out")")
      stop_pids "$lb"
    done
  done
fi

python3 - "$RATE" "$DURATION" "$CONNECTIONS" "$(getconf CLK_TCK)" "${ROWS[@]}" -- "${ABROWS[@]}" <<'PY' | tee "$ROOT/bench/results/gateway-latest.md"
import sys, datetime
rate, duration, conns, hz = sys.argv[1:5]
args = sys.argv[5:]
sep = args.index("--")
rows = [r.split("|") for r in args[:sep]]
ab = [r.split("|") for r in args[sep + 1:]]
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
if ab:
    print("\nThe plain path A/B (no server stalled; this todo-lb with --balance least-conn against the baseline build), "
          "-c 200 -p 80, alternating:\n")
    print("| todo-lb | round | req/s | CPU per request | errors |")
    print("|---|---:|---:|---:|---:|")
    sums = {}
    for which, rnd, rps, secs, ticks, errors in ab:
        n = float(rps) * float(secs)
        ns = int(ticks) / int(hz) / n * 1e9
        sums.setdefault(which, []).append((float(rps), ns))
        print(f"| {which} | {rnd} | {float(rps):,.0f} | {ns:,.0f} ns | {errors} |")
    t, b = sums["this"], sums["baseline"]
    mean = lambda xs: sum(xs) / len(xs)
    print(f"\nThis build / baseline: req/s {mean([x[0] for x in t]) / mean([x[0] for x in b]):.3f}, "
          f"CPU per request {mean([x[1] for x in t]) / mean([x[1] for x in b]):.3f} (means of the three rounds).")
PY

#!/usr/bin/env bash
# The io_uring stall reproducer: -c 2000 -p 80 against todo-server (one core)
# and against todo-lb (one core, two one-core servers behind it), each on
# io_uring and on epoll, the server also with a read buffer smaller than a
# pipelined batch. For every row: req/s and, across connections, each
# connection's longest wait for an answer (p50, p99, max) and how many waited
# over a second; a stalled connection shows there even when latency
# percentiles hide it. Prints a markdown table, also saved to
# bench/results/stall-latest.md.
#
#   ./bench/stall.sh [--duration 10s] [--connections 2000] [--pipelining 80]
#                    [--baseline-dir DIR]
#
# --baseline-dir DIR: also run the io_uring rows with DIR/todo-server and
# DIR/todo-lb (another build, e.g. one without the accept-queue fix), in the
# same run with the same settings.
#
# Layout on a 2-CPU machine: servers and balancer on CPU 0 (SERVER_CPU), the
# client on CPU 1 (CLIENT_CPU). See docs/front-tier.md, "io_uring and the
# accept queue", for what this found.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-2000}
PIPELINING=${PIPELINING:-80}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASELINE_DIR=${BASELINE_DIR:-}
SMALL_READ=${SMALL_READ:-2048}
parse_flags "$@"
if [ -n "$BASELINE_DIR" ] && [ ! -x "$BASELINE_DIR/todo-server" -o ! -x "$BASELINE_DIR/todo-lb" ]; then
  echo "--baseline-dir $BASELINE_DIR: needs todo-server and todo-lb in it" >&2
  exit 2
fi

build_release
WORK=$(mktemp -d /tmp/todo-stall.XXXXXX)
PIDS=()
cleanup() {
  stop_pids "${PIDS[@]}"
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ROWS=()
# measure LABEL URL: one todo-bench run, one table row.
measure() {
  local label=$1 url=$2 json
  json=$("$BIN/todo-bench" "$url" -c "$CONNECTIONS" -p "$PIPELINING" -d "$DURATION" \
    --cpus "$CLIENT_CPU" --json)
  ROWS+=("$(python3 -c '
import json, sys
r = json.loads(sys.argv[2]); w = r["longest_waits"] or {}
errors = sum(r["wrong_status"].values()) + r["framing_errors"] + r["io_errors"] + r["connect_errors"]
ms = lambda us: "%.0f ms" % (us / 1000)
print("| %s | %s | %s | %s | %s | %d | %d |" % (sys.argv[1], format(round(r["requests_per_sec"]), ","),
    ms(w.get("p50_us", 0)), ms(w.get("p99_us", 0)), ms(w.get("max_us", 0)), w.get("over_1s", 0), errors))
' "$label" "$json")")
  log "${ROWS[-1]}"
}

# server BIN DRIVER [FLAGS...]: one todo-server on one core; sets URL, PID.
server() {
  local bin=$1 driver=$2 port dir
  shift 2
  port=$(free_port)
  dir=$(mktemp -d "$WORK/data.XXXXXX")
  start_server --bin "$bin" "$port" "$dir" --cores 1 --pin false --driver "$driver" "$@"
  pin "$SERVER_CPU" "$SERVER_PID"
  PIDS+=("$SERVER_PID")
  URL="http://127.0.0.1:$port/todos?limit=1"
}

# balancer BIN DRIVER: todo-lb (one core) in front of two servers (their
# default driver); sets URL.
balancer() {
  local bin=$1 driver=$2 a b port
  server "$BIN/todo-server" auto
  a=${URL#http://}; a=${a%%/*}
  server "$BIN/todo-server" auto
  b=${URL#http://}; b=${b%%/*}
  port=$(free_port)
  "$bin" --listen "127.0.0.1:$port" --upstream "$a" --upstream "$b" --cores 1 --pin false \
    --driver "$driver" 2> "$WORK/lb.log" &
  PIDS+=($!)
  wait_line "$WORK/lb.log" "listening on" $!
  pin "$SERVER_CPU" $!
  URL="http://127.0.0.1:$port/todos?limit=1"
}

# stop_all: stop what this row started.
stop_all() {
  stop_pids "${PIDS[@]}"
  wait 2>/dev/null || true
  PIDS=()
}

for driver in uring legacy; do
  name=$([ "$driver" = uring ] && echo io_uring || echo epoll)
  server "$BIN/todo-server" "$driver"
  measure "todo-server, $name" "$URL"; stop_all
  server "$BIN/todo-server" "$driver" --read-buffer "$SMALL_READ"
  measure "todo-server, $name, ${SMALL_READ}-byte read buffer" "$URL"; stop_all
  balancer "$BIN/todo-lb" "$driver"
  measure "todo-lb, $name" "$URL"; stop_all
done
if [ -n "$BASELINE_DIR" ]; then
  server "$BASELINE_DIR/todo-server" uring
  measure "todo-server (baseline), io_uring" "$URL"; stop_all
  server "$BASELINE_DIR/todo-server" uring --read-buffer "$SMALL_READ"
  measure "todo-server (baseline), io_uring, ${SMALL_READ}-byte read buffer" "$URL"; stop_all
  balancer "$BASELINE_DIR/todo-lb" uring
  measure "todo-lb (baseline), io_uring" "$URL"; stop_all
fi

mkdir -p "$ROOT/bench/results"
{
  echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPUs, kernel $(uname -r)."
  echo "Servers and balancer on CPU $SERVER_CPU, client (todo-bench, one executor) on CPU $CLIENT_CPU;"
  echo "-c $CONNECTIONS -p $PIPELINING, $DURATION per row, GET /todos?limit=1. Longest wait: per connection, the longest"
  echo "any of its requests waited for its answer; the columns are across connections."
  [ -n "$BASELINE_DIR" ] && echo "Baseline: the binaries in $BASELINE_DIR."
  echo
  echo "| target, driver | req/s | longest wait p50 | p99 | max | connections over 1 s | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$ROOT/bench/results/stall-latest.md"

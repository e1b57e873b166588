#!/usr/bin/env bash
# The reference run: todo-bench -c 2000 -p 80 against GET /todos?limit=1 on a
# todo-server this script builds and starts (or on --target URL).
#
#   ./bench/pipelined.sh [--duration 10s] [--connections 2000] [--pipelining 80]
#                        [--target URL] [--cores N] [--bench-cpus LIST]
#
# Environment: DURATION, CONNECTIONS, PIPELINING, TARGET, TODO_CORES, BENCH_CPUS.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-2000}
PIPELINING=${PIPELINING:-80}
TARGET=${TARGET:-}
CORES=${TODO_CORES:-0}
BENCH_CPUS=${BENCH_CPUS:-}
parse_flags "$@"

build_release
if [ -z "$TARGET" ]; then
  PORT=$(free_port)
  DATA=$(mktemp -d /tmp/todo-pipelined.XXXXXX)
  trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null; rm -rf "$DATA" "$DATA.log"' EXIT
  start_server "$PORT" "$DATA" --cores "$CORES"
  TARGET="http://127.0.0.1:$PORT/todos?limit=1"
fi
ARGS=("$TARGET" -c "$CONNECTIONS" -p "$PIPELINING" -d "$DURATION")
[ -n "$BENCH_CPUS" ] && ARGS+=(--cpus "$BENCH_CPUS")
log "todo-bench ${ARGS[*]}"
"$BIN/todo-bench" "${ARGS[@]}"

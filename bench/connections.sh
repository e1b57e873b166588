#!/usr/bin/env bash
# Many idle keep-alive connections against a pipelined client, release
# binaries: as many connections as the open-files limit allows, held by
# HOLDERS client processes from different loopback source addresses, while
# todo-bench (depth 80) measures. Reports server memory per idle connection
# and the pipelined throughput with the idle connections as a ratio of the
# throughput without them (runs alternate: alone, with, with, alone).
# Saved to bench/results/connections-latest.md.
#
#   ./bench/connections.sh [--duration 5s]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-5s}
HOLDERS=${HOLDERS:-4}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
parse_flags "$@"
build_release
WORK=$(mktemp -d /tmp/todo-conns.XXXXXX)
HOLD_PIDS=()
trap 'kill "${HOLD_PIDS[@]}" "${SERVER_PID:-}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

PORT=$(free_port)
start_server "$PORT" "$WORK/data" --cores 1 --pin false
pin "$SERVER_CPU" "$SERVER_PID"
URL="http://127.0.0.1:$PORT/todos?limit=1"
rss() { rss_bytes "$SERVER_PID"; }
run() { pipelined_rate "$URL" "$DURATION" "$CLIENT_CPU"; }

log "warm-up"; run >/dev/null
A1=$(run); log "alone: $A1 req/s"
METRICS="http://127.0.0.1:$PORT/metrics"
# The client's connections are gone (the one asking is the only one open).
wait_metric "$METRICS" todo_connections_open -le 1
RSS0=$(rss)
BUDGET=$(( $(ulimit -Hn) - 1000 ))
PER=$(( BUDGET / HOLDERS ))
HOLD_SECONDS=$(( 20 + 3 * ${DURATION%s} ))
for i in $(seq "$HOLDERS"); do
  "$BIN/todo-bench" "$URL" --hold "$PER" --source "127.0.0.$((i + 1))" -d "${HOLD_SECONDS}s" > "$WORK/hold.$i" &
  HOLD_PIDS+=($!)
done
log "holding $((PER * HOLDERS)) connections from $HOLDERS processes"
# Every held connection answered once and gave its buffers back.
wait_metric "$METRICS" todo_connections_quiet -ge $((PER * HOLDERS)) "$HOLD_SECONDS"
RSS1=$(rss)
W1=$(run); log "with idle connections: $W1 req/s"
W2=$(run); log "with idle connections: $W2 req/s"
OPEN=$(curl -fs "http://127.0.0.1:$PORT/metrics" | awk '/^todo_connections_open / {print $2}')
wait "${HOLD_PIDS[@]}"
HOLD_PIDS=()
wait_metric "$METRICS" todo_connections_open -le 1
A2=$(run); log "alone: $A2 req/s"

mkdir -p "$ROOT/bench/results"
python3 - "$A1" "$A2" "$W1" "$W2" "$RSS0" "$RSS1" "$((PER * HOLDERS))" "$OPEN" "$WORK"/hold.* <<'PY' | tee "$ROOT/bench/results/connections-latest.md"
import sys, json, datetime, os, platform
a1, a2, w1, w2, rss0, rss1 = map(float, sys.argv[1:7])
want, open_ = int(sys.argv[7]), sys.argv[8]
holds = [json.load(open(p)) for p in sys.argv[9:]]
held = sum(h["held"] for h in holds)
after = sum(h["answered_after"] for h in holds)
alone, withc = (a1 + a2) / 2, (w1 + w2) / 2
cpu = next((l.split(':',1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}.")
print(f"todo-server on one core; pipelined client (todo-bench -c 200 -p 80, one executor) on the other core; {len(holds)} holder processes.\n")
print("| | value |")
print("|---|---:|")
print(f"| idle keep-alive connections held | {held:,} of {want:,} (server reported {open_} open) |")
print(f"| answered again after the runs | {after:,} |")
print(f"| server memory per idle connection | {(rss1 - rss0) / max(held, 1):,.0f} bytes (RSS {rss0/2**20:.1f} -> {rss1/2**20:.1f} MiB) |")
print(f"| pipelined req/s without them | {alone:,.0f} ({a1:,.0f}, {a2:,.0f}) |")
print(f"| pipelined req/s with them | {withc:,.0f} ({w1:,.0f}, {w2:,.0f}) |")
print(f"| ratio | {withc / alone:.3f} |")
print(f"\nTargets: <= 4 KiB per idle connection: {'met' if (rss1 - rss0) / max(held, 1) <= 4096 else 'NOT met'}; throughput within 10%: {'met' if withc / alone >= 0.9 else 'NOT met'}.")
PY

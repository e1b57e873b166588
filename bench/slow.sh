#!/usr/bin/env bash
# Slow and non-reading clients against a pipelined client, release binaries:
# SLOW connections that send their request a byte a second (reopened when
# the server's header timeout ends them) and UNREAD connections that
# pipeline requests and never read, from one todo-bench process, while
# todo-bench (-c 200 -p 80) measures. Reports the pipelined rate with them
# as a ratio of the rate without them (runs alternate: alone, with, with,
# alone), the server's memory and open files with them, the kernel's TCP
# buffer memory, and what happened to the hostile connections. Saved to
# bench/results/slow-latest.md.
#
#   ./bench/slow.sh [--duration 10s] [--slow 5000] [--unread 1000]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
SLOW=${SLOW:-5000}
UNREAD=${UNREAD:-1000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
parse_flags "$@"
build_release
WORK=$(mktemp -d /tmp/todo-slow.XXXXXX)
HOSTILE_PID=
trap 'kill ${HOSTILE_PID:-} "${SERVER_PID:-}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

PORT=$(free_port)
start_server "$PORT" "$WORK/data" --cores 1 --pin false
pin "$SERVER_CPU" "$SERVER_PID"
URL="http://127.0.0.1:$PORT/todos?limit=1"
METRICS="http://127.0.0.1:$PORT/metrics"
rss() { rss_bytes "$SERVER_PID"; }
fds() { ls "/proc/$SERVER_PID/fd" | wc -l; }
# The kernel's TCP buffer memory, bytes (all sockets: both ends of loopback).
tcp_mem() { awk -v page="$(getconf PAGESIZE)" '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) * page }' /proc/net/sockstat; }
# What the server's sockets hold in kernel buffers, bytes (ss's skmem: the
# receive queue plus the send queue and its reserve).
server_skmem() {
  ss -tmnH state established "( sport = :$PORT )" | grep -o 'skmem:([^)]*)' |
    python3 -c 'import re, sys
print(sum(int(v) for l in sys.stdin for k, v in re.findall(r"([a-z]+)(\d+)", l) if k in ("r", "w")))'
}
run() { pipelined_rate "$URL" "$DURATION" "$CLIENT_CPU"; }

log "warm-up"; run >/dev/null
A1=$(run); log "alone: $A1 req/s"
wait_metric "$METRICS" todo_connections_open -le 1
RSS0=$(rss); FDS0=$(fds); TCP0=$(tcp_mem)
HOSTILE_SECONDS=$(( 30 + 3 * ${DURATION%s} ))
taskset -c "$CLIENT_CPU" "$BIN/todo-bench" "$URL" --slow "$SLOW" --unread "$UNREAD" \
  -d "${HOSTILE_SECONDS}s" > "$WORK/hostile.json" &
HOSTILE_PID=$!
log "$SLOW slow and $UNREAD non-reading connections"
wait_metric "$METRICS" todo_connections_open -ge $(( (SLOW + UNREAD) * 95 / 100 )) 60
HOSTILE_TICKS0=$(cpu_ticks "$HOSTILE_PID")
W1=$(run); log "with them: $W1 req/s"
W2=$(run); log "with them: $W2 req/s"
HOSTILE_TICKS=$(( $(cpu_ticks "$HOSTILE_PID") - HOSTILE_TICKS0 ))
RSS1=$(rss); FDS1=$(fds); TCP1=$(tcp_mem); SKMEM=$(server_skmem)
OPEN=$(curl -fs "$METRICS" | awk '$1 == "todo_connections_open" {print $2}')
wait "$HOSTILE_PID"
HOSTILE_PID=
wait_metric "$METRICS" todo_connections_open -le 1 60
A2=$(run); log "alone: $A2 req/s"
RSS2=$(rss)

mkdir -p "$ROOT/bench/results"
python3 - "$A1" "$A2" "$W1" "$W2" "$RSS0" "$RSS1" "$RSS2" "$FDS0" "$FDS1" "$TCP0" "$TCP1" "$OPEN" \
  "$HOSTILE_TICKS" "$(getconf CLK_TCK)" "$SKMEM" "$DURATION" "$WORK/hostile.json" <<'PY' | tee "$ROOT/bench/results/slow-latest.md"
import sys, json, datetime, os, platform
a1, a2, w1, w2, rss0, rss1, rss2, fds0, fds1, tcp0, tcp1, open_, ticks, hz, skmem = map(float, sys.argv[1:16])
duration, h = sys.argv[16], json.load(open(sys.argv[17]))
alone, withc = (a1 + a2) / 2, (w1 + w2) / 2
hostile = h["slow"] + h["unread"]
mib = lambda b: f"{b / 2**20:.1f} MiB"
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, kernel {platform.release()}.")
print(f"todo-server on one core (CPU 0); the measuring client (todo-bench -c 200 -p 80, {duration} per run) and the hostile")
print(f"client (one todo-bench process, one executor) share the other core.\n")
print("| | value |")
print("|---|---:|")
print(f"| slow connections (a byte a second) | {h['slow']:,}: {h['slow_opened']:,} opened, {h['slow_ended_by_server']:,} ended by the server's header timeout, {h['slow_open_at_end']:,} open at the end |")
print(f"| non-reading connections | {h['unread']:,}: {h['unread_opened']:,} opened, {h['unread_ended_by_server']:,} closed by the server's send timeout, {h['unread_open_at_end']:,} open at the end; {h['unread_bytes'] / 2**20:,.0f} MiB of requests sent |")
print(f"| server connections open, with them | {int(open_):,} |")
print(f"| server RSS alone -> with them -> after | {mib(rss0)} -> {mib(rss1)} -> {mib(rss2)} ({(rss1 - rss0) / max(hostile, 1):,.0f} bytes per hostile connection) |")
print(f"| server open files alone -> with them | {int(fds0):,} -> {int(fds1):,} |")
print(f"| kernel TCP buffers (both ends, all sockets) | {mib(tcp0)} -> {mib(tcp1)} |")
print(f"| the server's own sockets' kernel buffers, with them | {mib(skmem)} |")
print(f"| hostile client CPU while measuring | {ticks / hz:.1f} s of the two runs |")
print(f"| pipelined req/s without them | {alone:,.0f} ({a1:,.0f}, {a2:,.0f}) |")
print(f"| pipelined req/s with them | {withc:,.0f} ({w1:,.0f}, {w2:,.0f}) |")
print(f"| ratio | {withc / alone:.3f} |")
print(f"\nTarget: rate with them at least 0.9 of the rate without: {'met' if withc / alone >= 0.9 else 'NOT met'}.")
PY

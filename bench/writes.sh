#!/usr/bin/env bash
# Accepted writes per second through todo-server (distributed path) against
# the broker's own produce rate for the same message size, same machine, same
# run. Starts PostgreSQL, Redis, tansu, todo-worker and one todo-server
# (scripts/services.sh up), then stops them.
#
# Then the worker applies the backlog, and PostgreSQL must hold exactly one
# processed command per accepted write.
#
#   ./bench/writes.sh [--duration 10s] [--connections 64] [--pipelining 32]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
PIPELINING=${PIPELINING:-32}
parse_flags "$@"

build_release
DIR=$("$ROOT/scripts/services.sh" up "" 1)
trap '"$ROOT/scripts/services.sh" stop "$DIR"; rm -rf "$DIR"' EXIT
# shellcheck source=/dev/null
. "$DIR/env"
SERVER=${TODO_SERVERS%%,*}
wait_http "$SERVER/readyz"
TOKEN=$("$BIN/todo-server" token --sub bench)
# Accepting a write ends at the broker's ack; applying it is the worker's
# later work. Both rows measure acceptance only, so the worker is paused (it
# would compete for the same two cores in one row and not the other) and
# resumed afterwards to apply the backlog.
kill -STOP "$(cat "$DIR/worker.pid")"

# The size of the command todo-bench's POST becomes on the wire.
SIZE=$(python3 -c 'import json; print(len(json.dumps({"command_id":250614141134319617,"op":"create","todo_id":250614141134319616,"user":"bench","fields":{"public":True,"title":"bench","description":"written by todo-bench"},"issued_at":1795431067432}, separators=(",",":"))))')
IN_FLIGHT=$((CONNECTIONS * PIPELINING))

log "todo-server: POST /todos, -c $CONNECTIONS -p $PIPELINING ($IN_FLIGHT in flight)"
HTTP=$(TODO_TOKEN=$TOKEN "$BIN/todo-bench" "$SERVER/todos" --mix "1:POST /todos" -c "$CONNECTIONS" -p "$PIPELINING" -d "$DURATION" --json)
log "broker alone: $SIZE-byte messages, $IN_FLIGHT in flight"
RAW=$("$BIN/todo-bench" "kafka://$KAFKA_BROKERS/bench-raw-$$" -c "$IN_FLIGHT" -d "$DURATION" --size "$SIZE" --json)

kill -CONT "$(cat "$DIR/worker.pid")"

# Every accepted write applied exactly once: the worker works the backlog
# off; then PostgreSQL must hold one processed command per 202.
ACCEPTED=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["responses"] - sum(d["wrong_status"].values()))' "$HTTP")
PSQL=$(command -v psql || echo /usr/lib/postgresql/15/bin/psql)
log "waiting for the worker to apply $ACCEPTED commands"
APPLY_START=$SECONDS
PROCESSED=0
while [ $((SECONDS - APPLY_START)) -lt "${APPLY_WAIT:-600}" ]; do
  PROCESSED=$("$PSQL" -qtA "$DATABASE_URL" -c "SELECT count(*) FROM processed_commands" 2>/dev/null || echo 0)
  [ "$PROCESSED" -ge "$ACCEPTED" ] && break
  sleep 1
done
APPLY_SECONDS=$((SECONDS - APPLY_START))

python3 - "$HTTP" "$RAW" "$SIZE" "$IN_FLIGHT" "$ACCEPTED" "$PROCESSED" "$APPLY_SECONDS" <<'PY' | tee "$ROOT/bench/results/writes-latest.md"
import json, sys, datetime
http, raw = json.loads(sys.argv[1]), json.loads(sys.argv[2])
size, inflight = sys.argv[3], sys.argv[4]
errors = sum(http["wrong_status"].values()) + http["framing_errors"] + http["io_errors"]
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; broker: tansu (sqlite storage); {inflight} writes in flight; worker paused during both rows.\n")
print("| path | writes/s | p99 | vs broker alone |")
print("|---|---:|---:|---:|")
print(f"| todo-server, 202 after the delivery report | {http['requests_per_sec']:,.0f} | {http['latency']['p99_us']/1000:.1f} ms | {http['requests_per_sec']/raw['per_sec']:.2f} |")
print(f"| broker alone (rdkafka, {size}-byte messages) | {raw['per_sec']:,.0f} | | 1.00 |")
print(f"\nErrors counted by todo-bench: {errors}; failed deliveries producing alone: {raw['failed']}.")
accepted, processed, secs = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
verdict = "exactly once" if processed == accepted else "MISMATCH"
print(f"Accepted {accepted:,}; processed_commands after the backlog: {processed:,} ({verdict}); the worker took {secs} s ({accepted/max(secs,1):,.0f} commands/s).")
PY

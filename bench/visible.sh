#!/usr/bin/env bash
# Write-to-visible, measured from outside on release builds: writes at an
# open-loop rate through one server; per write, the time until it is in
# GET /todos on every core of two servers (todo-visible), and where that
# time goes, from the worker's command log (when it took the record, when
# it committed). The worker's consumer lag is sampled every second.
#
# Starts PostgreSQL, Redis, tansu, todo-worker and two todo-servers
# (scripts/services.sh up), then stops them. Writes bench/results/
# visible-latest.md, docs/write-visible.png and docs/write-lag.png.
#
# Before the measured runs, 3 s of writes at 500/s (not counted) let every
# server core make its Kafka client. The lists are asked every 5 ms per core
# (If-None-Match: a 304 until the core installs another snapshot).
#
#   ./bench/visible.sh [--rates "1000 10000"] [--duration 60s] [--connections 32] [--partitions 6]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

RATES=${RATES:-"1000 10000"}
DURATION=${DURATION:-60s}
CONNECTIONS=${CONNECTIONS:-32}
PARTITIONS=${PARTITIONS:-6}
parse_flags "$@"
# The worker creates the commands topic with this many partitions.
export TODO_TOPIC_PARTITIONS=$PARTITIONS

build_release todo-server todo-worker todo-bench
DIR=$("$ROOT/scripts/services.sh" up "" 2)
trap '"$ROOT/scripts/services.sh" stop "$DIR"; rm -rf "$DIR"' EXIT
# shellcheck source=/dev/null
. "$DIR/env"
IFS=, read -r -a SERVERS <<< "$TODO_SERVERS"
for s in "${SERVERS[@]}"; do wait_http "$s/readyz" 30; done
TOKEN=$("$BIN/todo-server" token --sub visible)
TODO_TOKEN=$TOKEN "$BIN/todo-visible" --write "${SERVERS[0]}" --watch "$TODO_SERVERS" \
  --rate 500 -d 3s -c "$CONNECTIONS" > /dev/null

for rate in $RATES; do
  log "writing $rate/s for $DURATION through ${SERVERS[0]}; watching every core of ${#SERVERS[@]} servers"
  (
    while :; do
      lag=$(curl -s "$TODO_WORKER_METRICS" | awk '/^todo_worker_consumer_lag\{/ { s += $2; n++ } END { if (n) print s }')
      [ -n "$lag" ] && echo "$(date +%s.%N) $lag"
      sleep 1
    done
  ) > "$DIR/lag-$rate.txt" &
  LAG=$!
  TODO_TOKEN=$TOKEN "$BIN/todo-visible" --write "${SERVERS[0]}" --watch "$TODO_SERVERS" \
    --rate "$rate" -d "$DURATION" -c "$CONNECTIONS" --poll 5ms --records "$DIR/records-$rate.jsonl" \
    > "$DIR/report-$rate.json"
  kill "$LAG"
done

PARTITIONS=$PARTITIONS python3 "$ROOT/bench/visible_report.py" "$DIR" "$ROOT" $RATES | tee "$ROOT/bench/results/visible-latest.md"

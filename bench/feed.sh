#!/usr/bin/env bash
# The change feed (GET /todos/changes, server-sent events) against nginx +
# nchan in the same run, release builds, one machine: SUBSCRIBERS anonymous
# subscribers and one publisher in one client process (todo-feed) on
# CLIENT_CPU, each server on SERVER_CPU.
#
#   ./bench/feed.sh [--subscribers 10000] [--rounds 20] [--rate 10] [--duration 30s]
#                   [--dist-subscribers 1000] [--dist-rounds 100]
#
# Per server: the server's resident memory before the subscribers connect
# and once they are idle (bytes per idle subscriber); ROUNDS writes one at a
# time, each once every subscriber has read the last (per delivery: send ->
# event read; per write: time until the last subscriber has it); then RATE
# writes a second for DURATION on a fixed schedule (open loop). A delivery
# that does not come within the write's deadline is missed and reported.
#   todo-server: one core, the embedded default, POST /todos of a public todo
#                whose title is the round's marker; ready after `retry:`.
#   nchan:       nginx-light + libnginx-mod-nchan, one worker; its publisher
#                is POSTed the event todo-server sent (the same JSON, the
#                same `data:` size, measured in the todo-server run), new
#                subscribers start at the newest message (no replay).
# Then (FEED_DISTRIBUTED=0 skips it; needs tansu, scripts/services.sh
# install) two distributed todo-servers (scripts/services.sh up):
# DIST_SUBSCRIBERS subscribers on server B, DIST_ROUNDS writes on server A;
# for the same writes, write-to-event on B and write-to-visible on B (every
# core's GET /todos?limit=1 until the write is the newest listed).
#
# Prints a table and saves it to bench/results/feed-latest.md.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

SUBSCRIBERS=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-20}
RATE=${RATE:-10}
DURATION=${DURATION:-30s}
DIST_SUBSCRIBERS=${DIST_SUBSCRIBERS:-1000}
DIST_ROUNDS=${DIST_ROUNDS:-100}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
FEED_DISTRIBUTED=${FEED_DISTRIBUTED:-1}
parse_flags "$@"

# The client holds every subscriber's socket, and so does each server.
NEED=$((SUBSCRIBERS + 1000))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$NEED" ]; then
  echo "the hard open-files limit ($(ulimit -Hn)) is below $NEED: fewer --subscribers" >&2
  exit 2
fi
ulimit -n "$NEED"

ensure_apt nginx-light libnginx-mod-nchan curl
NCHAN_SO=$(ls /usr/lib/nginx/modules/ngx_nchan_module.so /usr/share/nginx/modules/ngx_nchan_module.so 2>/dev/null | head -1)
[ -n "$NCHAN_SO" ] || { echo "ngx_nchan_module.so not found (libnginx-mod-nchan)" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
DISTRIBUTED=0
if [ "$FEED_DISTRIBUTED" = 1 ]; then
  if command -v tansu >/dev/null; then
    DISTRIBUTED=1
  else
    echo "(distributed part skipped: no tansu on PATH; scripts/services.sh install builds it)" >&2
  fi
fi
if [ "$DISTRIBUTED" = 1 ]; then
  build_release todo-server todo-bench todo-worker
else
  build_release todo-server todo-bench
fi

# What was built: the commit, and whether the tree outside bench/ differed.
BUILD=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain -- . ':!bench' 2>/dev/null)" ]; then
  BUILD="$BUILD with uncommitted changes"
fi
export BUILD
WORK=$(mktemp -d /tmp/todo-feed.XXXXXX)
PIDS=()
SERVICES=""
cleanup() {
  stop_pids "${PIDS[@]}"
  if [ -n "$SERVICES" ]; then
    "$ROOT/scripts/services.sh" stop "$SERVICES"
    rm -rf "$SERVICES"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# feed NAME ARGS...: one todo-feed run on CLIENT_CPU; its JSON in WORK/NAME.json.
feed() {
  local name=$1; shift
  taskset -c "$CLIENT_CPU" "$BIN/todo-feed" --cpu "$CLIENT_CPU" --json "$@" > "$WORK/$name.json"
}

# --- todo-server, one core ----------------------------------------------------
PORT=$(free_port)
start_server "$PORT" "$WORK/data" --cores 1 --pin false --feed-max $((SUBSCRIBERS * 2))
pin "$SERVER_CPU" "$SERVER_PID"
PIDS+=("$SERVER_PID")
TODO_PID=$SERVER_PID
TOKEN=$("$BIN/todo-server" token --sub feed --data-dir "$WORK/data")
log "todo-server: $SUBSCRIBERS subscribers, $ROUNDS rounds, $RATE/s for $DURATION"
feed todo --peer todo --subscribe "http://127.0.0.1:$PORT/todos/changes" \
  --publish "http://127.0.0.1:$PORT/todos" --token "$TOKEN" \
  -n "$SUBSCRIBERS" --rounds "$ROUNDS" --rate "$RATE" -d "$DURATION" --rss-pid "$TODO_PID"
curl -fs "http://127.0.0.1:$PORT/metrics" | grep '^todo_feed_' > "$WORK/todo.metrics" || true
kill -0 "$TODO_PID" 2>/dev/null || { echo "todo-server exited during the run:" >&2; tail -20 "$WORK/data.log" >&2; exit 1; }
stop_pids "$TODO_PID"
PIDS=()
DATA_BYTES=$(json_field "$(cat "$WORK/todo.json")" data_bytes_max)

# --- nginx + nchan, one worker -------------------------------------------------
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nchan.conf" <<CONF
load_module $NCHAN_SO;
worker_processes 1;
worker_cpu_affinity $(python3 -c "print(format(1 << $SERVER_CPU, 'b'))");
worker_rlimit_nofile $NEED;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections $NEED; multi_accept on; }
http {
  access_log off;
  server_tokens off;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location = /ready { return 200; }
    # New subscribers start at the next message: nothing buffered is
    # replayed to them (todo-server's anonymous stream starts at now too).
    location = /sub {
      nchan_subscriber eventsource;
      nchan_channel_id todos;
      nchan_subscriber_first_message newest;
    }
    location = /pub {
      nchan_publisher;
      nchan_channel_id todos;
      nchan_message_buffer_length 16;
      nchan_message_timeout 60s;
    }
  }
}
CONF
"$NGINX" -c "$WORK/nginx/nchan.conf" -p "$WORK/nginx" -g 'daemon off;' &
NGINX_MASTER=$!
PIDS+=("$NGINX_MASTER")
# An answer means a worker is up (the master listens before it forks one).
wait_http "http://127.0.0.1:$NGINX_PORT/ready"
NGINX_PIDS=$(echo "$NGINX_MASTER" $(pgrep -P "$NGINX_MASTER") | tr ' ' ,)
BODY_ARGS=()
[ "$DATA_BYTES" -gt 0 ] && BODY_ARGS=(--body-bytes "$DATA_BYTES")
log "nginx + nchan: $SUBSCRIBERS subscribers, $ROUNDS rounds, $RATE/s for $DURATION (data: $DATA_BYTES bytes)"
feed nchan --peer nchan --subscribe "http://127.0.0.1:$NGINX_PORT/sub" \
  --publish "http://127.0.0.1:$NGINX_PORT/pub" "${BODY_ARGS[@]}" \
  -n "$SUBSCRIBERS" --rounds "$ROUNDS" --rate "$RATE" -d "$DURATION" --rss-pid "$NGINX_PIDS"
stop_pids "$NGINX_MASTER"
PIDS=()

# --- two distributed todo-servers: write on A, subscribers and lists on B -------
if [ "$DISTRIBUTED" = 1 ]; then
  SERVICES=$("$ROOT/scripts/services.sh" up "" 2)
  # shellcheck source=/dev/null
  . "$SERVICES/env"
  IFS=, read -r -a SERVERS <<< "$TODO_SERVERS"
  for s in "${SERVERS[@]}"; do wait_http "$s/readyz" 30; done
  DIST_TOKEN=$("$BIN/todo-server" token --sub feed)
  log "distributed: $DIST_SUBSCRIBERS subscribers on ${SERVERS[1]}, $DIST_ROUNDS writes through ${SERVERS[0]}"
  feed distributed --peer todo --subscribe "${SERVERS[1]}/todos/changes" \
    --publish "${SERVERS[0]}/todos" --token "$DIST_TOKEN" --visible "${SERVERS[1]}" \
    -n "$DIST_SUBSCRIBERS" --rounds "$DIST_ROUNDS" -d 0s --rss-pid "$(cat "$SERVICES/server-2.pid")"
fi

python3 "$ROOT/bench/feed_report.py" "$WORK" "$SUBSCRIBERS" "$ROUNDS" "$RATE" "$DURATION" \
  | tee "$ROOT/bench/results/feed-latest.md"

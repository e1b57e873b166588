#!/usr/bin/env bash
# Real services for the distributed path, on loopback (or TODO_SERVICES_HOST,
# an address of this host's, as scripts/cluster.sh uses) and free ports:
# PostgreSQL 15 (Debian package, initdb), Redis (Debian package) and a
# Kafka-protocol broker (tansu from crates.io, durable sqlite:// storage).
#
#   scripts/services.sh start [DIR]   # DIR default: a new temporary directory
#   scripts/services.sh up [DIR] [N]  # start, then todo-worker and N todo-servers (default 2)
#   scripts/services.sh stop DIR      # stops whatever start/up started
#   scripts/services.sh install       # packages and the tansu binary only
#
# `start` prints DIR and writes DIR/env, to be sourced:
#   KAFKA_BROKERS=127.0.0.1:P  REDIS_URL=redis://127.0.0.1:P/
#   DATABASE_URL=postgres://postgres@127.0.0.1:P/todo?sslmode=disable
# With KAFKA_BROKERS already set, no broker is started and that one is used.
# Each service's pid is kept in DIR/*.pid; `stop` ends exactly those.
# `up` builds the release binaries, shares one generated JWT_SECRET (in
# DIR/env) and adds TODO_SERVERS=http://127.0.0.1:P,... to DIR/env; mint a
# token with `JWT_SECRET=... target/release/todo-server token --sub NAME`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
TANSU_VERSION=0.6.0

install() {
  local missing=()
  [ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v curl >/dev/null || missing+=(curl)
  ensure_apt "${missing[@]}"
  # Debian starts its own cluster and redis on install; we run our own.
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    return 0
  fi
  if ! command -v tansu >/dev/null || [ "$(tansu --version 2>/dev/null | awk '{print $2}')" != "$TANSU_VERSION" ]; then
    log "building tansu $TANSU_VERSION (about 17 minutes the first time; cached in ~/.cargo/bin)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql,dynostore,postgres >&2
  fi
}

start() {
  local dir=${1:-$(mktemp -d /tmp/todo-services.XXXXXX)}
  local host=${TODO_SERVICES_HOST:-127.0.0.1}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  install

  # PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
  local pg_port; pg_port=$(free_port)
  mkdir -p "$dir/pg"
  chown postgres: "$dir/pg" "$dir"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/pg" -U postgres --auth=trust -E UTF8 >"$dir/pg-init.log"
  # initdb trusts loopback only; on another address, trust its subnet too.
  if [ "$host" != 127.0.0.1 ]; then
    echo "host all all samenet trust" >> "$dir/pg/pg_hba.conf"
  fi
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start \
    -o "-p $pg_port -c listen_addresses=$host -k $dir/pg -c max_connections=200" >/dev/null
  head -1 "$dir/pg/postmaster.pid" > "$dir/postgres.pid"
  runuser -u postgres -- "$PG_BIN/createdb" -h "$host" -p "$pg_port" -U postgres todo

  local redis_port; redis_port=$(free_port)
  mkdir -p "$dir/redis"
  # Protected mode refuses every address but loopback; the address is a
  # test host's own when it is not loopback.
  redis-server --port "$redis_port" --bind "$host" --protected-mode "$([ "$host" = 127.0.0.1 ] && echo yes || echo no)" --dir "$dir/redis" --save '' --appendonly no \
    --daemonize no >"$dir/redis.log" 2>&1 &
  echo $! > "$dir/redis.pid"
  wait_tcp "$host:$redis_port" redis

  local brokers=${KAFKA_BROKERS:-}
  if [ -z "$brokers" ]; then
    local kafka_port; kafka_port=$(free_port)
    mkdir -p "$dir/tansu"
    # The sqlite:// path is relative to the broker's working directory.
    (cd "$dir/tansu" && exec tansu broker \
      --listener-url "tcp://$host:$kafka_port" \
      --advertised-listener-url "tcp://$host:$kafka_port" \
      --storage-engine "sqlite://tansu.db" >"$dir/tansu.log" 2>&1) &
    echo $! > "$dir/tansu.pid"
    wait_tcp "$host:$kafka_port" tansu
    brokers=$host:$kafka_port
  fi

  cat > "$dir/env" <<ENV
export KAFKA_BROKERS=$brokers
export REDIS_URL=redis://$host:$redis_port/
export DATABASE_URL=postgres://postgres@$host:$pg_port/todo?sslmode=disable
export TODO_SERVICES_DIR=$dir
ENV
  echo "$dir"
}

up() {
  local dir n
  dir=$(start "${1:-}")
  n=${2:-2}
  build_release todo-server todo-worker
  # shellcheck source=/dev/null
  . "$dir/env"
  local secret; secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "export JWT_SECRET=$secret" >> "$dir/env"
  export JWT_SECRET=$secret
  local metrics; metrics=$(free_port)
  TODO_WORKER_METRICS_LISTEN=127.0.0.1:$metrics "$BIN/todo-worker" >"$dir/worker.log" 2>&1 &
  echo $! > "$dir/worker.pid"
  echo "export TODO_WORKER_METRICS=http://127.0.0.1:$metrics/metrics" >> "$dir/env"
  local urls=() i port
  for i in $(seq "$n"); do
    port=$(free_port)
    TODO_INSTANCE=$i "$BIN/todo-server" --listen "127.0.0.1:$port" \
      --data-dir "$dir/server-$i" >"$dir/server-$i.log" 2>&1 &
    echo $! > "$dir/server-$i.pid"
    wait_tcp "$port" "todo-server $i"
    urls+=("http://127.0.0.1:$port")
  done
  echo "export TODO_SERVERS=$(IFS=,; echo "${urls[*]}")" >> "$dir/env"
  echo "$dir"
}

stop() {
  local dir=${1:?usage: services.sh stop DIR}
  local name pid
  for f in "$dir"/server-*.pid "$dir"/worker.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  for name in tansu redis postgres; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    if [ "$name" = postgres ] && [ -d "$dir/pg" ]; then
      runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    else
      kill "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid"
  done
}

case "${1:-}" in
  start) start "${2:-}" ;;
  up) up "${2:-}" "${3:-}" ;;
  stop) stop "${2:-}" ;;
  install) install ;;
  *) awk 'NR == 1 { next } /^#/ { print; next } { exit }' "$0"; exit 2 ;;
esac

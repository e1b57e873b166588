#!/usr/bin/env bash
# The product API's queries against PostgreSQL serving the same SQL, and
# against the read hot path, in one run on one machine. Prints a markdown
# table (also saved to bench/results/queries-latest.md).
#
#   ./bench/queries.sh [--duration 10s] [--connections 64] [--seed 100000] [--search-seed 1000000]
#                      [--baseline-bin PATH]
#
# --baseline-bin PATH: also run row 1 (warm at depth 80, and page cache off)
# with the todo-server binary at PATH (another build, e.g. of an earlier
# commit), alternating with this build in two rounds of the same settings,
# after PRIVATE (1000) todos written by the token's user without "public"
# (private ones, where the build knows them), so the first page of mine=true
# is the user's private todos; prints new/baseline rate ratios.
#
# Rows (todo-server embedded, one core on SERVER_CPU; clients on CLIENT_CPU;
# PostgreSQL 15 pinned to SERVER_CPU too, pgbench on CLIENT_CPU):
#  1. GET /todos?mine=true&completed=false&limit=20 with a token (the seed
#     owner's open todos, first page), page cache warm, at depth 1 and 80;
#     and with the page cache off (--page-cache false: computed per request);
#     against pgbench -f of the same query (-M prepared, same connections).
#  2. GET /todos?limit=20, the hot path, depth 80: the ratio row 1 must keep.
#  3. q= search over --search-seed todos (one match, so every todo is read),
#     page cache off: rate and p99 against PostgreSQL's own search of the
#     same words (pg_trgm GIN index on the same text, its best case).
#  4. Page 100 of a walk of --seed todos (sort=created_at, limit=1000) against
#     page 1, page cache off: the cost of a deep page.
#  5. Start-up and memory with --search-seed todos: seconds until listening,
#     resident bytes per todo (against a --seed 0 server).
#
# PostgreSQL gets the same rows the server seeds (owner seed, titles
# "Todo #i", every third completed), loaded with generate_series into the
# schema todo-worker applies (store/schema.sql), then ANALYZEd.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
SEED=${SEED:-100000}
SEARCH_SEED=${SEARCH_SEED:-1000000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASELINE_BIN=${BASELINE_BIN:-}
PRIVATE=${PRIVATE:-1000}
parse_flags "$@"
SECS=${DURATION%s}
if [ -n "$BASELINE_BIN" ] && [ ! -x "$BASELINE_BIN" ]; then
  echo "--baseline-bin $BASELINE_BIN: not an executable file" >&2
  exit 2
fi

ensure_apt postgresql-15 postgresql-client-15 curl
build_release todo-server todo-bench
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
WORK=$(mktemp -d /tmp/todo-queries.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  stop_pids "${PIDS[@]}"
  [ -d "$WORK/pg" ] && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# bench URL DEPTH CONNECTIONS [todo-bench args...]: todo-bench's JSON with
# "server_ticks" added, the CPU ticks SERVER_PID used meanwhile.
bench() {
  local url=$1 depth=$2 c=$3; shift 3
  local out before
  before=$(cpu_ticks "$SERVER_PID")
  out=$("$BIN/todo-bench" "$url" -c "$c" -p "$depth" -d "$DURATION" --cpus "$CLIENT_CPU" --json "$@")
  [ "$(bench_errors "$out")" = 0 ] || { echo "todo-bench counted errors: $out" >&2; exit 1; }
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["server_ticks"]=int(sys.argv[2]); print(json.dumps(r))' \
    "$out" $(( $(cpu_ticks "$SERVER_PID") - before ))
}
# All the CPU PostgreSQL used: the postmaster's and, once they exit and are
# reaped, its backends' (cutime, cstime).
pg_ticks() {
  awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$PG_PID/stat"
}

# --- PostgreSQL with the same rows ------------------------------------------
log "PostgreSQL: $SEARCH_SEED seeded todos"
PG_PORT=$(free_port)
mkdir -p "$WORK/pg" && chown postgres: "$WORK/pg" "$WORK"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 >/dev/null
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK/pg -c max_connections=300 -c shared_buffers=512MB" >/dev/null
PG_PID=$(head -1 "$WORK/pg/postmaster.pid")
pin "$SERVER_CPU" "$PG_PID"
PSQL=(psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1)
runuser -u postgres -- createdb -h 127.0.0.1 -p "$PG_PORT" -U postgres todo
"${PSQL[@]}" -d todo -f "$ROOT/store/schema.sql" >/dev/null
# The seed's rows (todo_model::seed): ids from node 1023, one second apart.
seed_sql() { # TABLE COUNT
  cat <<SQL
INSERT INTO $1 (id, owner, title, description, completed, created_at, updated_at, public)
SELECT ((at - 1735689600000) << 22) | (1023 << 12), 'seed', 'Todo #' || i,
       'Seeded todo number ' || i || ' of $2', (i - 1) % 3 = 0, at, at, true
FROM (SELECT i, (extract(epoch FROM now()) * 1000)::bigint - ($2 - i + 1) * 1000 AS at
      FROM generate_series(1, $2) AS i) s;
SQL
}
seed_sql todos "$SEARCH_SEED" | "${PSQL[@]}" -d todo >/dev/null
"${PSQL[@]}" -d todo -c "CREATE EXTENSION IF NOT EXISTS pg_trgm" \
  -c "CREATE INDEX IF NOT EXISTS todos_text_trgm ON todos USING gin (lower(title || E'\n' || description) gin_trgm_ops)" \
  -c "VACUUM ANALYZE todos" >/dev/null
cat > "$WORK/mine.sql" <<'SQL'
SELECT id, owner, title, description, completed, created_at, updated_at, category_id, public
FROM todos WHERE owner = 'seed' AND completed = false ORDER BY id DESC LIMIT 20;
SQL
# q=number+777777: every word in title or description, case-insensitive.
cat > "$WORK/search.sql" <<'SQL'
SELECT id, owner, title, description, completed, created_at, updated_at, category_id, public
FROM todos
WHERE public
  AND lower(title || E'\n' || description) LIKE '%number%'
  AND lower(title || E'\n' || description) LIKE '%777777%'
ORDER BY id DESC LIMIT 20;
SQL
pgbench_run() { # FILE CONNECTIONS -> "tps p99_ms ticks"
  local file=$1 c=$2 before
  before=$(pg_ticks)
  (cd "$WORK" && rm -f pgbench_log.* && taskset -c "$CLIENT_CPU" pgbench -n -M prepared -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -c "$c" -j 1 -T "$SECS" -f "$file" -l --log-prefix=pgbench_log todo > "$WORK/pgbench.out" 2>&1) || { cat "$WORK/pgbench.out" >&2; exit 1; }
  python3 - "$WORK" <<'PY'
import glob, re, sys
work = sys.argv[1]
out = open(f"{work}/pgbench.out").read()
tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
lat = sorted(int(l.split()[2]) for f in glob.glob(f"{work}/pgbench_log*") for l in open(f))
print(tps, lat[int(len(lat) * 0.99)] / 1000 if lat else 0, end=" ")
PY
  # The backends have exited once pgbench has; wait for their reaping.
  for _ in $(seq 50); do [ "$(pgrep -c -P "$PG_PID")" -le 6 ] && break; sleep 0.1; done
  echo $(( $(pg_ticks) - before ))
}
log "pgbench: the mine/open query, -c $CONNECTIONS"
read -r PG_MINE_TPS PG_MINE_P99 PG_MINE_TICKS < <(pgbench_run mine.sql "$CONNECTIONS")
log "pgbench: the search, -c 4"
read -r PG_SEARCH_TPS PG_SEARCH_P99 PG_SEARCH_TICKS < <(pgbench_run search.sql 4)

# --- todo-server, SEED todos, cache on and off ----------------------------------
serve() { # NAME SEED [flags...]: start on SERVER_CPU, sets URL and SERVER_PID
  local name=$1 seed=$2; shift 2
  local port; port=$(free_port)
  mkdir -p "$WORK/$name"
  start_server "$port" "$WORK/$name" --cores 1 --pin false --seed "$seed" "$@"
  pin "$SERVER_CPU" "$SERVER_PID"
  PIDS+=("$SERVER_PID")
  URL=http://127.0.0.1:$port
}
serve cached "$SEED"
TOKEN=$("$BIN/todo-server" token --sub seed --data-dir "$WORK/cached")
MINE="/todos?mine=true&completed=false&limit=20"
log "todo-server: $MINE, cache warm"
curl -fs -H "Authorization: Bearer $TOKEN" "$URL$MINE" >/dev/null
MINE_1=$(bench "$URL$MINE" 1 "$CONNECTIONS" --token "$TOKEN")
MINE_80=$(bench "$URL$MINE" 80 "$CONNECTIONS" --token "$TOKEN")
log "todo-server: /todos?limit=20, depth 80"
HOT_80=$(bench "$URL/todos?limit=20" 80 "$CONNECTIONS")
stop_pids "$SERVER_PID"

serve uncached "$SEED" --page-cache false
TOKEN=$("$BIN/todo-server" token --sub seed --data-dir "$WORK/uncached")
log "todo-server: $MINE, page cache off"
MINE_COLD_1=$(bench "$URL$MINE" 1 "$CONNECTIONS" --token "$TOKEN")
log "todo-server: page 1 and page 100 of a $SEED-todo walk, page cache off"
PAGE1="/todos?sort=created_at&limit=1000"
PAGE=$PAGE1
for _ in $(seq 99); do
  PAGE=$(curl -fsI "$URL$PAGE" | awk -F'[<>]' 'tolower($1) ~ /^link: / {print $2}')
  [ -n "$PAGE" ] || { echo "the walk ended before page 100" >&2; exit 1; }
done
P1=$(bench "$URL$PAGE1" 1 8)
P100=$(bench "$URL$PAGE" 1 8)
stop_pids "$SERVER_PID"

# --- the mine query against the baseline build ---------------------------------
# private URL TOKEN N: N todos of the token's user, written without "public"
# on one kept-alive connection (private todos, where the build knows them).
private() {
  python3 - "$@" <<'PY'
import http.client, sys, urllib.parse
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlsplit(url)
c = http.client.HTTPConnection(u.hostname, u.port)
for i in range(n):
    c.request("POST", "/todos", body=f'{{"title":"private {i}","description":"mine alone"}}',
              headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 202, r.status
PY
}
AB=()
if [ -n "$BASELINE_BIN" ]; then
  for round in 1 2; do
    for side in new baseline; do
      bin="$BIN/todo-server"
      [ "$side" = baseline ] && bin=$BASELINE_BIN
      for cache in true false; do
        name="ab-$side-$round-$cache"
        port=$(free_port)
        mkdir -p "$WORK/$name"
        start_server --bin "$bin" "$port" "$WORK/$name" --cores 1 --pin false --seed "$SEED" --page-cache "$cache"
        pin "$SERVER_CPU" "$SERVER_PID"
        PIDS+=("$SERVER_PID")
        URL=http://127.0.0.1:$port
        TOKEN=$("$bin" token --sub seed --data-dir "$WORK/$name")
        private "$URL" "$TOKEN" "$PRIVATE"
        depth=80
        [ "$cache" = false ] && depth=1
        log "A/B round $round: $side, $MINE, page cache $cache, depth $depth"
        curl -fs -H "Authorization: Bearer $TOKEN" "$URL$MINE" >/dev/null
        AB+=("$side/$cache=$(bench "$URL$MINE" "$depth" "$CONNECTIONS" --token "$TOKEN")")
        stop_pids "$SERVER_PID"
      done
    done
  done
fi

# --- SEARCH_SEED todos: start-up, memory, search ------------------------------
serve empty 0
EMPTY_RSS=$(rss_bytes "$SERVER_PID")
stop_pids "$SERVER_PID"
log "todo-server: --seed $SEARCH_SEED start-up"
T0=$(date +%s.%N)
serve big "$SEARCH_SEED" --page-cache false
T1=$(date +%s.%N)
BIG_RSS=$(rss_bytes "$SERVER_PID")
# A restart reads the state file instead of seeding.
stop_pids "$SERVER_PID"
T2=$(date +%s.%N)
port=$(free_port)
start_server "$port" "$WORK/big" --cores 1 --pin false --page-cache false
pin "$SERVER_CPU" "$SERVER_PID"
PIDS+=("$SERVER_PID")
T3=$(date +%s.%N)
URL=http://127.0.0.1:$port
log "todo-server: q=number+777777 over $SEARCH_SEED todos"
SEARCH=$(bench "$URL/todos?q=number+777777" 1 4)
MATCHES=$(curl -fs "$URL/todos?q=number+777777" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
stop_pids "$SERVER_PID"

python3 - "$MINE_1" "$MINE_80" "$HOT_80" "$MINE_COLD_1" "$P1" "$P100" "$SEARCH" \
  "$PG_MINE_TPS" "$PG_MINE_P99" "$PG_SEARCH_TPS" "$PG_SEARCH_P99" \
  "$EMPTY_RSS" "$BIG_RSS" "$T0" "$T1" "$T2" "$T3" "$SEED" "$SEARCH_SEED" "$CONNECTIONS" "$MATCHES" \
  "$PG_MINE_TICKS" "$PG_SEARCH_TICKS" "$(getconf CLK_TCK)" "$SECS" \
  <<'PY' | tee "$ROOT/bench/results/queries-latest.md"
import json, sys, datetime
a = sys.argv[1:]
mine1, mine80, hot80, cold1, p1, p100, search = (json.loads(x) for x in a[:7])
pg_mine, pg_mine_p99, pg_search, pg_search_p99 = (float(x) for x in a[7:11])
empty_rss, big_rss = int(a[11]), int(a[12])
t0, t1, t2, t3 = (float(x) for x in a[13:17])
seed, search_seed, conns, matches = a[17], a[18], a[19], a[20]
pg_mine_ticks, pg_search_ticks, tick, secs = int(a[21]), int(a[22]), int(a[23]), float(a[24])
rate = lambda r: r["requests_per_sec"]
p99 = lambda r: r["latency"]["p99_us"] / 1000
# Server CPU per answer, microseconds.
cpu = lambda r: r["server_ticks"] / tick / r["responses"] * 1e6
pg_mine_cpu = pg_mine_ticks / tick / (pg_mine * secs) * 1e6
pg_search_cpu = pg_search_ticks / tick / (pg_search * secs) * 1e6
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. todo-server (embedded, 1 core) and PostgreSQL 15 share one CPU; todo-bench and pgbench share the other.\n")
print("| query | rate/s | p99 ms | server CPU µs/answer | ratio |")
print("|---|---:|---:|---:|---|")
print(f"| PostgreSQL (pgbench -M prepared -c {conns}): owner, completed, id DESC LIMIT 20 | {pg_mine:,.0f} | {pg_mine_p99:.2f} | {pg_mine_cpu:.1f} | 1.00 |")
print(f"| todo-server mine=true&completed=false&limit=20, warm, depth 1, -c {conns} | {rate(mine1):,.0f} | {p99(mine1):.2f} | {cpu(mine1):.1f} | {rate(mine1)/pg_mine:.1f}x PostgreSQL's rate |")
print(f"| same, page cache off (computed per request), depth 1 | {rate(cold1):,.0f} | {p99(cold1):.2f} | {cpu(cold1):.1f} | {rate(cold1)/pg_mine:.1f}x PostgreSQL's rate |")
print(f"| same, warm, depth 80 | {rate(mine80):,.0f} | {p99(mine80):.2f} | {cpu(mine80):.2f} | {rate(mine80)/pg_mine:.1f}x PostgreSQL's rate, {pg_mine_cpu/cpu(mine80):.0f}x less CPU per answer; {rate(mine80)/rate(hot80):.2f}x the hot path's rate |")
print(f"| hot path /todos?limit=20, depth 80 | {rate(hot80):,.0f} | {p99(hot80):.2f} | {cpu(hot80):.2f} | 1.00 |")
print(f"| PostgreSQL search (pg_trgm GIN), -c 4, {search_seed} todos | {pg_search:,.0f} | {pg_search_p99:.2f} | {pg_search_cpu:.0f} | 1.00 |")
print(f"| todo-server q=number+777777, -c 4, {search_seed} todos ({matches} match) | {rate(search):,.0f} | {p99(search):.2f} | {cpu(search):.0f} | {rate(search)/pg_search:.2f}x PostgreSQL's rate |")
print(f"| page 1 of a {seed}-todo walk (limit=1000, cache off) | {rate(p1):,.0f} | {p99(p1):.2f} | {cpu(p1):.0f} | 1.00 |")
print(f"| page 100 of the walk | {rate(p100):,.0f} | {p99(p100):.2f} | {cpu(p100):.0f} | costs {rate(p1)/rate(p100):.2f}x page 1 (rate), {cpu(p100)/cpu(p1):.2f}x (CPU) |")
per_todo = (big_rss - empty_rss) / int(search_seed)
print(f"\nWith {search_seed} todos: first start (seeding, writing the state file) {t1-t0:.1f} s, restart (reading it) {t3-t2:.1f} s, resident memory {big_rss/2**20:,.0f} MiB, {per_todo:.0f} bytes per todo (against {empty_rss/2**20:.0f} MiB empty).")
PY
if [ "${#AB[@]}" -gt 0 ]; then
  python3 - "$BASELINE_BIN" "$PRIVATE" "${AB[@]}" <<'PY' | tee -a "$ROOT/bench/results/queries-latest.md"
import json, sys
from collections import defaultdict
runs = defaultdict(list)
for arg in sys.argv[3:]:
    key, _, value = arg.partition("=")
    runs[key].append(json.loads(value)["requests_per_sec"])
print(f"\nmine=true&completed=false&limit=20 after {sys.argv[2]} todos written without \"public\", this build against {sys.argv[1]}, alternating, two rounds each:\n")
print("| page cache | this build rate/s | baseline rate/s | ratio |")
print("|---|---:|---:|---:|")
for cache, label in (("true", "on, depth 80"), ("false", "off, depth 1")):
    new, base = runs[f"new/{cache}"], runs[f"baseline/{cache}"]
    n, b = sum(new) / len(new), sum(base) / len(base)
    print(f"| {label} | {n:,.0f} ({', '.join(f'{x:,.0f}' for x in new)}) | {b:,.0f} ({', '.join(f'{x:,.0f}' for x in base)}) | {n / b:.2f} |")
PY
fi


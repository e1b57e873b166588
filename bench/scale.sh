#!/usr/bin/env bash
# How the rates grow with hosts, in one run, over scripts/cluster.sh's test
# hosts (network namespaces; needs root):
# - reads: GET /todos?limit=1 from the client host through one todo-lb host
#   in front of 1, 2 and 3 server hosts; the peer is the client straight to
#   one server, no balancer;
# - writes: a backlog of accepted writes applied by 1, 2 and 3 worker hosts,
#   each step with a backlog of its own; the peer is one worker.
#
# The CPU each process used in each step comes from /proc/PID/stat, so the
# table shows the cost per request as well as the rate. On a machine with
# few CPUs the hosts share them: the server and worker hosts are pinned to
# SERVER_CPUS, the balancer and the client to FRONT_CPUS (default, on two
# CPUs: 1 and 0). The total the servers can use is then the same however
# many there are, so read the shape of the curve and the CPU per request,
# not a growth the machine cannot give.
#
#   ./bench/scale.sh [--duration 10s] [--connections 256] [--pipelining 16]
#                    [--backlog 150000] [--server-cpus 1] [--front-cpus 0]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-256}
PIPELINING=${PIPELINING:-16}
BACKLOG=${BACKLOG:-150000}
LAST_CPU=$(($(nproc) - 1))
SERVER_CPUS=${SERVER_CPUS:-$LAST_CPU}
FRONT_CPUS=${FRONT_CPUS:-0}
parse_flags "$@"

CLUSTER="$ROOT/scripts/cluster.sh"
"$CLUSTER" check || { echo "bench/scale.sh needs test hosts (see above)" >&2; exit 1; }
build_release todo-server todo-worker todo-lb todo-bench
export TODO_CLUSTER_DIR=${TODO_CLUSTER_DIR:-/tmp/todo-cluster-scale}
export TODO_CLUSTER_BIN=$BIN
export TODO_CLUSTER_CPUS_SERVER=$SERVER_CPUS TODO_CLUSTER_CPUS_WORKER=$SERVER_CPUS
export TODO_CLUSTER_CPUS_LB=$FRONT_CPUS
"$CLUSTER" up --servers 3 --workers 3 >&2
trap '"$CLUSTER" down' EXIT
# shellcheck source=/dev/null
. "$TODO_CLUSTER_DIR/env"
IFS=, read -r -a SERVERS <<< "$CLUSTER_SERVERS"
client() { "$CLUSTER" exec client "$@"; }
# pids_of HOST: the processes running on HOST.
pids_of() { ip netns pids "todo-$1"; }
# psql_count QUERY: one number from PostgreSQL, asked from the client host.
psql_count() { client psql -qtA "$DATABASE_URL" -c "$1"; }

ROWS=()
# measure NAME URL LB_PID SERVER_PID...: todo-bench from the client for
# DURATION; adds a row "name|rate|p99|server ticks|balancer ticks|seconds|errors"
# (LB_PID - for none).
measure() {
  local name=$1 url=$2 lb=$3; shift 3
  local before after lb_before=0 lb_after=0 out
  before=$(cpu_ticks "$@")
  [ "$lb" = - ] || lb_before=$(cpu_ticks "$lb")
  out=$(client taskset -c "$FRONT_CPUS" "$BIN/todo-bench" "$url" -c "$CONNECTIONS" -p "$PIPELINING" \
    -d "$DURATION" --cpus "${FRONT_CPUS%%[,-]*}" --json)
  after=$(cpu_ticks "$@")
  [ "$lb" = - ] || lb_after=$(cpu_ticks "$lb")
  ROWS+=("$name|$(json_field "$out" requests_per_sec)|$(json_field "$out" latency.p99_us)|$((after - before))|$((lb_after - lb_before))|$(json_field "$out" seconds)|$(bench_errors "$out")")
}

log "reads: straight to one server (the peer)"
measure "1 server, no balancer" "http://${SERVERS[0]}/todos?limit=1" - $(pids_of srv1)
LB_IP=${CLUSTER_LBS%%:*}
for k in 1 2 3; do
  ups=()
  for i in $(seq "$k"); do ups+=(--upstream "${SERVERS[$((i - 1))]}"); done
  port=$((8100 + k))
  # ip netns exec and taskset exec the balancer: $! is its pid.
  ip netns exec todo-lb1 taskset -c "$FRONT_CPUS" "$BIN/todo-lb" --listen "$LB_IP:$port" "${ups[@]}" \
    --cores 1 >"$TODO_CLUSTER_DIR/scale-lb-$k.log" 2>&1 &
  lb_pid=$!
  for _ in $(seq 100); do client curl -fs -o /dev/null "http://$LB_IP:$port/readyz" && break; sleep 0.1; done
  server_pids=()
  for i in $(seq "$k"); do server_pids+=($(pids_of "srv$i")); done
  log "reads: todo-lb in front of $k server(s)"
  measure "$k server(s) behind todo-lb" "http://$LB_IP:$port/todos?limit=1" "$lb_pid" "${server_pids[@]}"
  kill "$lb_pid"
  wait "$lb_pid" 2>/dev/null || true
done

# Writes. All workers stop; a backlog is accepted with none running; then k
# workers start and the time until PostgreSQL holds every command is taken.
stop_workers() {
  local i
  for i in 1 2 3; do "$CLUSTER" kill "wrk$i" TERM || true; done
  for i in 1 2 3; do
    for _ in $(seq 300); do [ -z "$(pids_of "wrk$i")" ] && break; sleep 0.1; done
  done
}
# broker_pid: the broker's process.
broker_pid() { cat "$TODO_CLUSTER_DIR/svc/tansu.pid"; }
# postgres_ticks: "PID TICKS" for every PostgreSQL process (backends come
# and go: a step counts what each used, new ones from zero).
postgres_ticks() {
  local pid
  for pid in $(pids_of svc); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || continue
    echo "$pid $(cpu_ticks "$pid" 2>/dev/null || echo 0)"
  done
}
TOKEN=$(JWT_SECRET=$JWT_SECRET "$BIN/todo-server" token --sub scale)
WROWS=()
for k in 1 2 3; do
  stop_workers
  base=$(psql_count "SELECT count(*) FROM processed_commands")
  since=$(psql_count "SELECT coalesce(max(processed_at), 'epoch') FROM processed_commands")
  log "writes: a backlog of $BACKLOG with no worker running"
  out=$(client env TODO_TOKEN="$TOKEN" "$BIN/todo-bench" "http://${SERVERS[0]}/todos" --mix "1:POST /todos" \
    -c 64 -p 32 -n "$BACKLOG" --json)
  accepted=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["responses"])' "$out")
  log "writes: $k worker(s) apply $accepted commands"
  start=$(date +%s.%N)
  worker_pids=()
  for i in $(seq "$k"); do "$CLUSTER" start "wrk$i" >/dev/null; worker_pids+=($(pids_of "wrk$i")); done
  before=$(cpu_ticks "${worker_pids[@]}")
  broker_before=$(cpu_ticks $(broker_pid))
  pg_before=$(postgres_ticks | tr "\n" " ")
  done_at=0
  for _ in $(seq 6000); do
    now=$(psql_count "SELECT count(*) FROM processed_commands")
    if [ "$((now - base))" -ge "$accepted" ]; then done_at=$(date +%s.%N); break; fi
    sleep 0.1
  done
  [ "$done_at" != 0 ] || { echo "the backlog was not applied within 10 minutes" >&2; exit 1; }
  after=$(cpu_ticks "${worker_pids[@]}")
  broker_after=$(cpu_ticks $(broker_pid))
  # From the first transaction to the last: the rate once applying began
  # (the workers' start and the group's forming left out).
  span=$(psql_count "SELECT extract(epoch FROM max(processed_at) - min(processed_at)) FROM processed_commands WHERE processed_at > '$since'")
  pg_used=$(postgres_ticks | awk -v before="$pg_before" '
    BEGIN { n = split(before, b, " "); for (i = 1; i < n; i += 2) start[b[i]] = b[i + 1] }
    { used += $2 - ($1 in start ? start[$1] : 0) } END { print used + 0 }')
  WROWS+=("$k|$accepted|$(python3 -c "print($done_at - $start)")|$span|$((after - before))|$pg_used|$((broker_after - broker_before))|$((now - base))")
done

HZ=$(getconf CLK_TCK)
python3 - "$HZ" "$SERVER_CPUS" "$FRONT_CPUS" "${ROWS[@]}" -- "${WROWS[@]}" <<'PY' | tee "$ROOT/bench/results/scale-latest.md"
import sys, datetime
hz = int(sys.argv[1]); server_cpus, front_cpus = sys.argv[2], sys.argv[3]
args = sys.argv[4:]
sep = args.index("--")
reads, writes = args[:sep], args[sep + 1:]
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC over scripts/cluster.sh test hosts; "
      f"server and worker hosts on CPU {server_cpus}, balancer and client on CPU {front_cpus}.\n")
print("#### Reads (GET /todos?limit=1, pipelined)\n")
print("| path | req/s | vs no balancer | p99 | servers' CPU per request | balancer's CPU per request | errors |")
print("|---|---:|---:|---:|---:|---:|---:|")
peer = None
for row in reads:
    name, rate, p99, sticks, lticks, secs, errors = row.split("|")
    rate = float(rate)
    peer = peer or rate
    n = rate * float(secs)
    lb = f"{int(lticks) / hz / n * 1e9:,.0f} ns" if int(lticks) else "-"
    print(f"| {name} | {rate:,.0f} | {rate / peer:.2f} | {int(p99) / 1000:.1f} ms | {int(sticks) / hz / n * 1e9:,.0f} ns | {lb} | {errors} |")
print("\n#### Writes (a backlog applied by k workers)\n")
print("| workers | commands | start to done | applying | commands/s applying | vs one worker | CPU per command: workers | PostgreSQL | broker | applied |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
base = None
for row in writes:
    k, accepted, secs, span, wticks, pticks, bticks, applied = row.split("|")
    accepted, secs, span = int(accepted), float(secs), float(span)
    rate = accepted / span
    base = base or rate
    verdict = "exactly once" if int(applied) == accepted else f"MISMATCH ({applied})"
    us = lambda t: f"{int(t) / hz / accepted * 1e6:.1f} µs"
    print(f"| {k} | {accepted:,} | {secs:.1f} s | {span:.1f} s | {rate:,.0f} | {rate / base:.2f} | "
          f"{us(wticks)} | {us(pticks)} | {us(bticks)} | {verdict} |")
PY

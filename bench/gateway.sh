#!/usr/bin/env bash
# todo-lb in front of three todo-servers (embedded default, one core each),
# in two sections of one run: the balancing policies with one slow upstream,
# and TLS termination against plain HTTP and against nginx.
#
# Policies: one of the servers stalled as a noisy neighbour stalls a process
# (SIGSTOP for 15 ms of every 20 ms), and todo-lb (one core) in front with
# each --balance in turn. The client sends GET /todos?limit=1 at a fixed
# open-loop rate, so a stall shows as latency, measured from when each
# request was due; p99 and the share of requests that reached the stalled
# server are compared with round-robin's.
#
# `hash` is keyed by the client's address here, and every request comes from
# one client: it sends everything to one server, whichever the hash names.
# Its row shows what a hash that ignores latency does, nothing more.
#
# With --baseline-lb PATH (another todo-lb build, e.g. from before a change):
# then, with no server stalled, the plain path A/B: this todo-lb with every
# new feature off (--balance least-conn) against PATH, pipelined (-c 200
# -p 80), alternating, three rounds each; req/s and the balancer's CPU per
# request.
#
# TLS (run first, no server stalled): a self-signed EC P-256 certificate made
# with openssl in the temp dir, served by todo-lb (one core, --balance
# least-conn, --listen and --listen-tls in one process) and by nginx with the
# SAME certificate in front of the SAME three servers (nginx_conf of
# scripts/lib.sh, the reference balancer of compare.sh and topology.sh:
# worker_processes 1 as todo-lb has one core, least_conn through an upstream
# keep-alive pool; TLS 1.3 and 1.2, tickets and a shared session cache, as
# todo-lb has). curl checks each TLS port against that certificate first.
#   1. Keep-alive req/s at depth 80: wrk, one thread, --tls-connections (200)
#      connections, bench/pipeline.lua writing 80 GET /todos?limit=1 at a
#      time on each: todo-lb plain and todo-lb TLS alternating for
#      --tls-rounds (3) rounds (the figure is the median of the rounds'
#      TLS/plain ratios: one row each swung 0.65-0.74x between runs on this
#      shared VM), then nginx TLS, and nginx plain (a second nginx, the same
#      config without TLS) for context; req/s and the balancer's CPU per
#      request (utime+stime from /proc, all its processes). Targets: todo-lb
#      TLS >= 0.7x todo-lb plain, >= 10x nginx TLS.
#   2. New TLS connections per second: `openssl s_time` for the duration
#      (whole seconds), todo-lb then nginx, per row: full handshakes (-new;
#      TLS 1.3 as negotiated here: X25519, ECDSA P-256, AES-256-GCM) and
#      resumed ones (-reuse -tls1_2: a TLS 1.2 session ticket; s_time closes
#      a TLS 1.3 connection before the server's tickets, sent after the
#      handshake, reach it, so it never resumes TLS 1.3 on its own); then
#      both over TLS 1.3 with one GET /todos?limit=1 each (-www, HTTP/1.0,
#      the answer read to its end, which reads the ticket too: TLS 1.3
#      resumption, a PSK with a fresh X25519 exchange). Rate = connections /
#      wall time of the s_time process; resumed = the connections s_time
#      marks `r` (SSL_session_reused), shown so a resumed row that did not
#      resume is seen; the balancer's CPU per connection.
#
# Edge (--only edge; no server stalled), to bench/results/gateway-edge-latest.md:
#   1. The latency todo-lb adds: GET /todos?limit=1 to the first server, one
#      request at a time per connection. The direct maximum, closed loop;
#      then open loop at half of it and at a quarter (todo-bench --rate,
#      latency measured from when each request was due), direct and through
#      todo-lb (one core, that server alone behind it). Target: p99 added
#      <= 1 ms at half. todo-lb shares CPU 0 with the client here; one
#      request per batch costs it two wake-ups, which this VM makes dear.
#   2. The edge micro-cache off and on: todo-lb before the three servers,
#      one hot key (GET /todos?limit=10, public, max-age=1), 16 deep, closed
#      loop, alternating, two rounds: client req/s and the requests that
#      reached the servers per second (their own counters).
#
# CPUs (every section): the three servers share the last CPU; the balancer
# (todo-lb, or nginx's worker) and the client (todo-bench, wrk or s_time)
# share the first. The client's own TLS work (wrk decrypting every answer,
# s_time's half of each handshake) is paid on the balancer's CPU, so the
# req/s and handshakes/s ratios are those of balancer + client; the
# balancer's CPU per request or per connection compares the balancers
# alone.
#
#   ./bench/gateway.sh [--only policies|tls|edge] [--duration 10s] [--rate 20000]
#                      [--connections 64] [--baseline-lb PATH]
#                      [--tls-connections 200] [--tls-rounds 3]
#
# Results: the TLS section to bench/results/gateway-tls-latest.md, the
# policies (and the A/B) to bench/results/gateway-latest.md; both on stdout.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-10s}
RATE=${RATE:-20000}
CONNECTIONS=${CONNECTIONS:-64}
BASELINE_LB=${BASELINE_LB:-}
ONLY=${ONLY:-}
TLS_CONNECTIONS=${TLS_CONNECTIONS:-200}
TLS_ROUNDS=${TLS_ROUNDS:-3}
parse_flags "$@"
case $ONLY in
  "") POLICIES=1 TLS=1 EDGE=1 ;;
  policies) POLICIES=1 TLS=0 EDGE=0 ;;
  tls) POLICIES=0 TLS=1 EDGE=0 ;;
  edge) POLICIES=0 TLS=0 EDGE=1 ;;
  *) echo "--only $ONLY: policies, tls or edge" >&2; exit 2 ;;
esac
if [ -n "$BASELINE_LB" ] && [ "$POLICIES" = 0 ]; then
  echo "--baseline-lb belongs to the policies section, not to --only $ONLY" >&2
  exit 2
fi
# Whole seconds, for wrk and s_time.
DURATION_S=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)(ms|s|m)?', sys.argv[1]); v=int(m[1]); u=m[2] or 's'; print(max(1, v//1000 if u=='ms' else v*60 if u=='m' else v))" "$DURATION")

[ "$TLS" = 0 ] || ensure_apt wrk nginx-light openssl curl
build_release todo-server todo-lb todo-bench
DIR=$(mktemp -d /tmp/todo-gateway.XXXXXX)
PIDS=()
STALLER=
SLOW_PID=
cleanup() {
  # The staller first, then wake the stalled server: a stopped process
  # would never act on the SIGTERM below.
  [ -z "$STALLER" ] || stop_pids "$STALLER"
  [ -z "$SLOW_PID" ] || kill -CONT "$SLOW_PID" 2>/dev/null || true
  stop_pids "${PIDS[@]}"
  rm -rf "$DIR"
}
trap cleanup EXIT
LAST_CPU=$(($(nproc) - 1))

# The three servers share the last CPU; the balancer and the client the first.
PORTS=()
SERVER_PIDS=()
for i in 1 2 3; do
  port=$(free_port)
  mkdir -p "$DIR/s$i"
  start_server "$port" "$DIR/s$i" --cores 1 --pin false --instance "$i"
  pin "$LAST_CPU" "$SERVER_PID"
  PIDS+=("$SERVER_PID")
  SERVER_PIDS+=("$SERVER_PID")
  PORTS+=("$port")
done
SLOW_PID=${SERVER_PIDS[2]}

# served PORT: list requests the server at PORT has answered.
served() {
  curl -fs "http://127.0.0.1:$1/metrics" |
    awk '/^todo_requests_total\{route="todos_list",status="200"\}/ {n += $2} END {print n + 0}'
}

# ----- TLS: todo-lb plain and TLS, nginx TLS, the same servers ------------------
if [ "$TLS" = 1 ]; then
  TLS_START=$(date -u '+%Y-%m-%d %H:%M')
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  CERT=$DIR/cert.pem
  KEY=$DIR/key.pem
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$KEY" -out "$CERT" -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
  ups=()
  targets=()
  for p in "${PORTS[@]}"; do ups+=(--upstream "127.0.0.1:$p"); targets+=("127.0.0.1:$p"); done

  LB_PLAIN=$(free_port)
  LB_TLS=$(free_port)
  "$BIN/todo-lb" --listen "127.0.0.1:$LB_PLAIN" --listen-tls "127.0.0.1:$LB_TLS" \
    --tls-cert "$CERT" --tls-key "$KEY" "${ups[@]}" --cores 1 --pin false \
    --balance least-conn 2>"$DIR/lb-tls.log" &
  TLS_LB=$!
  PIDS+=("$TLS_LB")
  wait_http "http://127.0.0.1:$LB_PLAIN/readyz"
  pin 0 "$TLS_LB"
  # The same build with the plain path's allocator setting (every
  # allocation of 2 KiB or more on pages of its own): what the TLS default
  # of --mmap-threshold 0 buys.
  LB_TLS_2K=$(free_port)
  "$BIN/todo-lb" --listen "127.0.0.1:$(free_port)" --listen-tls "127.0.0.1:$LB_TLS_2K" \
    --tls-cert "$CERT" --tls-key "$KEY" "${ups[@]}" --cores 1 --pin false \
    --balance least-conn --mmap-threshold 2048 2>"$DIR/lb-tls-2k.log" &
  TLS_LB_2K=$!
  PIDS+=("$TLS_LB_2K")
  wait_tcp "$LB_TLS_2K" "todo-lb (TLS, --mmap-threshold 2048)"
  pin 0 "$TLS_LB_2K"

  # nginx: one TLS and one plain, each one worker on CPU 0.
  NG_TLS=$(free_port)
  NG_PLAIN=$(free_port)
  mkdir -p "$DIR/nginx"
  nginx_conf "$DIR/nginx" tls "$NG_TLS" 0 tls-proxy "$CERT" "$KEY" "${targets[@]}"
  nginx_conf "$DIR/nginx" plain "$NG_PLAIN" 0 proxy "${targets[@]}"
  "$NGINX" -c "$DIR/nginx/tls.conf" -p "$DIR/nginx" -g 'daemon off;' 2>>"$DIR/nginx/stderr" &
  NG_TLS_MASTER=$!
  PIDS+=("$NG_TLS_MASTER")
  "$NGINX" -c "$DIR/nginx/plain.conf" -p "$DIR/nginx" -g 'daemon off;' 2>>"$DIR/nginx/stderr" &
  NG_PLAIN_MASTER=$!
  PIDS+=("$NG_PLAIN_MASTER")
  wait_tcp "$NG_TLS" "nginx (TLS)"
  wait_http "http://127.0.0.1:$NG_PLAIN/todos?limit=1"
  NG_TLS_PIDS=("$NG_TLS_MASTER" $(pgrep -P "$NG_TLS_MASTER"))
  NG_PLAIN_PIDS=("$NG_PLAIN_MASTER" $(pgrep -P "$NG_PLAIN_MASTER"))
  for p in "${NG_TLS_PIDS[@]}" "${NG_PLAIN_PIDS[@]}"; do pin 0 "$p"; done

  # Both TLS ports answer 200 with the certificate made above (curl verifies
  # the chain against it: a port serving another one fails here); what each
  # negotiates with an OpenSSL client.
  NEGOTIATED=()
  for p in "$LB_TLS" "$NG_TLS"; do
    curl -fs --cacert "$CERT" -o /dev/null "https://127.0.0.1:$p/todos?limit=1" ||
      { echo "no 200 over TLS on 127.0.0.1:$p with $CERT" >&2; exit 1; }
    NEGOTIATED+=("$(openssl s_client -connect "127.0.0.1:$p" </dev/null 2>/dev/null |
      awk '/^New,/ {v = $2 " " $5} /^Server Temp Key/ {k = $4} /^Peer signature type/ {s = $4}
           END {sub(/,$/, "", v); sub(/,$/, "", k); print v ", " k ", " s}')")
  done

  TLS_ROWS=()
  # wrk_row NAME URL PID...: wrk, one thread on CPU 0, 80 requests per write;
  # appends req/s, responses, the PIDs' CPU ticks and wrk's error count.
  wrk_row() {
    local name=$1 url=$2; shift 2
    local before after out
    log "TLS section: wrk, $name, -c $TLS_CONNECTIONS, 80 per write, ${DURATION_S}s"
    before=$(cpu_ticks "$@")
    out=$(taskset -c 0 wrk -t1 -c "$TLS_CONNECTIONS" -d "${DURATION_S}s" -s "$ROOT/bench/pipeline.lua" "$url" -- 80)
    after=$(cpu_ticks "$@")
    TLS_ROWS+=("wrk|$name|$(awk '/Requests\/sec/ {print $2}' <<<"$out")|$(awk '/requests in/ {print $1}' <<<"$out")|$((after - before))|$(awk '
      /Non-2xx/ {e += $NF}
      /Socket errors/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10}
      END {print e + 0}' <<<"$out")")
  }
  for _ in $(seq "$TLS_ROUNDS"); do
    wrk_row "todo-lb plain" "http://127.0.0.1:$LB_PLAIN/todos?limit=1" "$TLS_LB"
    wrk_row "todo-lb TLS" "https://127.0.0.1:$LB_TLS/todos?limit=1" "$TLS_LB"
  done
  wrk_row "todo-lb TLS, --mmap-threshold 2048" "https://127.0.0.1:$LB_TLS_2K/todos?limit=1" "$TLS_LB_2K"
  wrk_row "nginx TLS" "https://127.0.0.1:$NG_TLS/todos?limit=1" "${NG_TLS_PIDS[@]}"
  wrk_row "nginx plain" "http://127.0.0.1:$NG_PLAIN/todos?limit=1" "${NG_PLAIN_PIDS[@]}"

  # stime_row NAME PORT MODE PID...: openssl s_time on CPU 0 for DURATION_S;
  # appends connections, wall seconds, those resumed and the PIDs' CPU ticks.
  stime_row() {
    local name=$1 port=$2 mode=$3; shift 3
    local args before after t0 t1 out
    case $mode in
      full) args=(-new) ;;
      resumed) args=(-reuse -tls1_2) ;;
      full-get) args=(-new -www '/todos?limit=1') ;;
      resumed-get) args=(-reuse -www '/todos?limit=1') ;;
    esac
    log "TLS section: openssl s_time ${args[*]}, $name, ${DURATION_S}s"
    before=$(cpu_ticks "$@")
    t0=$(date +%s.%N)
    out=$(taskset -c 0 openssl s_time -connect "127.0.0.1:$port" "${args[@]}" -time "$DURATION_S" 2>&1) ||
      { echo "$out" | tail -5 >&2; exit 1; }
    t1=$(date +%s.%N)
    after=$(cpu_ticks "$@")
    TLS_ROWS+=("hs|$name|$mode|$(awk '/connections in .* real seconds/ {print $1}' <<<"$out")|$(python3 -c "print($t1 - $t0)")|$(awk '/^[rt123*]+$/ {n += gsub(/r/, "")} END {print n + 0}' <<<"$out")|$((after - before))")
  }
  for mode in full resumed full-get resumed-get; do
    stime_row todo-lb "$LB_TLS" "$mode" "$TLS_LB"
    stime_row nginx "$NG_TLS" "$mode" "${NG_TLS_PIDS[@]}"
  done
  stop_pids "$TLS_LB" "$TLS_LB_2K" "$NG_TLS_MASTER" "$NG_PLAIN_MASTER"

  python3 - "$TLS_START" "$DURATION_S" "$TLS_CONNECTIONS" "$(getconf CLK_TCK)" "$("$NGINX" -v 2>&1 | sed 's/.*version: //')" \
    "$(openssl version | awk '{print $1 " " $2}')" "${NEGOTIATED[@]}" "${TLS_ROWS[@]}" <<'PY' | tee "$ROOT/bench/results/gateway-tls-latest.md"
import sys, datetime, os, platform
start, secs, conns, hz, nginx, ossl, neg_lb, neg_ng = sys.argv[1:9]
rows = [r.split("|") for r in sys.argv[9:]]
hz = int(hz)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Run {start}-{datetime.datetime.utcnow():%H:%M} UTC on {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}; "
      f"{nginx}, clients of {ossl}. Three todo-servers (one core each, none stalled) share the last CPU; "
      f"the balancer (todo-lb one core, --balance least-conn; nginx one worker, least_conn, upstream keep-alive) "
      f"and the client share CPU 0; the same self-signed EC P-256 certificate on both. "
      f"Negotiated with an OpenSSL client: todo-lb {neg_lb}; nginx {neg_ng}.\n")
import statistics
# name -> its rounds in order: (req/s, responses, CPU ticks, errors)
wrk = {}
for r in rows:
    if r[0] == "wrk":
        wrk.setdefault(r[1], []).append((float(r[2]), int(r[3]), int(r[4]), int(r[5])))
rounds = len(wrk["todo-lb TLS"])
print(f"Keep-alive, GET /todos?limit=1: wrk -t1 -c {conns}, 80 requests per write (bench/pipeline.lua), {secs} s per row; "
      f"todo-lb plain and TLS alternating, {rounds} rounds (req/s their median, CPU over all rounds):\n")
print("| balancer | req/s | balancer CPU/request | vs todo-lb plain | vs nginx TLS | errors |")
print("|---|---:|---:|---:|---:|---:|")
med = lambda name: statistics.median(x[0] for x in wrk[name])
plain, ngx = med("todo-lb plain"), med("nginx TLS")
for name, runs in wrk.items():
    rps = med(name)
    ns = sum(x[2] for x in runs) / hz / max(sum(x[1] for x in runs), 1) * 1e9
    errors = sum(x[3] for x in runs)
    print(f"| {name} | {rps:,.0f} | {ns:,.0f} ns | {rps / plain:.2f}x | {rps / ngx:.2f}x | {errors} |")
ratios = [t[0] / p[0] for p, t in zip(wrk["todo-lb plain"], wrk["todo-lb TLS"])]
ratio = statistics.median(ratios)
tls = med("todo-lb TLS")
met = lambda ok: "met" if ok else "NOT met"
print(f"\nTLS / plain by round: {', '.join(f'{r:.2f}x' for r in ratios)}.")
print(f"\nTargets: todo-lb TLS >= 0.7x todo-lb plain (median of the rounds): {ratio:.2f}x, {met(ratio >= 0.7)}; "
      f">= 10x nginx TLS: {tls / ngx:.2f}x, {met(tls / ngx >= 10)}.")
hs = {(r[1], r[2]): (int(r[3]), float(r[4]), int(r[5]), int(r[6])) for r in rows if r[0] == "hs"}
label = {
    "full": "full, TLS 1.3 (-new)",
    "resumed": "resumed, TLS 1.2 ticket (-reuse -tls1_2)",
    "full-get": "full, TLS 1.3, one GET each (-new -www)",
    "resumed-get": "resumed, TLS 1.3, one GET each (-reuse -www)",
}
print(f"\nNew TLS connections: openssl s_time, {secs} s per cell, one process on CPU 0; "
      "resumed = connections s_time marks reused / all:\n")
print("| connections | todo-lb /s | nginx /s | todo-lb / nginx | resumed todo-lb | resumed nginx | balancer CPU/conn todo-lb | nginx | CPU todo-lb / nginx |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for mode, text in label.items():
    (ln, lw, lr, lt), (nn, nw, nr, nt) = hs[("todo-lb", mode)], hs[("nginx", mode)]
    lc, nc = lt / hz / max(ln, 1) * 1e6, nt / hz / max(nn, 1) * 1e6
    print(f"| {text} | {ln / lw:,.0f} | {nn / nw:,.0f} | {(ln / lw) / (nn / nw):.2f}x | {lr:,}/{ln:,} | {nr:,}/{nn:,} | "
          f"{lc:,.0f} µs | {nc:,.0f} µs | {lc / nc:.2f} |")
PY
fi
# ----- Edge: the latency todo-lb adds, and the micro-cache on and off ------------
if [ "$EDGE" = 1 ]; then
  EDGE_START=$(date -u '+%Y-%m-%d %H:%M')
  EDGE_ROWS=()
  # edge_lb NAME FLAGS...: a todo-lb (one core, CPU 0) on a new port; sets EDGE_PORT, EDGE_PID.
  edge_lb() {
    local name=$1; shift
    EDGE_PORT=$(free_port)
    "$BIN/todo-lb" --listen "127.0.0.1:$EDGE_PORT" --cores 1 --pin false "$@" 2>"$DIR/lb-$name.log" &
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
    pin 0 "$EDGE_PID"
    wait_http "http://127.0.0.1:$EDGE_PORT/readyz"
  }
  # 1. Added latency: the first server alone, direct and behind todo-lb, one
  #    request per connection at a time (no pipelining): first the direct
  #    maximum (closed loop), then both open loop at half of it.
  log "edge: the direct maximum, closed loop, -c $CONNECTIONS"
  out=$("$BIN/todo-bench" "http://127.0.0.1:${PORTS[0]}/todos?limit=1" -c "$CONNECTIONS" -d "$DURATION" --cpus 0 --json)
  DIRECT_MAX=$(json_field "$out" requests_per_sec)
  HALF=$(python3 -c "print(int(float('$DIRECT_MAX') / 2))")
  QUARTER=$(python3 -c "print(int(float('$DIRECT_MAX') / 4))")
  EDGE_ROWS+=("max|direct, closed loop|$DIRECT_MAX|$(json_field "$out" latency.p50_us)|$(json_field "$out" latency.p99_us)|$(bench_errors "$out")")
  edge_lb latency --upstream "127.0.0.1:${PORTS[0]}"
  for rate in "$HALF" "$QUARTER"; do
    for via in direct todo-lb; do
      port=${PORTS[0]}
      [ "$via" = direct ] || port=$EDGE_PORT
      log "edge: $via, open loop at $rate req/s"
      out=$("$BIN/todo-bench" "http://127.0.0.1:$port/todos?limit=1" -c "$CONNECTIONS" --rate "$rate" -d "$DURATION" --cpus 0 --json)
      EDGE_ROWS+=("open|$via|$rate|$(json_field "$out" requests_per_sec)|$(json_field "$out" latency.p50_us)|$(json_field "$out" latency.p99_us)|$(json_field "$out" latency.p999_us)|$(bench_errors "$out")")
    done
  done
  stop_pids "$EDGE_PID"
  # 2. The micro-cache: todo-lb in front of the three servers, one hot key
  #    (GET /todos?limit=10, public, max-age=1), pipelined closed loop;
  #    client req/s and the requests that reached the servers per second.
  ups=()
  for p in "${PORTS[@]}"; do ups+=(--upstream "127.0.0.1:$p"); done
  for round in 1 2; do
    for cache in off on; do
      edge_lb "cache-$cache" "${ups[@]}" --cache "$cache"
      before=0
      for p in "${PORTS[@]}"; do before=$((before + $(served "$p"))); done
      log "edge: --cache $cache, -c $CONNECTIONS -p 16, round $round"
      out=$("$BIN/todo-bench" "http://127.0.0.1:$EDGE_PORT/todos?limit=10" -c "$CONNECTIONS" -p 16 -d "$DURATION" --cpus 0 --json)
      after=0
      for p in "${PORTS[@]}"; do after=$((after + $(served "$p"))); done
      EDGE_ROWS+=("cache|$cache|$round|$(json_field "$out" requests_per_sec)|$(json_field "$out" seconds)|$((after - before))|$(bench_errors "$out")")
      stop_pids "$EDGE_PID"
    done
  done
  python3 - "$EDGE_START" "$DURATION" "$CONNECTIONS" "${EDGE_ROWS[@]}" <<'PY' | tee "$ROOT/bench/results/gateway-edge-latest.md"
import sys, datetime
start, dur, conns = sys.argv[1:4]
rows = [r.split("|") for r in sys.argv[4:]]
print(f"Run {start}-{datetime.datetime.utcnow():%H:%M} UTC. Servers (embedded default, one core each) on the last CPU; "
      f"todo-lb (one core) and todo-bench on CPU 0; {dur} per row.\n")
mx = next(r for r in rows if r[0] == "max")
print(f"Added latency: GET /todos?limit=1 to the first server, {conns} connections, one request at a time each. "
      f"Direct maximum (closed loop): {float(mx[2]):,.0f} req/s; then open loop at half and a quarter of it:\n")
print("| open-loop rate | path | req/s | p50 | p99 | p99.9 | errors |")
print("|---:|---|---:|---:|---:|---:|---:|")
opens = [r for r in rows if r[0] == "open"]
for r in opens:
    print(f"| {int(r[2]):,} | {r[1]} | {float(r[3]):,.0f} | {int(r[4]) / 1000:.2f} ms | {int(r[5]) / 1000:.2f} ms | {int(r[6]) / 1000:.2f} ms | {r[7]} |")
for i, rate in enumerate(sorted({int(r[2]) for r in opens}, reverse=True)):
    d = next(r for r in opens if int(r[2]) == rate and r[1] == "direct")
    l = next(r for r in opens if int(r[2]) == rate and r[1] == "todo-lb")
    added = (int(l[5]) - int(d[5])) / 1000
    which = "half the direct maximum, the target's rate" if i == 0 else "a quarter of it"
    print(f"\nAt {rate:,} req/s ({which}): p99 added by todo-lb {added:+.2f} ms "
          f"(target <= 1 ms: {'met' if added <= 1 else 'NOT met'}).", end="")
print("\n\nThe micro-cache: todo-lb before the three servers, one hot key (GET /todos?limit=10, public, max-age=1), "
      f"{conns} connections, 16 deep, closed loop:\n")
print("| round | --cache | client req/s | vs off | requests reaching the servers /s | errors |")
print("|---:|---|---:|---:|---:|---:|")
caches = [r for r in rows if r[0] == "cache"]
for r in caches:
    off = next(c for c in caches if c[2] == r[2] and c[1] == "off")
    print(f"| {r[2]} | {r[1]} | {float(r[3]):,.0f} | {float(r[3]) / float(off[3]):.2f}x | {int(r[5]) / float(r[4]):,.1f} | {r[6]} |")
PY
fi
[ "$POLICIES" = 1 ] || exit 0

# ----- Policies: one server stalled -----------------------------------------------
# The noisy neighbour: the third server is stopped 15 ms of every 20 ms.
python3 - "$SLOW_PID" <<'PY' &
import os, signal, sys, time
pid = int(sys.argv[1])
while True:
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.015)
    os.kill(pid, signal.SIGCONT)
    time.sleep(0.005)
PY
STALLER=$!

ROWS=()
for balance in round-robin least-conn p2c hash; do
  port=$(free_port)
  ups=()
  for p in "${PORTS[@]}"; do ups+=(--upstream "127.0.0.1:$p"); done
  "$BIN/todo-lb" --listen "127.0.0.1:$port" "${ups[@]}" --cores 1 --pin false \
    --balance "$balance" --health-interval 1s 2>"$DIR/lb-$balance.log" &
  lb=$!
  pin 0 "$lb"
  wait_http "http://127.0.0.1:$port/readyz"
  before=$(served "${PORTS[2]}")
  log "todo-lb --balance $balance: $RATE req/s for $DURATION"
  out=$("$BIN/todo-bench" "http://127.0.0.1:$port/todos?limit=1" -c "$CONNECTIONS" --rate "$RATE" \
    -d "$DURATION" --cpus 0 --json)
  after=$(served "${PORTS[2]}")
  total=$(json_field "$out" responses)
  ROWS+=("$balance|$(json_field "$out" latency.p50_us)|$(json_field "$out" latency.p99_us)|$(json_field "$out" latency.p999_us)|$(json_field "$out" latency.max_us)|$((after - before))|$total|$(bench_errors "$out")")
  stop_pids "$lb"
done

ABROWS=()
if [ -n "$BASELINE_LB" ]; then
  stop_pids "$STALLER"
  STALLER=
  kill -CONT "$SLOW_PID"
  ups=()
  for p in "${PORTS[@]}"; do ups+=(--upstream "127.0.0.1:$p"); done
  for round in 1 2 3; do
    for which in this baseline; do
      port=$(free_port)
      if [ "$which" = this ]; then
        "$BIN/todo-lb" --listen "127.0.0.1:$port" "${ups[@]}" --cores 1 --pin false --balance least-conn 2>/dev/null &
      else
        "$BASELINE_LB" --listen "127.0.0.1:$port" "${ups[@]}" --cores 1 --pin false 2>/dev/null &
      fi
      lb=$!
      pin 0 "$lb"
      wait_http "http://127.0.0.1:$port/readyz"
      log "plain path, $which todo-lb, round $round"
      before=$(cpu_ticks "$lb")
      out=$("$BIN/todo-bench" "http://127.0.0.1:$port/todos?limit=1" -c 200 -p 80 -d "$DURATION" --cpus 0 --json)
      after=$(cpu_ticks "$lb")
      ABROWS+=("$which|$round|$(json_field "$out" requests_per_sec)|$(json_field "$out" seconds)|$((after - before))|$(bench_errors "$out")")
      stop_pids "$lb"
    done
  done
fi

python3 - "$RATE" "$DURATION" "$CONNECTIONS" "$(getconf CLK_TCK)" "${ROWS[@]}" -- "${ABROWS[@]}" <<'PY' | tee "$ROOT/bench/results/gateway-latest.md"
import sys, datetime
rate, duration, conns, hz = sys.argv[1:5]
args = sys.argv[5:]
sep = args.index("--")
rows = [r.split("|") for r in args[:sep]]
ab = [r.split("|") for r in args[sep + 1:]]
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. Three todo-servers (one core each) share the last CPU, "
      f"the third stopped 15 ms of every 20 ms; todo-lb (one core) and todo-bench share CPU 0; "
      f"GET /todos?limit=1 at {int(rate):,}/s open loop, {conns} connections, {duration} per policy.\n")
print("| --balance | p50 | p99 | p99.9 | max | to the stalled server | p99 vs round-robin | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
rr = next(float(r[2]) for r in rows if r[0] == "round-robin")
ms = lambda us: f"{int(us) / 1000:.1f} ms"
for name, p50, p99, p999, mx, slow, total, errors in rows:
    share = int(slow) / max(int(total), 1)
    print(f"| {name} | {ms(p50)} | {ms(p99)} | {ms(p999)} | {ms(mx)} | {share:.1%} | {float(p99) / rr:.2f} | {errors} |")
if ab:
    print("\nThe plain path A/B (no server stalled; this todo-lb with --balance least-conn against the baseline build), "
          "-c 200 -p 80, alternating:\n")
    print("| todo-lb | round | req/s | CPU per request | errors |")
    print("|---|---:|---:|---:|---:|")
    sums = {}
    for which, rnd, rps, secs, ticks, errors in ab:
        n = float(rps) * float(secs)
        ns = int(ticks) / int(hz) / n * 1e9
        sums.setdefault(which, []).append((float(rps), ns))
        print(f"| {which} | {rnd} | {float(rps):,.0f} | {ns:,.0f} ns | {errors} |")
    t, b = sums["this"], sums["baseline"]
    mean = lambda xs: sum(xs) / len(xs)
    print(f"\nThis build / baseline: req/s {mean([x[0] for x in t]) / mean([x[0] for x in b]):.3f}, "
          f"CPU per request {mean([x[1] for x in t]) / mean([x[1] for x in b]):.3f} (means of the three rounds).")
PY

# The shell helpers the scripts share (scripts/*.sh, bench/*.sh,
# tuning/test.sh, .ci/run): the one copy of each. Source it; do not run it.
# (tuning/check.sh and apply.sh use none of them and stay self-contained.)
#
#   . "$(dirname "$0")/../scripts/lib.sh"
#
# Sets ROOT (the repository, found from this file's own place: scripts/..)
# and BIN (ROOT/target/release, or CARGO_TARGET_DIR/release when that is set,
# where build_release's cargo puts them; a relative one is taken from ROOT).
# Defines only functions otherwise; changes no shell option.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case ${CARGO_TARGET_DIR:-} in
  "") BIN="$ROOT/target/release" ;;
  /*) BIN="$CARGO_TARGET_DIR/release" ;;
  *) BIN="$ROOT/$CARGO_TARGET_DIR/release" ;;
esac

# log MESSAGE...: one progress line on stderr (bold on a terminal).
log() {
  if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi
}

# The capabilities a run may do without, named in TODO_TEST_SKIP
# (comma-separated); the tests' side is todo_testkit::capability.
TEST_SKIP_KNOWN="io_uring netns tmpfs fuzz"

# check_skips: exit 2 when TODO_TEST_SKIP names a capability no test knows
# (a typo would otherwise skip nothing and say nothing).
check_skips() {
  local name list=${TODO_TEST_SKIP:-}
  for name in ${list//,/ }; do
    if [[ " $TEST_SKIP_KNOWN " != *" $name "* ]]; then
      echo "TODO_TEST_SKIP names $name: not one of $TEST_SKIP_KNOWN" >&2
      exit 2
    fi
  done
}

# skip_named NAME: whether TODO_TEST_SKIP names NAME.
skip_named() {
  local list=${TODO_TEST_SKIP:-}
  [[ " ${list//,/ } " == *" $1 "* ]]
}

# capability_summary LOG: what the tests that need a capability did (the
# lines todo_testkit::capability wrote to TODO_CAPABILITY_LOG): per
# capability, how many checks ran it and every skip with its reason.
capability_summary() {
  local log=$1 name ran skipped
  echo "--- capabilities (TODO_TEST_SKIP=${TODO_TEST_SKIP:-})"
  for name in $TEST_SKIP_KNOWN; do
    [ "$name" = fuzz ] && continue # scripts/fuzz.sh says its own
    ran=$(grep -c "^ran $name " "$log" || true)
    skipped=$(grep -c "^skipped $name " "$log" || true)
    echo "$name: ran in $ran test checks, skipped in $skipped"
    grep "^skipped $name " "$log" | sed 's/^/  SKIPPED: /' || true
  done
}

# free_port: a TCP port nothing listens on.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_tcp [HOST:]PORT NAME [SECONDS]: until something accepts on HOST:PORT
# (HOST default 127.0.0.1; SECONDS, default 30, at most).
wait_tcp() {
  local tries=$(( ${3:-30} * 10 )) host=127.0.0.1 port=$1
  case $1 in *:*) host=${1%:*}; port=${1##*:} ;; esac
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not start listening on $host:$port" >&2
  return 1
}

# wait_http URL [SECONDS]: until URL answers 200 (SECONDS, default 10, at most).
wait_http() {
  local tries=$(( ${2:-10} * 10 ))
  for _ in $(seq "$tries"); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

# ensure_apt PKG...: apt-get installs those of the Debian packages PKG that
# dpkg does not list as installed (none given or none missing: does nothing).
# Callers that judge presence another way (a command on PATH, a Python
# module) pass only the packages they found missing.
ensure_apt() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# cpu_ticks PID...: utime+stime of the processes (all threads), in clock ticks.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    # Fields after the ")" of the command name: utime is 14th, stime 15th overall.
    total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
  done
  echo "$total"
}

# pin CPU PID: every thread of PID onto CPU.
pin() {
  local t
  for t in /proc/"$2"/task/*; do taskset -pc "$1" "${t##*/}" >/dev/null; done
}

# json_field JSON PATH: a field of todo-bench --json output (dotted path).
json_field() {
  python3 -c 'import json,sys; v=json.loads(sys.argv[1])
for k in sys.argv[2].split("."): v=v[k] if v is not None else None
print(v)' "$1" "$2"
}

# bench_errors JSON: the failed requests in todo-bench --json output (wrong
# status, framing, I/O and connect errors).
bench_errors() {
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(sum(r["wrong_status"].values())+r["framing_errors"]+r["io_errors"]+r["connect_errors"])' "$1"
}

# rss_bytes PID: resident memory of PID, bytes.
rss_bytes() {
  awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"
}

# pipelined_rate URL DURATION CPU: todo-bench -c 200 -p 80 on CPU for
# DURATION; prints req/s, fails when it counted any error.
pipelined_rate() {
  local out
  out=$("$BIN/todo-bench" "$1" -c 200 -p 80 -d "$2" --cpus "$3" --json)
  [ "$(bench_errors "$out")" = 0 ] || { echo "todo-bench counted errors: $out" >&2; return 1; }
  json_field "$out" requests_per_sec
}

# parse_flags "$@": each `--some-flag VALUE` sets SOME_FLAG, for the variables
# the calling script gave a default before calling (any other flag is
# refused); -d, -c and -p stand for --duration, --connections and
# --pipelining; -h prints the script's header comment.
parse_flags() {
  local flag var
  while [ $# -gt 0 ]; do
    flag=$1
    case "$flag" in
      -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
      -d) flag=--duration ;;
      -c) flag=--connections ;;
      -p) flag=--pipelining ;;
    esac
    var=$(printf '%s' "${flag#--}" | tr 'a-z-' 'A-Z_')
    if [[ $flag != --* || ! $var =~ ^[A-Z_]+$ ]] || [ -z "${!var+set}" ] || [ $# -lt 2 ]; then
      echo "unknown flag or missing value: $1 (see --help)" >&2
      exit 2
    fi
    printf -v "$var" '%s' "$2"
    shift 2
  done
}

# build_release [PACKAGE...]: cargo build --release of the packages (default:
# todo-server, todo-bench and todo-lb).
build_release() {
  local pkgs=("$@") args=() p
  [ ${#pkgs[@]} -gt 0 ] || pkgs=(todo-server todo-bench todo-lb)
  for p in "${pkgs[@]}"; do args+=(-p "$p"); done
  log "building release binaries (${pkgs[*]})"
  (cd "$ROOT" && cargo build --release -q "${args[@]}")
}

# start_server [--bin PATH] PORT DATA_DIR [todo-server flags...]: starts
# todo-server (BIN/todo-server, or PATH) on 127.0.0.1:PORT, its stderr in
# DATA_DIR.log, and waits for /readyz; sets SERVER_PID. When it does not get
# ready, shows the log, stops it and returns 1.
start_server() {
  local bin="$BIN/todo-server"
  if [ "$1" = --bin ]; then bin=$2; shift 2; fi
  local port=$1 dir=$2; shift 2
  "$bin" --listen "127.0.0.1:$port" --data-dir "$dir" "$@" 2> "$dir.log" &
  SERVER_PID=$!
  # Its own word, not a probe of the port: on a port shared with another
  # process (SO_REUSEPORT) that one could answer a probe.
  wait_line "$dir.log" "listening on" "$SERVER_PID" || {
    cat "$dir.log" >&2
    kill "$SERVER_PID" 2>/dev/null || true
    return 1
  }
}

# wait_line FILE TEXT PID [SECONDS=30]: until FILE has a line with TEXT (a
# process saying it is ready); fails early when PID exits first.
wait_line() {
  local file=$1 text=$2 pid=$3 seconds=${4:-30} i
  for i in $(seq $((seconds * 20))); do
    grep -qF -- "$text" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "process $pid exited before saying '$text'" >&2; return 1; }
    sleep 0.05
  done
  echo "no '$text' in $file within ${seconds}s" >&2
  return 1
}

# wait_metric URL NAME OP VALUE [SECONDS=30]: until the unlabelled metric NAME
# in URL's Prometheus text compares OP (-le, -ge, -eq) to VALUE.
wait_metric() {
  local url=$1 name=$2 op=$3 want=$4 seconds=${5:-30} i now
  for i in $(seq $((seconds * 10))); do
    now=$(curl -fs "$url" | awk -v n="$name" '$1 == n {print $2}')
    [ -n "$now" ] && [ "$now" "$op" "$want" ] && return 0
    sleep 0.1
  done
  echo "$name at $url is ${now:-missing}, not $op $want, after ${seconds}s" >&2
  return 1
}

# stop_pids PID...: SIGTERM each, then wait for each to be gone.
stop_pids() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# nginx_conf DIR NAME PORT CPU MODE ARG...: writes DIR/NAME.conf, the nginx
# configuration the benchmarks compare against: one worker listening on
# 127.0.0.1:PORT (reuseport, backlog 4096), keep-alive for as long as a run
# lasts, no access log, pid in DIR/NAME.pid, errors in DIR/error.log; the
# worker pinned to CPU (worker_cpu_affinity), or not pinned when CPU is -.
#   MODE static BODY         GET /todos answers 200 with BODY (JSON; no ')
#   MODE proxy UPSTREAM...   least_conn over the UPSTREAMs (HOST:PORT) through
#                            a keep-alive pool, as the reference design does
#   MODE tls-proxy CERT KEY UPSTREAM...
#                            the same proxy, the port speaking TLS (1.3 and
#                            1.2) with the PEM pair CERT and KEY, session
#                            tickets and a shared session-id cache
# Start it with: nginx -c DIR/NAME.conf -p DIR -g 'daemon off;'
nginx_conf() {
  local dir=$1 name=$2 port=$3 cpu=$4 mode=$5; shift 5
  local affinity="" locations u ssl="" tls=""
  if [ "$mode" = tls-proxy ]; then
    ssl=" ssl"
    tls="    ssl_certificate $1;
    ssl_certificate_key $2;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:TLS:16m;
    ssl_session_tickets on;
"
    mode=proxy
    shift 2
  fi
  [ "$cpu" = - ] || affinity="worker_cpu_affinity $(python3 -c "print(format(1 << $cpu, 'b'))");
"
  case $mode in
    static)
      locations="    location = /todos {
      default_type application/json;
      return 200 '$1';
    }"
      ;;
    proxy)
      locations="    location / {
      proxy_pass http://todo;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Request-Id \$request_id;
      proxy_next_upstream error timeout;
    }"
      ;;
    *) echo "nginx_conf: unknown mode $mode (static, proxy or tls-proxy)" >&2; return 2 ;;
  esac
  {
    printf 'worker_processes 1;\n%sworker_rlimit_nofile 16384;\n' "$affinity"
    cat <<CONF
pid $dir/$name.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  server_tokens off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
CONF
    if [ "$mode" = proxy ]; then
      echo "  upstream todo {"
      echo "    least_conn;"
      for u in "$@"; do echo "    server $u;"; done
      echo "    keepalive 1024;"
      echo "    keepalive_requests 100000000;"
      echo "  }"
    fi
    cat <<CONF
  server {
    listen 127.0.0.1:$port$ssl reuseport backlog=4096;
$tls$locations
  }
}
CONF
  } > "$dir/$name.conf"
}

# Shared helpers for the bench scripts. Source it; do not run it.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/target/release"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

build_release() {
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q -p todo-server -p todo-bench -p todo-lb)
}

# free_port: a TCP port nothing listens on.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_server PORT DATA_DIR [todo-server flags...]: sets SERVER_PID.
start_server() {
  local port=$1 dir=$2; shift 2
  "$BIN/todo-server" --listen "127.0.0.1:$port" --data-dir "$dir" "$@" 2> "$dir.log" &
  SERVER_PID=$!
  wait_http "http://127.0.0.1:$port/readyz" || { cat "$dir.log" >&2; return 1; }
}

# wait_http URL: until it answers 200 (10 s at most).
wait_http() {
  for _ in $(seq 100); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
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

ensure_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# json_field JSON PATH: a field of todo-bench --json output (dotted path).
json_field() {
  python3 -c 'import json,sys; v=json.loads(sys.argv[1])
for k in sys.argv[2].split("."): v=v[k] if v is not None else None
print(v)' "$1" "$2"
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

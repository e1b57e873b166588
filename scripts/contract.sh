#!/usr/bin/env bash
# The API contract, checked from outside against a running todo-server:
#   1. headless Chromium (Debian's, driven by playwright-core from npm) opens
#      /docs, sees every operation listed, runs GET /todos with "Try it out"
#      -> "Execute", sees todos come back, and that the page asked nothing
#      of any other host (scripts/browser/docs.test.js);
#   2. schemathesis (PyPI) runs every operation of the /openapi.json the
#      server serves with generated requests (examples, coverage, fuzzing and
#      the document's links), checking for server errors, statuses the
#      document does not list, content types, response schemas and headers,
#      and 405s with their Allow.
# Works from scratch on Debian 12: installs what is missing (apt: python3-venv,
# chromium, nodejs, npm, curl) and keeps schemathesis and playwright-core in
# CACHE_DIR, so later runs skip the installs. Builds the debug todo-server,
# starts it on a free loopback port with a fresh data directory, waits for
# /readyz, stops it by pid at the end. Exits non-zero on any failure.
#
#   scripts/contract.sh [--examples N] [--seed N] [--screenshot PATH] [--app-screenshot PATH]
#
#   --examples    generated requests per operation and phase (default 100)
#   --seed        schemathesis's random seed (default 1: reruns repeat)
#   --screenshot  where to keep the page's picture (default: not kept;
#                 docs/api-docs.png is one)
#   --app-screenshot  the todo page's picture, signed in (docs/app.png is one)
#   CACHE_DIR     default ${XDG_CACHE_HOME:-~/.cache}/todo-contract
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

EXAMPLES=100
SEED=1
SCREENSHOT=""
APP_SCREENSHOT=""
parse_flags "$@"

SCHEMATHESIS_VERSION=4.32.5
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/todo-contract}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
started=$SECONDS

# --- tools: what this machine lacks, from Debian
need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# Debian's python3 makes venvs only with python3-venv (ensurepip).
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
[ -x "$CHROMIUM" ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
ensure_apt "${need_apt[@]}"
mkdir -p "$CACHE_DIR"

# --- schemathesis, in a venv kept in the cache (a venv that no longer runs,
# e.g. its python gone, is made again)
VENV="$CACHE_DIR/schemathesis-$SCHEMATHESIS_VERSION"
if ! "$VENV/bin/schemathesis" --version >/dev/null 2>&1; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- playwright-core as scripts/browser/package-lock.json pins it, kept in
# the cache under the lock's hash; it never downloads a browser
NODE_DIR="$CACHE_DIR/browser-$(cat scripts/browser/package.json scripts/browser/package-lock.json | sha256sum | cut -c1-16)"
if [ ! -f "$NODE_DIR/node_modules/playwright-core/package.json" ]; then
  log "installing playwright-core into $NODE_DIR"
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp scripts/browser/package.json scripts/browser/package-lock.json "$NODE_DIR/"
  (cd "$NODE_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

# --- the server
log "building todo-server (debug)"
cargo build -q -p todo-server --bins
WORK=$(mktemp -d)
# A copy: another build into the same target directory cannot change the
# binary under test during the run.
cp "${CARGO_TARGET_DIR:-target}/debug/todo-server" "$WORK/todo-server"
SERVER_PID=""
cleanup() {
  [ -z "$SERVER_PID" ] || stop_pids "$SERVER_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
# A small seed keeps the lists short; two cores, as the tests run.
"$WORK/todo-server" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --cores 2 --seed 200 \
  2> "$WORK/server.log" &
SERVER_PID=$!
ready=""
for _ in $(seq 300); do
  curl -fs -o /dev/null "$BASE/readyz" && { ready=1; break; }
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  cat "$WORK/server.log" >&2
  echo "todo-server did not get ready on $BASE" >&2
  exit 1
fi
log "todo-server ready on $BASE (pid $SERVER_PID)"

# A registered account, so that /users/me and the writes act for a real user.
curl -fsS -o /dev/null "$BASE/users" -H 'Content-Type: application/json' \
  -d '{"username":"contract","password":"contract password"}'
TOKEN=$(curl -fsS "$BASE/sessions" -H 'Content-Type: application/json' \
  -d '{"username":"contract","password":"contract password"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
# Its one category: the only category_id its writes may name
# (scripts/schemathesis_hooks.py narrows the schema's CategoryRef to it).
CATEGORY=$(curl -fsS "$BASE/categories" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d '{"name":"contract"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

# --- 1. the docs page in Chromium, while the data is the seed's
log "the docs page in headless Chromium"
shot=${SCREENSHOT:-$WORK/api-docs.png}
CHROMIUM="$CHROMIUM" NODE_PATH="$NODE_DIR/node_modules" node scripts/browser/docs.test.js "$BASE" "$shot"

# --- 1b. the todo page in Chromium: signed out, signed up, every TodoMVC
# action, live changes, script in a title, axe-core
log "the todo page (/app) in headless Chromium"
app_shot=${APP_SCREENSHOT:-$WORK/app.png}
CHROMIUM="$CHROMIUM" NODE_PATH="$NODE_DIR/node_modules" node scripts/browser/app.test.js "$BASE" "$app_shot"

# --- 2. schemathesis, on the document the server serves (read from a file:
# loaded from its URL, schemathesis would leave GET /openapi.json itself out)
curl -fsS -o "$WORK/openapi.json" "$BASE/openapi.json"
cmp -s "$WORK/openapi.json" server/openapi.json \
  || { echo "$BASE/openapi.json is not server/openapi.json: rebuild" >&2; exit 1; }
log "schemathesis $SCHEMATHESIS_VERSION: every operation of $BASE/openapi.json ($EXAMPLES examples, seed $SEED)"
(
  # It keeps its example database and reports in the current directory.
  cd "$WORK"
  # GET /todos/changes is a stream that does not end, which schemathesis
  # would wait out as a timeout: its contract is held by server/tests
  # (openapi.rs: routed, its statuses and media type; changes.rs: events).
  PYTHONPATH="$ROOT/scripts" SCHEMATHESIS_HOOKS=schemathesis_hooks CONTRACT_CATEGORY="$CATEGORY" \
  "$VENV/bin/schemathesis" --config-file "$ROOT/scripts/schemathesis.toml" run openapi.json \
    --url "$BASE" --exclude-path /todos/changes \
    --header "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance \
    --max-examples "$EXAMPLES" --seed "$SEED" \
    --request-timeout 10 | tee "$WORK/schemathesis.out"
)
# The schema must say what the API accepts: a warning that an operation
# refuses most of what its schema allows fails the run.
if grep -q "Schema validation mismatch" "$WORK/schemathesis.out"; then
  echo "schemathesis: an operation's schema allows what the API refuses (see above)" >&2
  exit 1
fi

# A caught panic ends only its connection, which a client may not notice.
panics=$(curl -fs "$BASE/metrics" | awk '$1 == "todo_connection_panics_total" {print $2}')
if [ "$panics" != 0 ]; then
  cat "$WORK/server.log" >&2
  echo "todo-server: ${panics:-no answer from /metrics} connection panics during the run" >&2
  exit 1
fi
log "contract checks passed in $((SECONDS - started)) s"

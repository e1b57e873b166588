#!/usr/bin/env bash
# The test suite: the tuning scripts' test (tuning/test.sh, on a scratch
# /proc/sys), unit tests beside the code, and integration tests that start
# the real binaries on 127.0.0.1:0 and talk to real PostgreSQL, Redis and a
# Kafka-protocol broker, which this script starts on free loopback ports
# (scripts/services.sh; the first run builds the tansu broker, ~17 minutes)
# and stops again.
#
#   ./scripts/test.sh [extra cargo test args]
#
# A test that needs something this machine lacks (io_uring, network
# namespaces, a tmpfs it mounts) fails, unless TODO_TEST_SKIP names it
# (e.g. TODO_TEST_SKIP=io_uring,netns); the end of the run lists what each
# such test ran and what was skipped (todo_testkit::capability).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
check_skips

# First, and before apply.sh below touches this machine: the tuning scripts
# on a scratch copy of /proc/sys.
log "tuning/test.sh"
tuning/test.sh

# The machine settings the many-connection and rolling-restart tests rely on
# (tuning/apply.sh is idempotent); check.sh then says what, if anything, this
# machine still lacks.
if [ "$(id -u)" = 0 ]; then
  tuning/apply.sh >&2
  tuning/check.sh >&2 || echo "tuning/check.sh: see above; the tests adapt to the limits they find" >&2
fi

SERVICES_DIR=$(scripts/services.sh start)
cleanup() {
  scripts/services.sh stop "$SERVICES_DIR"
  rm -rf "$SERVICES_DIR"
}
trap cleanup EXIT
# shellcheck source=/dev/null
. "$SERVICES_DIR/env"
export TODO_CAPABILITY_LOG="$SERVICES_DIR/capabilities.log"
: > "$TODO_CAPABILITY_LOG"
log "cargo test"
status=0
cargo test --workspace --all-targets "$@" || status=$?
capability_summary "$TODO_CAPABILITY_LOG"
exit "$status"

#!/usr/bin/env bash
# The test suite: the tuning scripts' test (tuning/test.sh, on a scratch
# /proc/sys), unit tests beside the code, and integration tests that start
# the real binaries on 127.0.0.1:0 and talk to real PostgreSQL, Redis and a
# Kafka-protocol broker, which this script starts on free loopback ports
# (scripts/services.sh; the first run builds the tansu broker, ~17 minutes)
# and stops again.
#
#   ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

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
log "cargo test"
cargo test --workspace --all-targets "$@"

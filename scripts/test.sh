#!/usr/bin/env bash
# The test suite: unit tests beside the code, and integration tests that start
# the real binaries on 127.0.0.1:0 and speak raw bytes to them.
#
#   ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"

#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer, nightly) of everything that
# parses input: the request parser, the proxy's response framing, the Redis
# snapshot value, RESP frames, a write's JSON body, the command log's
# reader, list queries and todo-lb's edge cache (fuzz/fuzz_targets/). Each target runs SECONDS (default 10) from the
# checked-in corpus (fuzz/corpus/TARGET); what it learns goes to a scratch
# directory, so the checked-in corpus stays small. A crash stops the run with
# the input saved under fuzz/artifacts/TARGET/; keep it as a regression test.
#
#   scripts/fuzz.sh [SECONDS]
#
# Without the nightly toolchain this fails, unless TODO_TEST_SKIP names
# `fuzz`: then it says SKIPPED and exits 0 (.ci/run lists the skip at the
# end of the run).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SECONDS_EACH=${1:-10}

if ! rustup toolchain list | grep -q '^nightly'; then
  if skip_named fuzz; then
    echo "SKIPPED (fuzz, named by TODO_TEST_SKIP): the nightly toolchain is not installed" >&2
    exit 0
  fi
  echo "the nightly toolchain is needed (cargo fuzz builds with sanitizers): rustup toolchain install nightly" >&2
  echo "(TODO_TEST_SKIP=fuzz skips fuzzing; the run then lists the skip)" >&2
  exit 1
fi
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd "$ROOT/fuzz"
log "building the fuzz targets"
cargo +nightly fuzz build
WORK=$(mktemp -d /tmp/todo-fuzz.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$WORK/$target"
  if ! cargo +nightly fuzz run "$target" "$WORK/$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 > "$WORK/$target.log" 2>&1; then
    tail -40 "$WORK/$target.log" >&2
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$WORK/$target.log")
  cov=$(grep -oE 'cov: [0-9]+' "$WORK/$target.log" | tail -1)
  log "$target: $runs inputs in ${SECONDS_EACH}s, $cov, no crash"
done

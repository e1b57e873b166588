#!/usr/bin/env bash
# The workspace's dependency arrows run one way: programs (server, worker,
# lb, bench) -> store, runtime -> http, model. Each crate may use only the
# workspace crates listed for it here (normal dependencies, so tests may use
# todo-testkit); the shared types carry no wire code. Exit 1 on the first
# arrow that points the wrong way. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A ALLOWED=(
  [todo-model]=""
  [todo-http]=""
  [todo-runtime]=""
  [todo-store]="todo-model"
  [todo-server]="todo-model todo-http todo-runtime todo-store"
  [todo-worker]="todo-model todo-http todo-store"
  [todo-lb]="todo-http todo-runtime"
  [todo-bench]="todo-testkit"
  [todo-testkit]="todo-model todo-store"
)

status=0
for crate in "${!ALLOWED[@]}"; do
  direct=$(cargo tree -q -p "$crate" -e normal --depth 1 --prefix none --all-features \
    | awk 'NR > 1 { print $1 }' | grep '^todo-' | sort -u || true)
  for dep in $direct; do
    if [[ " ${ALLOWED[$crate]} " != *" $dep "* ]]; then
      echo "$crate depends on $dep: not one of its arrows (${ALLOWED[$crate]:-none})" >&2
      status=1
    fi
  done
done
if cargo tree -q -p todo-model -e normal --prefix none | grep -q '^redis-protocol '; then
  echo "todo-model depends on redis-protocol: wire code belongs in todo-store" >&2
  status=1
fi
[ "$status" = 0 ] && echo "dependency arrows: ok"
exit "$status"

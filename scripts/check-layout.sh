#!/usr/bin/env bash
# The workspace's dependency arrows run one way: programs (server, worker,
# lb, bench) -> store, runtime -> http, model. Each crate may use only the
# workspace crates listed for it here (normal dependencies, so tests may use
# todo-testkit); the shared types carry no wire code. Inside each crate, no
# module circle: two modules may name each other only as a module and its
# own parent (scripts/module-circles.py; docs/architecture.md §2).
# Exit 1 when an arrow points the wrong way or a circle exists. Run by
# .ci/run.
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
# The circle check itself, on a scratch crate with one circle (a -> b -> a)
# and one parent-child pair (routes <-> routes::todos): it must find the
# first and only the first.
scratch=$(mktemp -d)
mkdir -p "$scratch/c/src/routes"
printf 'mod a;\nmod b;\nmod routes;\n' > "$scratch/c/src/lib.rs"
printf 'use crate::b::B;\npub struct A;\n' > "$scratch/c/src/a.rs"
printf 'pub struct B;\nfn f() { let _ = crate::a::A; }\n' > "$scratch/c/src/b.rs"
printf 'mod todos;\npub struct R;\nuse todos::T;\n' > "$scratch/c/src/routes/mod.rs"
printf 'use super::R;\npub struct T;\n' > "$scratch/c/src/routes/todos.rs"
if out=$(python3 scripts/module-circles.py "$scratch/c" 2>&1) \
  || [[ $out != *"a module circle of 2: a, b"* ]] || [[ $out == *routes* ]]; then
  echo "scripts/module-circles.py did not find exactly the scratch crate's circle: $out" >&2
  status=1
fi
rm -rf "$scratch"
python3 scripts/module-circles.py || status=1
exit "$status"

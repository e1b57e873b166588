#!/usr/bin/env bash
# Tests tuning/check.sh and tuning/apply.sh on a scratch copy of /proc/sys
# (TUNING_ROOT) and scratch config files, so this machine's own settings are
# neither read nor touched; no root needed. Prints each check; exits 1 on the
# first failed one, with the output of the script run it was about.
#
#   tuning/test.sh
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

TUNING="$ROOT/tuning"

# An untuned machine: name under proc/sys, value (written with a newline).
UNTUNED=(
  "fs/nr_open|1048576"
  "fs/file-max|9223372036854775807"
  "net/core/somaxconn|128"
  "net/ipv4/tcp_max_syn_backlog|1024"
  "net/ipv4/ip_local_port_range|32768	60999"
  "net/ipv4/tcp_tw_reuse|2"
  "net/core/netdev_max_backlog|1000"
  "net/core/rmem_max|212992"
  "net/core/wmem_max|8388608"
  "net/ipv4/tcp_migrate_req|0"
  "kernel/io_uring_disabled|0"
)

SCRATCH_DIRS=()
trap 'rm -rf "${SCRATCH_DIRS[@]}"' EXIT

# scratch TAG: a new scratch root holding UNTUNED; sets S.
scratch() {
  S=$(mktemp -d "${TMPDIR:-/tmp}/todo-tuning-$1.XXXXXX")
  SCRATCH_DIRS+=("$S")
  local entry name
  for entry in "${UNTUNED[@]}"; do
    name=${entry%%|*}
    mkdir -p "$(dirname "$S/proc/sys/$name")"
    printf '%s\n' "${entry#*|}" > "$S/proc/sys/$name"
  done
}

# run [--ulimit-n N] SCRIPT [ARGS...]: bash tuning/SCRIPT against the scratch
# root, for TODO_CONNECTIONS=1000 (within this machine's open-files limits),
# with the open-files limit lowered to N first if given; sets OUT (stdout and
# stderr) and RC.
run() {
  local pre=: shown=""
  if [ "$1" = --ulimit-n ]; then pre="ulimit -n $2"; shown="ulimit -n $2; "; shift 2; fi
  local script=$1; shift
  LAST="${shown}tuning/$script${*:+ $*}"
  echo "  run  $LAST"
  RC=0
  OUT=$(TUNING_ROOT=$S TUNING_SYSCTL_CONF=$S/sysctl.conf TUNING_LIMITS_CONF=$S/limits.conf \
    TODO_CONNECTIONS=1000 bash -c "$pre && exec bash \"\$0\" \"\$@\"" "$TUNING/$script" "$@" 2>&1) || RC=$?
}

# fail MESSAGE: the failed check, the last run's output, exit 1.
fail() {
  printf 'FAIL: %s\n--- output of %s (exit %s):\n%s\n---\n' "$1" "$LAST" "$RC" "$OUT" >&2
  exit 1
}

# expect WHAT COMMAND...: COMMAND must succeed.
expect() {
  local what=$1; shift
  "$@" || fail "$what"
  echo "  ok   $what"
}

# expect_eq WHAT ACTUAL WANTED
expect_eq() {
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
  echo "  ok   $1"
}

# says TEXT: the last run's output contains TEXT.
says() { [[ $OUT == *"$1"* ]]; }

# short_rows: the first word of each row check.sh marked SHORT.
short_rows() { awk '/ SHORT / { print $1 }' <<< "$OUT"; }

# is_short NAME: check.sh marked NAME's row SHORT.
is_short() { short_rows | grep -qxF "$1"; }

# value NAME: the scratch sysctl NAME (path under proc/sys), trimmed.
value() { sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$S/proc/sys/$1"; }

log "check.sh says what is short, and apply.sh fixes it once"
scratch apply
run check.sh
expect_eq "check.sh on the untuned copy exits 1" "$RC" 1
for name in net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.ip_local_port_range \
  net.ipv4.tcp_tw_reuse net.core.netdev_max_backlog net.core.rmem_max net.ipv4.tcp_migrate_req; do
  expect "$name reported SHORT" is_short "$name"
done
expect "each row says why (somaxconn: \"accept queue\")" says "accept queue"

run apply.sh --dry-run
expect_eq "apply.sh --dry-run exits 0" "$RC" 0
expect "the dry run says: would set net.core.somaxconn: 128 -> 4096" says "would set net.core.somaxconn: 128 -> 4096"
expect_eq "the dry run left net.core.somaxconn alone" "$(value net/core/somaxconn)" 128
expect "the dry run wrote no sysctl.conf" test ! -e "$S/sysctl.conf"

run apply.sh
expect_eq "apply.sh exits 0" "$RC" 0
expect_eq "net.core.somaxconn set" "$(value net/core/somaxconn)" 4096
expect_eq "net.ipv4.ip_local_port_range set" "$(value net/ipv4/ip_local_port_range)" "1024 65535"
expect_eq "net.ipv4.tcp_migrate_req set" "$(value net/ipv4/tcp_migrate_req)" 1
expect_eq "net.core.wmem_max, above the recommendation, left alone" "$(value net/core/wmem_max)" 8388608
expect "sysctl.conf has net.core.somaxconn = 4096" grep -qF "net.core.somaxconn = 4096" "$S/sysctl.conf"

run apply.sh
expect "a second apply.sh says nothing to change" says "nothing to change"

run check.sh
SHORT=$(short_rows)
# Clean, unless this machine refuses io_uring (which apply.sh cannot fix).
clean_but_io_uring() { [ -z "$SHORT" ] || [ "$SHORT" = io_uring ]; }
expect "nothing short after apply.sh, io_uring aside (short: ${SHORT:-none})" clean_but_io_uring
if [ -z "$SHORT" ]; then
  expect_eq "check.sh after apply.sh exits 0" "$RC" 0
else
  echo "  note this machine refuses io_uring: check.sh rightly exits $RC"
fi

log "a low open-files limit is reported"
scratch nofile
run --ulimit-n 512 check.sh
expect_eq "check.sh under ulimit -n 512 exits 1" "$RC" 1
expect "the 'open files (ulimit -Sn)' row is SHORT" \
  grep -q '^open files (ulimit -Sn).*SHORT' <<< "$OUT"

log "tuning/test.sh: all checks passed"

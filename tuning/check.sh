#!/usr/bin/env bash
# Report each setting that limits connections or throughput: its current
# value, the recommended one and why. Exits 0 when every one meets its
# recommendation, 1 otherwise (tuning/apply.sh fixes what it can).
#
#   tuning/check.sh            TODO_CONNECTIONS=50000 tuning/check.sh
set -uo pipefail
. "$(dirname "$0")/settings.sh"

short=0
row() { # row NAME CURRENT RECOMMENDED OK WHY
  local mark=ok
  [ "$4" = 0 ] && { mark=SHORT; short=$((short + 1)); }
  printf '%-30s %-22s %-22s %-5s %s\n' "$1" "$2" "$3" "$mark" "$5"
}

printf '%-30s %-22s %-22s %-5s %s\n' setting current recommended "" why
soft=$(ulimit -Sn); hard=$(ulimit -Hn)
ok() { [ "$1" = unlimited ] || [ "$1" -ge "$2" ]; }
row "open files (ulimit -Sn)" "$soft" ">= $NOFILE" "$(ok "$soft" "$NOFILE" && echo 1 || echo 0)" \
  "every connection is a file descriptor (the servers raise soft to hard at start)"
row "open files (ulimit -Hn)" "$hard" ">= $NOFILE" "$(ok "$hard" "$NOFILE" && echo 1 || echo 0)" \
  "the most a process may raise its soft limit to"
for s in "${SETTINGS[@]}"; do
  IFS='|' read -r name kind rec why <<< "$s"
  cur=$(sysctl_get "$name")
  case $kind in
    min) shown=">= $rec" ;;
    exact) shown="$rec" ;;
    span) shown="span >= $rec" ;;
  esac
  row "$name" "$cur" "$shown" "$(meets "$kind" "$cur" "$rec" && echo 1 || echo 0)" "$why"
done
uring_disabled=$(sysctl_get kernel.io_uring_disabled)
if io_uring_available; then uring=yes; else uring=no; fi
row "io_uring" "$uring (io_uring_disabled=$uring_disabled)" "yes" "$([ $uring = yes ] && echo 1 || echo 0)" \
  "the servers' io driver; without it they fall back to epoll (slower). In containers: a seccomp profile that allows io_uring_*"

echo
if [ "$short" -gt 0 ]; then
  echo "$short setting(s) short of the recommendation: run tuning/apply.sh as root (--dry-run shows what it would do)."
  exit 1
fi
echo "Every setting meets its recommendation (for TODO_CONNECTIONS=$TODO_CONNECTIONS)."

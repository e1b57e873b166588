#!/usr/bin/env bash
# Apply the recommendations of tuning/check.sh: sysctls now and in
# /etc/sysctl.d/90-todo.conf, open-files limits in
# /etc/security/limits.d/90-todo.conf (new sessions). Idempotent: values
# already at or above the recommendation are left alone, and a second run
# changes nothing. Needs root.
#
#   tuning/apply.sh [--dry-run]
#
# TUNING_SYSCTL_CONF and TUNING_LIMITS_CONF move the two files (tests).
set -euo pipefail
. "$(dirname "$0")/settings.sh"

DRY=0
case "${1:-}" in
  --dry-run|-n) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
  *) echo "unknown flag $1" >&2; exit 2 ;;
esac
SYSCTL_CONF=${TUNING_SYSCTL_CONF:-/etc/sysctl.d/90-todo.conf}
LIMITS_CONF=${TUNING_LIMITS_CONF:-/etc/security/limits.d/90-todo.conf}

changes=0
persist=()
for s in "${SETTINGS[@]}"; do
  IFS='|' read -r name kind rec why <<< "$s"
  cur=$(sysctl_get "$name")
  if [ "$cur" = missing ]; then
    echo "skip  $name: not on this kernel"
    continue
  fi
  if meets "$kind" "$cur" "$rec"; then
    persist+=("$name = $cur")
    continue
  fi
  value=$(target "$kind" "$cur" "$rec")
  persist+=("$name = $value")
  changes=$((changes + 1))
  if [ "$DRY" = 1 ]; then
    echo "would set $name: $cur -> $value"
  else
    printf '%s\n' "$value" > "$(sysctl_path "$name")"
    echo "set   $name: $cur -> $value"
  fi
done

# The file that keeps them across reboots.
want=$(printf '# Written by tuning/apply.sh: todo-server and todo-lb recommendations.\n'; printf '%s\n' "${persist[@]}")
if [ "$(cat "$SYSCTL_CONF" 2>/dev/null)" != "$want" ]; then
  changes=$((changes + 1))
  if [ "$DRY" = 1 ]; then echo "would write $SYSCTL_CONF"; else
    mkdir -p "$(dirname "$SYSCTL_CONF")"; printf '%s\n' "$want" > "$SYSCTL_CONF"; echo "wrote $SYSCTL_CONF"; fi
fi

# Open files: limits.conf for new sessions, and this shell's own limit.
limits=$(printf '# Written by tuning/apply.sh\n*    soft nofile %s\n*    hard nofile %s\nroot soft nofile %s\nroot hard nofile %s\n' "$NOFILE" "$NOFILE" "$NOFILE" "$NOFILE")
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$NOFILE" ]; then
  if [ "$(cat "$LIMITS_CONF" 2>/dev/null)" != "$limits" ]; then
    changes=$((changes + 1))
    if [ "$DRY" = 1 ]; then echo "would write $LIMITS_CONF (nofile $NOFILE; log in again, or LimitNOFILE= for systemd units)"; else
      mkdir -p "$(dirname "$LIMITS_CONF")"; printf '%s\n' "$limits" > "$LIMITS_CONF"
      echo "wrote $LIMITS_CONF (nofile $NOFILE): new sessions get it; services need LimitNOFILE=$NOFILE"; fi
  fi
fi

if [ "$changes" = 0 ]; then
  echo "nothing to change: every setting already meets its recommendation"
elif [ "$DRY" = 1 ]; then
  echo "$changes change(s) would be made (run without --dry-run as root)"
fi

# The settings that cap connections or throughput, with the value we
# recommend and why. Sourced by check.sh and apply.sh; do not run it.
#
# TODO_CONNECTIONS (default 16384): the connections one process should hold;
# the open-files recommendations follow from it (plus 1024 for everything
# else a process opens).
# TUNING_ROOT (default empty): read and write sysctls under
# $TUNING_ROOT/proc/sys instead of /proc/sys (tests use a scratch copy).

TODO_CONNECTIONS=${TODO_CONNECTIONS:-16384}
TUNING_ROOT=${TUNING_ROOT:-}
NOFILE=$((TODO_CONNECTIONS + 1024))

# name|kind|recommended|why
#   kind min:    the value must be at least the recommended one
#   kind exact:  the value must equal it
#   kind span:   "LOW HIGH" must span at least the recommended count
SETTINGS=(
  "fs.nr_open|min|$NOFILE|the most open files a process may be allowed; caps ulimit -n"
  "fs.file-max|min|$((2 * NOFILE))|open files on the whole machine; every connection is one"
  "net.core.somaxconn|min|4096|caps each listener's accept queue (todo-server and todo-lb ask for 4096); a full queue drops new connections"
  "net.ipv4.tcp_max_syn_backlog|min|8192|half-open connections per listener during a connection burst"
  "net.ipv4.ip_local_port_range|span|50000|ephemeral ports: each outgoing connection to one address (todo-lb to a server, a load generator) takes one"
  "net.ipv4.tcp_tw_reuse|exact|1|lets new outgoing connections reuse ports in TIME_WAIT (balancer and client churn)"
  "net.core.netdev_max_backlog|min|16384|packets queued per CPU before the stack drops them under bursts"
  "net.core.rmem_max|min|4194304|largest receive buffer a socket may ask for (bytes)"
  "net.core.wmem_max|min|4194304|largest send buffer a socket may ask for (bytes); pipelined batches of responses are large"
  "net.ipv4.tcp_migrate_req|exact|1|a closing listener hands its queued connections to another process on the port: rolling restarts lose none"
)

sysctl_path() { echo "$TUNING_ROOT/proc/sys/${1//.//}"; }

# sysctl_get NAME: the value with whitespace runs squeezed to one space, or
# "missing".
sysctl_get() {
  local p
  p=$(sysctl_path "$1")
  if [ -r "$p" ]; then tr -s ' \t' ' ' < "$p" | sed 's/ *$//'; else echo missing; fi
}

# meets KIND CURRENT RECOMMENDED: exit 0 when CURRENT is good enough.
meets() {
  local kind=$1 cur=$2 rec=$3
  [ "$cur" = missing ] && return 1
  case $kind in
    min) [ "$cur" -ge "$rec" ] 2>/dev/null ;;
    exact) [ "$cur" = "$rec" ] ;;
    span) set -- $cur; [ $(($2 - $1 + 1)) -ge "$rec" ] 2>/dev/null ;;
  esac
}

# target KIND CURRENT RECOMMENDED: the value apply.sh writes.
target() {
  case $1 in
    span) echo "1024 65535" ;;
    *) echo "$3" ;;
  esac
}

# io_uring_available: the kernel lets this process set up a ring (it may be
# compiled out, disabled by kernel.io_uring_disabled, or refused by seccomp).
io_uring_available() {
  python3 - <<'PY'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
params = (ctypes.c_uint8 * 120)()
fd = libc.syscall(425, 4, params)  # io_uring_setup(entries, params)
if fd >= 0:
    os.close(fd)
    sys.exit(0)
sys.exit(1)
PY
}

#!/usr/bin/env bash
# Test hosts on this machine: network namespaces joined by veth pairs to one
# bridge (itself in a namespace of its own, so the machine's own network is
# never touched), each with its own address on 10.203.0.0/24:
#
#   svc     10.203.0.2        PostgreSQL, Redis, the broker (scripts/services.sh)
#   lb1-2   10.203.0.11-12    todo-lb :8000 (admin, /metrics: :9000), every server upstream
#   srv1-N  10.203.0.21-      todo-server :8080 (distributed path)
#   wrk1-M  10.203.0.41-      todo-worker (metrics :9464)
#   client  10.203.0.100      nothing runs there: load and tests do
#
# Every process is bound to its host's address, none to loopback; traffic
# stays on the bridge. Needs root and `ip netns` (iproute2).
#
#   scripts/cluster.sh up [--servers N] [--workers M]   # N default 2, M default 2
#   scripts/cluster.sh status
#   scripts/cluster.sh link HOST down|up     # cut or restore HOST's link
#   scripts/cluster.sh kill HOST [SIGNAL]    # every process of HOST (default KILL)
#   scripts/cluster.sh start HOST            # start HOST's process again (srvI, wrkI, lbI)
#   scripts/cluster.sh exec HOST CMD...      # run CMD on HOST
#   scripts/cluster.sh down                  # remove everything `up` made
#   scripts/cluster.sh check                 # exit 0 if namespaces can be made here
#
# State (logs, data, pids) lives in TODO_CLUSTER_DIR (default
# /tmp/todo-cluster); `up` writes TODO_CLUSTER_DIR/env to be sourced:
# CLUSTER_LBS, CLUSTER_SERVERS, CLUSTER_WORKERS (comma-separated HOST:PORT),
# CLUSTER_CLIENT (the client's namespace), JWT_SECRET, DATABASE_URL,
# REDIS_URL, KAFKA_BROKERS.
#
# Binaries come from TODO_CLUSTER_BIN (default target/release, built when
# missing). Each role may be pinned to CPUs (taskset lists):
# TODO_CLUSTER_CPUS_SVC, _LB, _SERVER, _WORKER; TODO_CLUSTER_SERVER_CORES
# (default 1) is --cores of each server, TODO_CLUSTER_LB_CORES of each
# balancer. TODO_CLUSTER_PARTITIONS (default 6) is the topic's partitions.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DIR=${TODO_CLUSTER_DIR:-/tmp/todo-cluster}
NET=10.203.0
PREFIX=todo-
SWITCH=${PREFIX}sw
CLUSTER_BIN=${TODO_CLUSTER_BIN:-$BIN}

# ns HOST: the namespace of HOST.
ns() { echo "$PREFIX$1"; }

# ip_of HOST: its address.
ip_of() {
  case $1 in
    svc) echo "$NET.2" ;;
    lb[0-9]*) echo "$NET.$((10 + ${1#lb}))" ;;
    srv[0-9]*) echo "$NET.$((20 + ${1#srv}))" ;;
    wrk[0-9]*) echo "$NET.$((40 + ${1#wrk}))" ;;
    client) echo "$NET.100" ;;
    *) echo "no host named $1" >&2; return 1 ;;
  esac
}

# on HOST CMD...: CMD in HOST's namespace.
on() {
  local host=$1; shift
  ip netns exec "$(ns "$host")" "$@"
}

# hosts: every host `up` made, from the namespaces there are.
hosts() {
  ip netns list | awk '{print $1}' | sed -n "s/^$PREFIX\(svc\|lb[0-9]*\|srv[0-9]*\|wrk[0-9]*\|client\)\$/\1/p" | sort -V
}

check() {
  if [ "$(id -u)" != 0 ]; then
    echo "cluster.sh: network namespaces need root; this is uid $(id -u)" >&2
    return 77
  fi
  command -v ip >/dev/null || { echo "cluster.sh: no ip command (iproute2)" >&2; return 77; }
  local probe=${PREFIX}probe$$
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "cluster.sh: ip netns add fails here (no namespace support)" >&2
    return 77
  fi
  local ok=0
  ip link add eth0 netns "$probe" type veth peer name p0 netns "$probe" 2>/dev/null || ok=77
  ip netns del "$probe"
  [ "$ok" = 0 ] || echo "cluster.sh: veth pairs cannot be made here" >&2
  return "$ok"
}

# add_host HOST: its namespace, loopback up, and a veth to the bridge.
add_host() {
  local host=$1 n; n=$(ns "$1")
  ip netns add "$n"
  ip -n "$n" link set lo up
  ip link add eth0 netns "$n" type veth peer name "$host" netns "$SWITCH"
  ip -n "$SWITCH" link set "$host" master br0 up
  ip -n "$n" addr add "$(ip_of "$host")/24" dev eth0
  ip -n "$n" link set eth0 up
}

# spawn HOST ROLE CMD...: CMD in the background on HOST, pinned for ROLE,
# its output in DIR/HOST.log, its pid in DIR/HOST.pid.
spawn() {
  local host=$1 role=$2; shift 2
  ip netns exec "$(ns "$host")" taskset -c "$(cpus "$role")" "$@" >>"$DIR/$host.log" 2>&1 &
  echo $! > "$DIR/$host.pid"
}

# cpus ROLE: its CPU list (every online CPU when not set).
cpus() {
  local var="TODO_CLUSTER_CPUS_$1"
  echo "${!var:-0-$(( $(nproc --all) - 1 ))}"
}

# wait_ready HOST URL [SECONDS]: until URL answers 200, asked from the client.
wait_ready() {
  local host=$1 url=$2 tries=$(( ${3:-60} * 10 )) pid
  pid=$(cat "$DIR/$host.pid")
  for _ in $(seq "$tries"); do
    on client curl -fs -o /dev/null --max-time 1 "$url" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "$host exited; its log:" >&2; tail -20 "$DIR/$host.log" >&2; return 1; }
    sleep 0.1
  done
  echo "$host: no answer from $url; its log:" >&2
  tail -20 "$DIR/$host.log" >&2
  return 1
}

start_host() {
  local host=$1 ip; ip=$(ip_of "$1")
  # shellcheck source=/dev/null
  . "$DIR/env"
  case $host in
    wrk*)
      spawn "$host" WORKER env TODO_WORKER_METRICS_LISTEN="$ip:9464" \
        TODO_TOPIC_PARTITIONS="${TODO_CLUSTER_PARTITIONS:-6}" "$CLUSTER_BIN/todo-worker"
      wait_ready "$host" "http://$ip:9464/metrics"
      ;;
    srv*)
      spawn "$host" SERVER env TODO_INSTANCE="${host#srv}" TODO_INSTANCE_NAME="$host" \
        "$CLUSTER_BIN/todo-server" --listen "$ip:8080" \
        --cores "${TODO_CLUSTER_SERVER_CORES:-1}" --data-dir "$DIR/$host"
      wait_ready "$host" "http://$ip:8080/readyz"
      ;;
    lb*)
      local ups=() s
      for s in ${CLUSTER_SERVERS//,/ }; do ups+=(--upstream "$s"); done
      spawn "$host" LB "$CLUSTER_BIN/todo-lb" --listen "$ip:8000" --admin "$ip:9000" "${ups[@]}" \
        --cores "${TODO_CLUSTER_LB_CORES:-1}" --health-interval 200ms \
        --connect-timeout 300ms --upstream-timeout 2s --eject-after 3 --eject-for 2s
      wait_ready "$host" "http://$ip:8000/readyz"
      ;;
    *) echo "cluster.sh start: $host has no process of its own to start" >&2; return 2 ;;
  esac
}

up() {
  local servers=2 workers=2
  while [ $# -gt 0 ]; do
    case $1 in
      --servers) servers=$2; shift 2 ;;
      --workers) workers=$2; shift 2 ;;
      *) echo "cluster.sh up: unknown flag $1" >&2; return 2 ;;
    esac
  done
  check || return $?
  if ip netns list | grep -q "^$SWITCH\b"; then
    echo "cluster.sh: a cluster is up already (scripts/cluster.sh down first)" >&2
    return 1
  fi
  "$ROOT/scripts/services.sh" install
  if [ ! -x "$CLUSTER_BIN/todo-server" ] || [ -z "${TODO_CLUSTER_BIN:-}" ]; then
    build_release todo-server todo-worker todo-lb todo-bench
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR"
  log "cluster: bridge, hosts svc, lb1-2, srv1-$servers, wrk1-$workers, client"
  ip netns add "$SWITCH"
  ip -n "$SWITCH" link set lo up
  ip -n "$SWITCH" link add br0 type bridge
  ip -n "$SWITCH" link set br0 up
  local h i
  for h in svc lb1 lb2 client; do add_host "$h"; done
  for i in $(seq "$servers"); do add_host "srv$i"; done
  for i in $(seq "$workers"); do add_host "wrk$i"; done

  log "cluster: services on svc ($(ip_of svc))"
  # The cluster's own broker, always: a KAFKA_BROKERS from the caller (the
  # test suite's, on loopback) cannot be reached from the hosts.
  env -u KAFKA_BROKERS TODO_SERVICES_HOST="$(ip_of svc)" \
    ip netns exec "$(ns svc)" taskset -c "$(cpus SVC)" "$ROOT/scripts/services.sh" start "$DIR/svc" >/dev/null
  cp "$DIR/svc/env" "$DIR/env"
  local secret; secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  local list=()
  for i in $(seq "$servers"); do list+=("$(ip_of "srv$i"):8080"); done
  local wlist=()
  for i in $(seq "$workers"); do wlist+=("$(ip_of "wrk$i"):9464"); done
  cat >> "$DIR/env" <<ENV
export JWT_SECRET=$secret
export CLUSTER_DIR=$DIR
export CLUSTER_CLIENT=$(ns client)
export CLUSTER_SERVERS=$(IFS=,; echo "${list[*]}")
export CLUSTER_WORKERS=$(IFS=,; echo "${wlist[*]}")
export CLUSTER_LBS=$(ip_of lb1):8000,$(ip_of lb2):8000
ENV
  # The first worker makes the schema and the topic before the others and
  # the servers start.
  for i in $(seq "$workers"); do log "cluster: wrk$i"; start_host "wrk$i"; done
  for i in $(seq "$servers"); do log "cluster: srv$i"; start_host "srv$i"; done
  for h in lb1 lb2; do log "cluster: $h"; start_host "$h"; done
  status
}

status() {
  if ! ip netns list | grep -q "^$SWITCH\b"; then
    echo "no cluster is up"
    return 0
  fi
  local h n link pids ready url ip
  printf '%-7s %-14s %-5s %-26s %s\n' HOST ADDRESS LINK PROCESSES READY
  for h in $(hosts); do
    n=$(ns "$h")
    ip=$(ip_of "$h")
    link=$(ip -n "$SWITCH" -o link show "$h" 2>/dev/null | grep -q 'state UP\|,UP' && echo up || echo down)
    pids=$(ip netns pids "$n" | xargs -r ps -o comm= -p | sort | uniq -c | awk '{printf "%s%s(%s)", sep, $2, $1; sep=","}')
    case $h in
      srv*) url="http://$ip:8080/readyz" ;;
      lb*) url="http://$ip:8000/readyz" ;;
      wrk*) url="http://$ip:9464/metrics" ;;
      *) url= ;;
    esac
    ready=-
    if [ -n "$url" ]; then
      ready=$(on client curl -s -o /dev/null --max-time 1 -w '%{http_code}' "$url" || true)
    fi
    printf '%-7s %-14s %-5s %-26s %s\n' "$h" "$ip" "$link" "${pids:--}" "$ready"
  done
}

link() {
  local host=${1:?usage: cluster.sh link HOST down|up} state=${2:?usage: cluster.sh link HOST down|up}
  ip -n "$SWITCH" link set "$host" "$state"
}

kill_host() {
  local host=${1:?usage: cluster.sh kill HOST [SIGNAL]} sig=${2:-KILL}
  ip netns pids "$(ns "$host")" | xargs -r kill "-$sig"
}

down() {
  local h n i left
  [ -d "$DIR/svc" ] && "$ROOT/scripts/services.sh" stop "$DIR/svc" || true
  for h in $(hosts); do ip netns pids "$(ns "$h")" | xargs -r kill 2>/dev/null || true; done
  # Give them 10 s to end, then kill what is left.
  for i in $(seq 100); do
    left=0
    for h in $(hosts); do [ -z "$(ip netns pids "$(ns "$h")")" ] || left=1; done
    [ "$left" = 1 ] || break
    sleep 0.1
  done
  for h in $(hosts); do ip netns pids "$(ns "$h")" | xargs -r kill -9 2>/dev/null || true; done
  for h in $(hosts); do
    n=$(ns "$h")
    for i in $(seq 50); do [ -z "$(ip netns pids "$n")" ] && break; sleep 0.1; done
    ip netns del "$n"
  done
  ip netns list | grep -q "^$SWITCH\b" && ip netns del "$SWITCH"
  rm -rf "$DIR"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  link) link "${2:-}" "${3:-}" ;;
  kill) kill_host "${2:-}" "${3:-}" ;;
  start) start_host "${2:?usage: cluster.sh start HOST}" ;;
  exec) shift; on "$@" ;;
  check) check ;;
  *) awk 'NR == 1 { next } /^#/ { print; next } { exit }' "$0"; exit 2 ;;
esac

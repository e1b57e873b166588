#!/usr/bin/env bash
# Soak: a mixed load (95 % GET /todos?limit=20, 5 % POST /todos) through
# todo-lb to two todo-servers and a todo-worker on the distributed path
# (PostgreSQL, Redis and tansu from scripts/services.sh), for DURATION. Every
# WINDOW it samples each process's resident memory and open files, and the
# window's request rate, p99 and errors (one open-loop todo-bench run per
# window, so a stall shows up as latency, not as fewer requests sent).
#
#   ./bench/soak.sh [--duration 30m] [--rate 2000] [--connections 50] [--window 10s]
#
# Writes bench/results/soak-latest.csv (one row per window), a summary
# (bench/results/soak-latest.md: RSS and open files after warm-up against the
# end, errors, p99) and a plot (docs/soak.png; matplotlib from PyPI).
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

DURATION=${DURATION:-30m}
RATE=${RATE:-2000}
CONNECTIONS=${CONNECTIONS:-50}
WINDOW=${WINDOW:-10s}
parse_flags "$@"
seconds() { python3 -c "import re,sys; m=re.fullmatch(r'(\d+)(ms|s|m|h)?', sys.argv[1]); v=int(m[1]); print({'ms': v//1000, 's': v, None: v, 'm': v*60, 'h': v*3600}[m[2]])" "$1"; }
TOTAL=$(seconds "$DURATION")
STEP=$(seconds "$WINDOW")

python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib
build_release
DIR=$("$ROOT/scripts/services.sh" up "" 2)
LB_PID=
trap '[ -n "$LB_PID" ] && stop_pids "$LB_PID"; "$ROOT/scripts/services.sh" stop "$DIR"; rm -rf "$DIR"' EXIT
# shellcheck source=/dev/null
. "$DIR/env"
LB_PORT=$(free_port)
"$BIN/todo-lb" --listen "127.0.0.1:$LB_PORT" --upstream "${TODO_SERVERS//http:\/\//}" 2> "$DIR/lb.log" &
LB_PID=$!
wait_line "$DIR/lb.log" "listening on" "$LB_PID"
LB="http://127.0.0.1:$LB_PORT"
wait_http "$LB/readyz" 60
TOKEN=$("$BIN/todo-server" token --sub soak)

declare -A PROCS=(
  [server-1]=$(cat "$DIR/server-1.pid")
  [server-2]=$(cat "$DIR/server-2.pid")
  [worker]=$(cat "$DIR/worker.pid")
  [lb]=$LB_PID
)
NAMES=(server-1 server-2 worker lb)
CSV="$ROOT/bench/results/soak-latest.csv"
mkdir -p "$ROOT/bench/results"
{
  printf 'elapsed_s,requests_per_sec,p99_us,errors'
  for n in "${NAMES[@]}"; do printf ',%s_rss_bytes,%s_open_files' "$n" "$n"; done
  echo
} > "$CSV"

log "soak: $DURATION at $RATE req/s (5 % writes) through todo-lb to 2 servers and a worker; a row every $WINDOW"
START=$(date +%s)
while [ $(( $(date +%s) - START )) -lt "$TOTAL" ]; do
  OUT=$(TODO_TOKEN=$TOKEN "$BIN/todo-bench" "$LB/todos" --mix "95:GET /todos?limit=20,5:POST /todos" \
    --rate "$RATE" -c "$CONNECTIONS" -d "$WINDOW" --json)
  row="$(( $(date +%s) - START )),$(json_field "$OUT" requests_per_sec),$(json_field "$OUT" latency.p99_us),$(bench_errors "$OUT")"
  for n in "${NAMES[@]}"; do
    pid=${PROCS[$n]}
    rss=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    row="$row,$rss,$fds"
  done
  echo "$row" >> "$CSV"
done

python3 - "$CSV" "$ROOT/docs/soak.png" "$DURATION" "$RATE" <<'PY' | tee "$ROOT/bench/results/soak-latest.md"
import csv, sys, datetime, statistics
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
path, png, duration, rate = sys.argv[1:5]
rows = list(csv.DictReader(open(path)))
t = [int(r["elapsed_s"]) / 60 for r in rows]
names = ["server-1", "server-2", "worker", "lb"]
# Warm-up: the first tenth of the run (the worker's batches, pools and
# buffers reach their working size); "flat" compares the median of the
# minute after it with the median of the last minute.
warm = max(1, len(rows) // 10)
per_min = max(1, 60 // max(1, int(rows[1]["elapsed_s"]) - int(rows[0]["elapsed_s"]) if len(rows) > 1 else 10))
def span(col, at):
    return statistics.median(float(r[col]) for r in rows[at:at + per_min])
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC: {duration} at {rate} req/s offered (95 % GET /todos?limit=20, 5 % POST /todos), "
      f"todo-lb -> 2 todo-servers -> tansu -> todo-worker -> PostgreSQL/Redis, all on this 2-CPU machine; {len(rows)} windows.\n")
print("| process | RSS after warm-up | RSS at the end | change | open files after warm-up | at the end |")
print("|---|---:|---:|---:|---:|---:|")
for n in names:
    a, b = span(f"{n}_rss_bytes", warm), span(f"{n}_rss_bytes", len(rows) - per_min)
    fa, fb = span(f"{n}_open_files", warm), span(f"{n}_open_files", len(rows) - per_min)
    print(f"| {n} | {a/2**20:.1f} MiB | {b/2**20:.1f} MiB | {100*(b-a)/a:+.1f} % | {fa:.0f} | {fb:.0f} |")
errors = sum(int(r["errors"]) for r in rows)
p99 = [float(r["p99_us"]) / 1000 for r in rows]
rps = [float(r["requests_per_sec"]) for r in rows]
print(f"\nErrors counted by todo-bench over the run: {errors}. Requests per second per window: median {statistics.median(rps):,.0f} "
      f"(min {min(rps):,.0f}). p99 per window: median {statistics.median(p99):.1f} ms, max {max(p99):.1f} ms.")
fig, ax = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
for n in names:
    ax[0].plot(t, [float(r[f"{n}_rss_bytes"]) / 2**20 for r in rows], label=n)
    ax[1].plot(t, [float(r[f"{n}_open_files"]) for r in rows], label=n)
ax[2].plot(t, p99, color="black")
ax[0].set_ylabel("RSS (MiB)"); ax[1].set_ylabel("open files"); ax[2].set_ylabel("p99 per window (ms)")
ax[2].set_xlabel("minutes"); ax[0].legend(loc="upper left", ncol=4); ax[1].legend(loc="upper left", ncol=4)
for a in ax: a.grid(alpha=0.3)
fig.suptitle(f"Soak: {duration} at {rate} req/s through todo-lb, 2 servers, worker (errors: {errors})")
fig.tight_layout()
fig.savefig(png, dpi=80)
PY
log "plot: docs/soak.png"

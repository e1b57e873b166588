"""The report of bench/feed.sh: todo-server's change feed against nginx +
nchan (one table per phase, ratios, targets), the memory per idle
subscriber, and, when it ran, the distributed write-to-event against
write-to-visible on the same writes.

usage: feed_report.py RUN_DIR SUBSCRIBERS ROUNDS RATE DURATION
(RUN_DIR holds todo-feed's --json output: todo.json, nchan.json and,
optionally, distributed.json; todo.metrics, the server's todo_feed_* lines)
"""
import datetime
import json
import os
import platform
import sys

run, subscribers, rounds, rate, duration = sys.argv[1:6]


def load(name):
    path = os.path.join(run, name + ".json")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path) as f:
        return json.load(f)


todo, nchan, dist = load("todo"), load("nchan"), load("distributed")
metrics = {}
path = os.path.join(run, "todo.metrics")
if os.path.exists(path):
    for line in open(path):
        name, value = line.split()[0].split("{")[0], float(line.split()[-1])
        metrics[name] = metrics.get(name, 0) + value


def ms(v):
    return f"{v:,.1f} ms"


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def met(ok):
    return "met" if ok else "NOT met"


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print(f"Run {now} on {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}; build {os.environ.get('BUILD', '?')}.")
print(f"Each server on one core (CPU 0); the client (todo-feed: the subscribers' epoll thread and the publisher's executor) on CPU 1. "
      f"{int(subscribers):,} subscribers; {rounds} rounds of one write (after one uncounted warm-up write); then {rate} writes/s for {duration}, open loop. "
      f"Event `data:` {todo['data_bytes_max'] if todo else '?'} bytes on todo-server, {nchan['nchan_body_bytes'] if nchan else '?'} on nchan.\n")

peers = [(n, r) for n, r in (("todo-server", todo), ("nginx + nchan", nchan)) if r]
print("| peer | ready | bytes per idle subscriber (RSS) | rounds p50 | rounds p99 | time-to-all median | time-to-all max | missed | server CPU/delivery | client CPU/delivery |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, r in peers:
    p = r["rounds"]
    print(f"| {name} | {r['ready']:,} of {r['subscribers']:,} | {r['rss_bytes_per_subscriber']:,.0f} | {ms(p['latency']['p50_ms'])} | {ms(p['latency']['p99_ms'])} "
          f"| {ms(p['to_all']['median_ms'])} | {ms(p['to_all']['max_ms'])} | {p['missed']:,} of {p['expected']:,} "
          f"| {p['server_cpu_us_per_delivery']:.2f} us | {p['client_cpu_us_per_delivery']:.2f} us |")
print()
print(f"Sustained, {rate} writes/s for {duration}:\n")
print("| peer | writes | deliveries made | missed (late) | p50 | p99 | max | write answered p99 | server CPU/delivery | client CPU/delivery |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, r in peers:
    s = r["sustained"]
    print(f"| {name} | {s['writes']:,} | {s['delivered']:,} of {s['expected']:,} | {s['missed']:,} ({s['late']:,}) | {ms(s['latency']['p50_ms'])} "
          f"| {ms(s['latency']['p99_ms'])} | {ms(s['latency']['max_ms'])} | {ms(s['answered']['p99_ms'])} "
          f"| {s['server_cpu_us_per_delivery']:.2f} us | {s['client_cpu_us_per_delivery']:.2f} us |")
print()

notes = []
for name, r in peers:
    gone = [f"{n:,} x {why}" for why, n in r["reasons"]]
    if gone:
        notes.append(f"{name}: subscribers that failed or ended: " + "; ".join(gone))
    for key in ("publisher_broken", "reader_error"):
        if r.get(key):
            notes.append(f"{name}: {key.replace('_', ' ')}: {r[key]}")
    if r["duplicates"] or r["foreign"]:
        notes.append(f"{name}: {r['duplicates']:,} events had twice, {r['foreign']:,} events without this run's marker")
    for phase in ("rounds", "sustained"):
        p = r[phase]
        if p["refused_writes"] or p["unanswered_writes"]:
            notes.append(f"{name}, {phase}: {p['refused_writes']} writes refused, {p['unanswered_writes']} unanswered")
if metrics:
    notes.append("todo-server's own counts: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(metrics.items())))
for n in notes:
    print(f"- {n}")
if notes:
    print()

if todo and nchan:
    t, n = todo, nchan
    p99 = t["rounds"]["latency"]["p99_ms"] / n["rounds"]["latency"]["p99_ms"]
    to_all = t["rounds"]["to_all"]["median_ms"] / n["rounds"]["to_all"]["median_ms"]
    s99 = t["sustained"]["latency"]["p99_ms"]
    print(f"todo-server / nchan, same run: rounds p99 {ratio(t['rounds']['latency']['p99_ms'], n['rounds']['latency']['p99_ms'])}, "
          f"time-to-all median {ratio(t['rounds']['to_all']['median_ms'], n['rounds']['to_all']['median_ms'])} "
          f"(max {ratio(t['rounds']['to_all']['max_ms'], n['rounds']['to_all']['max_ms'])}), "
          f"sustained p99 {ratio(s99, n['sustained']['latency']['p99_ms'])}, "
          f"bytes per idle subscriber {ratio(t['rss_bytes_per_subscriber'], n['rss_bytes_per_subscriber'])}.\n")
    missed = t["rounds"]["missed"] + t["sustained"]["missed"]
    print("Targets:")
    print(f"- p99 and time-to-all at most 0.5x nchan's: {p99:.2f}x and {to_all:.2f}x: {met(p99 <= 0.5 and to_all <= 0.5)}")
    print(f"- sustained p99 at most 100 ms: {ms(s99)}: {met(s99 <= 100)}")
    print(f"- at most 4 KiB per idle subscriber: {t['rss_bytes_per_subscriber']:,.0f} bytes: {met(t['rss_bytes_per_subscriber'] <= 4096)}")
    print(f"- no missed delivery: {missed:,} missed: {met(missed == 0)}")
    print()

if dist:
    r = dist["rounds"]
    feed99, vis99 = r["latency"]["p99_ms"], r["visible"]["p99_ms"]
    print(f"Distributed (two todo-servers, todo-worker, tansu, PostgreSQL, Redis on this machine): {dist['ready']:,} subscribers on server B, "
          f"{r['writes']} writes one at a time through server A; per write, write-to-visible is the time until B's every core "
          f"({dist['cores_watched']}) lists it (GET /todos?limit=1, polled every 1 ms).\n")
    print("| from sending the write to | p50 | p99 | max |")
    print("|---|---:|---:|---:|")
    print(f"| its 202 (A) | {ms(r['answered']['p50_ms'])} | {ms(r['answered']['p99_ms'])} | {ms(r['answered']['max_ms'])} |")
    print(f"| listed on every core of B | {ms(r['visible']['p50_ms'])} | {ms(r['visible']['p99_ms'])} | {ms(r['visible']['max_ms'])} |")
    print(f"| its event read by a subscriber on B | {ms(r['latency']['p50_ms'])} | {ms(r['latency']['p99_ms'])} | {ms(r['latency']['max_ms'])} |")
    print(f"| its event read by all {dist['ready']:,} | {ms(r['to_all']['median_ms'])} (median) | | {ms(r['to_all']['max_ms'])} |")
    print()
    print(f"Missed deliveries: {r['missed']:,} of {r['expected']:,}; writes not visible on every core: {r['not_visible_writes']}.")
    print(f"Feed p99 - write-to-visible p99 = {feed99 - vis99:+.1f} ms (target: at most +20 ms): {met(feed99 - vis99 <= 20)}.")

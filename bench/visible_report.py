"""The report of bench/visible.sh: per rate, write-to-visible percentiles,
where the time goes (joined with the worker's command log by command id),
a histogram, and the consumer lag; the two PNGs in docs/.

usage: visible_report.py RUN_DIR REPO_ROOT RATE...
"""
import datetime
import json
import os
import sys

run, root, rates = sys.argv[1], sys.argv[2], [r for r in sys.argv[3:]]


def unix_us(rfc3339):
    t = datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return int(t.timestamp() * 1_000_000)


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# The worker's command log: command id -> (received, committed).
worker = {}
with open(os.path.join(run, "worker.log")) as f:
    for line in f:
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if d.get("event") == "command" and "received" in d:
            worker[d["command_id"]] = (unix_us(d["received"]), unix_us(d["time"]))

now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
parts = os.environ.get("PARTITIONS", "?")
print(f"Run {now} on {os.cpu_count()} CPUs; two todo-servers (every core watched), one todo-worker, tansu ({parts} partitions), PostgreSQL, Redis on this machine.\n")
curves, lags = {}, {}
for rate in rates:
    report = json.load(open(os.path.join(run, f"report-{rate}.json")))
    stages = {k: [] for k in ("accepted", "received", "committed", "first", "every", "installed")}
    visible = []
    with open(os.path.join(run, f"records-{rate}.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            listed = r["listed_us"]
            if any(t is None for t in listed):
                continue
            due = r["due_us"]
            every = max(listed)
            visible.append((every - due) / 1000)
            stages["accepted"].append((r["accepted_us"] - due) / 1000)
            w = worker.get(r["command_id"])
            if w:
                stages["received"].append((w[0] - due) / 1000)
                stages["committed"].append((w[1] - due) / 1000)
                stages["installed"].append((every - w[1]) / 1000)
            stages["first"].append((min(listed) - due) / 1000)
            stages["every"].append((every - due) / 1000)
    curves[rate] = sorted(visible)
    refused = sum(report["refused"].values())
    print(f"### {int(float(rate)):,} writes/s for {report['seconds']:.0f} s\n")
    print(f"Sent {report['sent']:,}, accepted {report['accepted']:,}, refused {refused}; "
          f"{report['cores_watched']} cores watched; not listed everywhere: {report['not_listed_everywhere']}; "
          f"passed a core unseen: {report['passed_unseen']}; joined with the worker's log: {len(stages['committed']):,}.\n")
    print("| from the write's due time to | p50 | p90 | p99 | p99.9 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    names = [
        ("accepted", "202 (the broker has it)"),
        ("received", "the worker took its record"),
        ("committed", "its batch committed"),
        ("first", "listed on the first core"),
        ("every", "**listed on every core**"),
    ]
    for key, name in names:
        v = stages[key]
        print(f"| {name} | {pct(v, .5):.1f} ms | {pct(v, .9):.1f} ms | {pct(v, .99):.1f} ms | {pct(v, .999):.1f} ms | {max(v) if v else float('nan'):.1f} ms |")
    v = stages["installed"]
    print(f"| (commit to every core) | {pct(v, .5):.1f} ms | {pct(v, .9):.1f} ms | {pct(v, .99):.1f} ms | {pct(v, .999):.1f} ms | {max(v) if v else float('nan'):.1f} ms |")
    print()
    print("Listed on every core after (histogram): " + ", ".join(f"{label} ms: {n:,}" for label, n in report["histogram_every_core_ms"] if n) + "\n")
    points = []
    with open(os.path.join(run, f"lag-{rate}.txt")) as f:
        for line in f:
            t, lag = line.split()
            points.append((float(t), float(lag)))
    if points:
        t0 = points[0][0]
        lags[rate] = [(t - t0, lag) for t, lag in points]
        print(f"Consumer lag (messages, sampled every second): max {max(l for _, l in points):,.0f}, last {points[-1][1]:,.0f}.\n")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("(matplotlib not installed: no PNGs)")
    sys.exit(0)

fig, ax = plt.subplots(figsize=(8, 4.5))
for rate, v in curves.items():
    ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=f"{int(float(rate)):,} writes/s")
ax.set_xscale("log")
ax.set_xlabel("ms from the write's due time until listed on every core of two servers")
ax.set_ylabel("fraction of writes")
ax.grid(True, which="both", alpha=.3)
ax.legend()
ax.set_title(f"Write to visible (open loop, release build, {parts} partitions)")
fig.tight_layout()
fig.savefig(os.path.join(root, "docs", "write-visible.png"), dpi=100)

fig, ax = plt.subplots(figsize=(8, 4.5))
for rate, points in lags.items():
    ax.plot([t for t, _ in points], [l for _, l in points], marker=".", label=f"{int(float(rate)):,} writes/s")
ax.set_xlabel("seconds since the writes began")
ax.set_ylabel("consumer lag (records, all partitions)")
ax.grid(True, alpha=.3)
ax.legend()
ax.set_title(f"todo-worker consumer lag while writing ({parts} partitions)")
fig.tight_layout()
fig.savefig(os.path.join(root, "docs", "write-lag.png"), dpi=100)
print("Plots: docs/write-visible.png, docs/write-lag.png.")

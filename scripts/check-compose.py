#!/usr/bin/env python3
"""Validate docker-compose.yml and its monitoring files without a Docker engine.

Compose: the file parses (merge keys resolved); every service has an image or
a build whose context holds a Dockerfile, a health check and
`restart: unless-stopped`; every depends_on names a service; every
environment variable given to one of our binaries is one that binary reads
(its clap `env = "..."` names) and is in docs/configuration.md; every ${VAR}
the file uses has a default or a required message and is documented there;
PostgreSQL's health check goes over TCP (`pg_isready -h 127.0.0.1`);
PostgreSQL's and Kafka's data are in named volumes mounted where they write
it; the broker's KAFKA_NUM_PARTITIONS is the worker's partition count; a
health check that asks one of our binaries over HTTP asks a port it listens
on; in the usage comment, `docker compose exec` has -T and a curl that sends
a body says `Content-Type: application/json`.

Monitoring: every Prometheus scrape target is HOST:PORT of a compose service
that listens there (our binaries: the address their configuration serves
/metrics on, reachable from the network; Prometheus: its web address), and
every service running one of our binaries is scraped; Grafana's
provisioning files exist and parse, its Prometheus datasource points at the
Prometheus service, the dashboards directory it names is mounted, every
dashboard JSON parses, names a provisioned datasource, and every panel
expression names only metrics the code exports (the `# TYPE` lines of
server/src, worker/src and lb/src, histograms with their _bucket, _sum and
_count series).

Exit 1 with the problems listed."""

import glob
import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE = os.path.join(ROOT, "docker-compose.yml")
# Which sources define each binary's configuration.
BINARIES = {
    "todo-server": ["server/src", "runtime/src"],
    "todo-worker": ["worker/src"],
    "todo-lb": ["lb/src", "runtime/src"],
}
# The variable naming the address each binary answers GET /metrics on.
METRICS_ADDRESS = {
    "todo-server": "TODO_LISTEN",
    "todo-worker": "TODO_WORKER_METRICS_LISTEN",
    "todo-lb": "TODO_LB_ADMIN",
}
# Other variables naming addresses a binary listens on.
LISTEN_ADDRESSES = {
    "todo-server": ["TODO_LISTEN"],
    "todo-worker": ["TODO_WORKER_METRICS_LISTEN"],
    "todo-lb": ["TODO_LB_LISTEN", "TODO_LB_ADMIN"],
}
# Where the code that renders /metrics lives.
METRIC_SOURCES = ["server/src", "worker/src", "lb/src"]
# PromQL words that are not metric names.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}


def rust_files(rel):
    path = os.path.join(ROOT, rel)
    if os.path.isfile(path):
        return [path]
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]


def env_names(paths):
    names = set()
    for rel in paths:
        for f in rust_files(rel):
            names.update(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', open(f).read()))
    return names


def env_defaults(paths):
    """clap defaults by variable: `env = "X", default_value(_t) = ...`."""
    defaults = {}
    for rel in paths:
        for f in rust_files(rel):
            for m in re.finditer(
                r'env\s*=\s*"([A-Z0-9_]+)"[^\]]*?default_value(?:_t)?\s*=\s*("([^"]*)"|[^,\)\]]+)',
                open(f).read(),
            ):
                defaults[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(2).strip()
    return defaults


def exported_metrics():
    """Series names the code exports: name -> kind."""
    kinds = {}
    for rel in METRIC_SOURCES:
        for f in rust_files(rel):
            text = open(f).read()
            for name, kind in re.findall(r"# TYPE (todo_[a-z0-9_]+) (counter|gauge|histogram)", text):
                kinds[name] = kind
            # The worker's histograms write their TYPE line from the name
            # they are rendered under.
            for name in re.findall(r'\.render\(\s*&mut out,\s*"(todo_[a-z0-9_]+)"', text):
                kinds[name] = "histogram"
            # The worker's metrics without labels write theirs through
            # `single(&mut out, NAME, KIND, ...)`.
            for name, kind in re.findall(
                r'\bsingle\(\s*&mut out,\s*"(todo_[a-z0-9_]+)",\s*"(counter|gauge)"', text
            ):
                kinds[name] = kind
    series = set()
    for name, kind in kinds.items():
        series.add(name)
        if kind == "histogram":
            series.update(name + s for s in ("_bucket", "_sum", "_count"))
    return series


def expr_metrics(expr):
    """The metric names a PromQL expression reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)  # dashboard variables
    names = []
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        if re.fullmatch(r"\d+[smhdwy]", word) or (m.start() > 0 and e[m.start() - 1].isdigit()):
            continue
        names.append(word)
    return names


def service_env(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def binary_of(svc):
    command = svc.get("command") or []
    return command[0] if isinstance(command, list) and command else None


def address_port(addr):
    """(host, port) of HOST:PORT or [V6]:PORT; None for `off` or nonsense."""
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d+)", addr or "")
    return (m.group(1), int(m.group(2))) if m else None


def bind_mounts(svc):
    """container path -> host path of the service's bind mounts."""
    out = {}
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2 and parts[0].startswith((".", "/")):
                out[parts[1]] = os.path.normpath(os.path.join(ROOT, parts[0]))
    return out


def host_path(mounts, container_path):
    """The host file or directory behind `container_path`, through a mount."""
    for target, source in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return os.path.normpath(source + container_path[len(target):])
    return None


def named_volume_at(svc, volumes, target):
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2 and parts[0] in volumes and parts[1].rstrip("/") == target.rstrip("/"):
                return True
    return False


def image_of(svc, prefix):
    return str(svc.get("image", "")).split(":")[0] == prefix


def comment_commands(text):
    """Shell commands in the file's comments, continuation lines joined."""
    commands, current = [], ""
    for line in text.splitlines():
        if not line.startswith("#"):
            if current:
                commands.append(current)
            current = ""
            continue
        body = line.lstrip("#").strip()
        current = (current + " " + body).strip()
        if current.endswith("\\"):
            current = current[:-1]
        else:
            commands.append(current)
            current = ""
    return commands


class Listening:
    """Ports each service listens on, from its configuration."""

    def __init__(self, services, defaults):
        self.services = services
        self.defaults = defaults

    def address(self, name, var):
        env = service_env(self.services[name])
        value = env.get(var, self.defaults.get(var))
        return address_port(value)

    def metrics_port(self, name):
        """(port, reachable from other containers) where /metrics is, or None."""
        svc = self.services[name]
        binary = binary_of(svc)
        if binary in METRICS_ADDRESS:
            addr = self.address(name, METRICS_ADDRESS[binary])
            if addr is None:
                return None
            return addr[1], addr[0] in ("0.0.0.0", "::", "")
        if image_of(svc, "prom/prometheus"):
            return self.prometheus_port(svc), True
        return None

    def ports(self, name):
        svc = self.services[name]
        binary = binary_of(svc)
        ports = set()
        for var in LISTEN_ADDRESSES.get(binary, []):
            addr = self.address(name, var)
            if addr:
                ports.add(addr[1])
        if image_of(svc, "prom/prometheus"):
            ports.add(self.prometheus_port(svc))
        if image_of(svc, "grafana/grafana"):
            ports.add(int(service_env(svc).get("GF_SERVER_HTTP_PORT") or 3000))
        return ports

    @staticmethod
    def prometheus_port(svc):
        for arg in svc.get("command") or []:
            m = re.fullmatch(r"--web\.listen-address=.*:(\d+)", str(arg))
            if m:
                return int(m.group(1))
        return 9090


def check_compose(text, doc, services, problems, readme):
    known = {b: env_names(p) for b, p in BINARIES.items()}
    volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        if "image" not in svc and "build" not in svc:
            problems.append(f"{name}: neither image nor build")
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isfile(os.path.join(ROOT, ctx, dockerfile)):
                problems.append(f"{name}: build context {ctx} has no {dockerfile}")
        if "healthcheck" not in svc:
            problems.append(f"{name}: no healthcheck")
        # Every service here runs for good; a one-shot job would not.
        if svc.get("restart") != "unless-stopped":
            problems.append(f"{name}: restart is {svc.get('restart')!r}, not unless-stopped")
        deps = svc.get("depends_on") or {}
        for dep in deps:
            if dep not in services:
                problems.append(f"{name}: depends_on unknown service {dep}")
        binary = binary_of(svc)
        env = service_env(svc)
        if binary in known:
            for var in env:
                if var not in known[binary]:
                    problems.append(f"{name}: {binary} does not read {var}")
                if var not in readme:
                    problems.append(f"{name}: {var} is not in docs/configuration.md")
        elif binary is not None and binary.startswith("todo"):
            problems.append(f"{name}: unknown binary {binary}")
        for mount in svc.get("volumes") or []:
            source = mount.split(":")[0] if isinstance(mount, str) else None
            if source and not source.startswith((".", "/")) and source not in volumes:
                problems.append(f"{name}: volume {source} is not declared under volumes:")
            if source and source.startswith(".") and not os.path.exists(os.path.join(ROOT, source)):
                problems.append(f"{name}: {source} does not exist")

    for m in re.finditer(r"\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}", text):
        var, rest = m.group(1), m.group(2)
        if not rest:
            problems.append(f"${{{var}}} has neither a default nor a required message")
        if var not in readme:
            problems.append(f"${{{var}}} is not in docs/configuration.md")

    postgres = [n for n, s in services.items() if image_of(s, "postgres")]
    kafka = [n for n, s in services.items() if image_of(s, "apache/kafka")]
    if not postgres or not kafka:
        problems.append("no postgres or no apache/kafka service")
    for name in postgres:
        svc = services[name]
        test = (svc.get("healthcheck") or {}).get("test") or []
        test = " ".join(test) if isinstance(test, list) else str(test)
        # The image's first start serves the socket only: ask over TCP.
        if "pg_isready" not in test or not re.search(r"-h\s+127\.0\.0\.1\b", test):
            problems.append(f"{name}: health check is not `pg_isready -h 127.0.0.1 ...`: {test}")
        data = service_env(svc).get("PGDATA") or "/var/lib/postgresql/data"
        if not named_volume_at(svc, volumes, data):
            problems.append(f"{name}: no named volume at {data}")
    worker_partitions = None
    for name, svc in services.items():
        if binary_of(svc) == "todo-worker":
            worker_partitions = service_env(svc).get(
                "TODO_TOPIC_PARTITIONS", env_defaults(BINARIES["todo-worker"]).get("TODO_TOPIC_PARTITIONS")
            )
    for name in kafka:
        env = service_env(services[name])
        log_dirs = env.get("KAFKA_LOG_DIRS")
        if not log_dirs or not named_volume_at(services[name], volumes, log_dirs):
            problems.append(f"{name}: KAFKA_LOG_DIRS ({log_dirs}) is not a named volume")
        partitions = env.get("KAFKA_NUM_PARTITIONS")
        if partitions is None:
            problems.append(f"{name}: KAFKA_NUM_PARTITIONS is not set")
        elif worker_partitions is not None and str(partitions) != str(worker_partitions):
            problems.append(
                f"{name}: KAFKA_NUM_PARTITIONS {partitions} is not the worker's {worker_partitions}"
            )

    for command in comment_commands(text):
        if "docker compose exec" in command and not re.search(r"docker compose exec\s+(\S+\s+)*-T\b", command):
            problems.append(f"usage comment: `docker compose exec` without -T: {command}")
        if re.search(r"\bcurl\b", command) and re.search(r"\s(-d|--data\S*)\s", command):
            if not re.search(r"Content-Type:\s*application/json", command, re.I):
                problems.append(f"usage comment: curl sends a body without Content-Type: application/json: {command}")


def check_monitoring(services, problems):
    listening = Listening(services, env_defaults([p for ps in BINARIES.values() for p in ps]))
    for name, svc in services.items():
        test = (svc.get("healthcheck") or {}).get("test") or []
        test = " ".join(test) if isinstance(test, list) else str(test)
        if binary_of(svc) in BINARIES:
            for port in re.findall(r"http://localhost:(\d+)/", test):
                if int(port) not in listening.ports(name):
                    problems.append(f"{name}: health check asks port {port}, which it does not listen on")

    proms = [n for n, s in services.items() if image_of(s, "prom/prometheus")]
    if len(proms) != 1:
        problems.append(f"expected one prom/prometheus service, found {proms}")
        return
    prom = proms[0]
    config_path = "/etc/prometheus/prometheus.yml"
    for arg in services[prom].get("command") or []:
        m = re.fullmatch(r"--config\.file=(.+)", str(arg))
        if m:
            config_path = m.group(1)
    source = host_path(bind_mounts(services[prom]), config_path)
    if not source or not os.path.isfile(source):
        problems.append(f"{prom}: {config_path} is not a mounted file")
        return
    config = yaml.safe_load(open(source)) or {}
    scraped = set()
    for job in config.get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = str(target).rpartition(":")
                where = f"{os.path.relpath(source, ROOT)}: job {job.get('job_name')}: {target}"
                if host not in services:
                    problems.append(f"{where}: {host} is not a compose service")
                    continue
                metrics = listening.metrics_port(host)
                if metrics is None:
                    problems.append(f"{where}: {host} serves no /metrics in its configuration")
                elif str(metrics[0]) != port:
                    problems.append(f"{where}: {host} serves /metrics on port {metrics[0]}")
                elif not metrics[1]:
                    problems.append(f"{where}: {host} listens on loopback only")
                else:
                    scraped.add(host)
    for name, svc in services.items():
        if (binary_of(svc) in BINARIES or name == prom) and name not in scraped:
            problems.append(f"{name}: has metrics but Prometheus does not scrape it")

    grafanas = [n for n, s in services.items() if image_of(s, "grafana/grafana")]
    if len(grafanas) != 1:
        problems.append(f"expected one grafana/grafana service, found {grafanas}")
        return
    graf = grafanas[0]
    mounts = bind_mounts(services[graf])
    provisioning = host_path(mounts, "/etc/grafana/provisioning")
    if not provisioning or not os.path.isdir(provisioning):
        problems.append(f"{graf}: /etc/grafana/provisioning is not a mounted directory")
        return
    uids = set()
    datasource_files = glob.glob(os.path.join(provisioning, "datasources", "*.y*ml"))
    if not datasource_files:
        problems.append(f"{graf}: no datasource in {os.path.relpath(provisioning, ROOT)}/datasources")
    for f in datasource_files:
        for ds in (yaml.safe_load(open(f)) or {}).get("datasources") or []:
            uids.add(ds.get("uid"))
            if ds.get("type") == "prometheus":
                m = re.fullmatch(r"https?://([^:/]+):(\d+)/?", str(ds.get("url")))
                if not m or m.group(1) != prom or int(m.group(2)) not in listening.ports(prom):
                    problems.append(f"{os.path.relpath(f, ROOT)}: url {ds.get('url')} is not the {prom} service")
    known = exported_metrics()
    dashboards = []
    provider_files = glob.glob(os.path.join(provisioning, "dashboards", "*.y*ml"))
    if not provider_files:
        problems.append(f"{graf}: no dashboard provider in {os.path.relpath(provisioning, ROOT)}/dashboards")
    for f in provider_files:
        for provider in (yaml.safe_load(open(f)) or {}).get("providers") or []:
            path = (provider.get("options") or {}).get("path")
            folder = host_path(mounts, path or "")
            if not folder or not os.path.isdir(folder):
                problems.append(f"{os.path.relpath(f, ROOT)}: {path} is not a mounted directory")
                continue
            found = glob.glob(os.path.join(folder, "*.json"))
            if not found:
                problems.append(f"{os.path.relpath(f, ROOT)}: no dashboard JSON in {path}")
            dashboards.extend(found)
    home = service_env(services[graf]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and not os.path.isfile(host_path(mounts, home) or ""):
        problems.append(f"{graf}: home dashboard {home} is not a mounted file")
    for f in dashboards:
        rel = os.path.relpath(f, ROOT)
        try:
            dash = json.load(open(f))
        except ValueError as e:
            problems.append(f"{rel}: not JSON: {e}")
            continue
        panels = list(dash.get("panels") or [])
        for p in list(panels):
            panels.extend(p.get("panels") or [])
        exprs = 0
        for p in panels:
            for ds in [p.get("datasource")] + [t.get("datasource") for t in p.get("targets") or []]:
                if isinstance(ds, dict) and ds.get("uid") not in uids:
                    problems.append(f"{rel}: panel {p.get('title')!r}: datasource {ds.get('uid')} is not provisioned")
            for t in p.get("targets") or []:
                expr = t.get("expr")
                if not expr:
                    continue
                exprs += 1
                names = expr_metrics(expr)
                if not names:
                    problems.append(f"{rel}: panel {p.get('title')!r}: no metric in {expr}")
                for n in names:
                    if n not in known:
                        problems.append(f"{rel}: panel {p.get('title')!r}: {n} is not exported by the code")
        if exprs == 0:
            problems.append(f"{rel}: no panel expression")


def main():
    problems = []
    text = open(COMPOSE).read()
    readme = open(os.path.join(ROOT, "docs", "configuration.md")).read()
    doc = yaml.safe_load(text)
    services = doc.get("services") or {}
    if not services:
        problems.append("no services")
    check_compose(text, doc, services, problems, readme)
    check_monitoring(services, problems)
    problems = list(dict.fromkeys(problems))  # each once, in order
    if problems:
        print("docker-compose.yml:", *problems, sep="\n  ")
        return 1
    print(f"docker-compose.yml: {len(services)} services and their monitoring check out")
    return 0


if __name__ == "__main__":
    sys.exit(main())

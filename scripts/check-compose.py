#!/usr/bin/env python3
"""Validate docker-compose.yml without a Docker engine.

Checks: the file parses (merge keys resolved); every service has an image or
a build whose context holds a Dockerfile, and a health check; every
depends_on names a service; every environment variable given to one of our
binaries is one that binary reads (its clap `env = "..."` names) and is in
docs/configuration.md; every ${VAR} the file uses has a default or a required
message and is documented there. Exit 1 with the problems listed."""

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


def env_names(paths):
    names = set()
    for rel in paths:
        path = os.path.join(ROOT, rel)
        files = [path] if os.path.isfile(path) else [
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")
        ]
        for f in files:
            names.update(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', open(f).read()))
    return names


def main():
    problems = []
    text = open(COMPOSE).read()
    readme = open(os.path.join(ROOT, "docs", "configuration.md")).read()
    doc = yaml.safe_load(text)
    services = doc.get("services") or {}
    if not services:
        problems.append("no services")
    known = {b: env_names(p) for b, p in BINARIES.items()}
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
        deps = svc.get("depends_on") or {}
        for dep in deps:
            if dep not in services:
                problems.append(f"{name}: depends_on unknown service {dep}")
        command = svc.get("command") or []
        binary = command[0] if isinstance(command, list) and command else None
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        if binary in known:
            for var in env:
                if var not in known[binary]:
                    problems.append(f"{name}: {binary} does not read {var}")
                if var not in readme:
                    problems.append(f"{name}: {var} is not in docs/configuration.md")
        elif binary is not None and binary.startswith("todo"):
            problems.append(f"{name}: unknown binary {binary}")
    for m in re.finditer(r"\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}", text):
        var, rest = m.group(1), m.group(2)
        if not rest:
            problems.append(f"${{{var}}} has neither a default nor a required message")
        if var not in readme:
            problems.append(f"${{{var}}} is not in docs/configuration.md")
    if problems:
        print("docker-compose.yml:", *problems, sep="\n  ")
        return 1
    print(f"docker-compose.yml: {len(services)} services check out")
    return 0


if __name__ == "__main__":
    sys.exit(main())

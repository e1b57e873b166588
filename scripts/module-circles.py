#!/usr/bin/env python3
"""Module circles inside each crate of the workspace.

A file's module depends on another when it names it by path: `use crate::a::B`,
`crate::a::f()`, `super::b::C`, `self::c::D` (use trees expanded, comments,
strings and `#[cfg(test)]` blocks left out). A circle is a set of modules that
reach each other through such names (a strongly connected component of more
than one module). A parent and its own children may name each other (a
`routes/mod.rs` and its `routes/todos.rs`; the crate root and every module),
so names between a module and its ancestor are not counted.

    scripts/module-circles.py [CRATE_DIR...]    # default: every crate with a src/lib.rs

Prints each circle with the names that make it; exit 1 when there is one.
Run by scripts/check-layout.sh.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(src):
    """Blank out comments, string and char literals, keeping line count."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if src[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:i + 40]) and (i == 0 or not re.match(r"[A-Za-z0-9_]", src[i - 1])):
            m = re.match(r'r(#*)"', src[i:])
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])[^']{0,8}'", src[i:i + 12]) and not re.match(r"'" + IDENT + r"[^']", src[i:i + 40]):
            m = re.match(r"'(\\[^']*|[^\\'])'", src[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_test_blocks(src):
    """Leave out `#[cfg(test)]` items (test modules name their own module)."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]", src)
        if not m:
            return src
        j = m.end()
        brace = src.find("{", j)
        semi = src.find(";", j)
        if brace < 0 or (0 <= semi < brace):
            src = src[:m.start()] + src[(semi + 1 if semi >= 0 else len(src)):]
            continue
        depth, k = 0, brace
        while k < len(src):
            if src[k] == "{":
                depth += 1
            elif src[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        src = src[:m.start()] + src[k + 1:]


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    # Aliases first (`a::B as C`), while the spaces still mark them.
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix, inner = tree[:i], tree[i + 1:tree.rindex("}")]
                parts, d, start = [], 0, 0
                for j, c in enumerate(inner):
                    if c == "{":
                        d += 1
                    elif c == "}":
                        d -= 1
                    elif c == "," and d == 0:
                        parts.append(inner[start:j])
                        start = j + 1
                parts.append(inner[start:])
                paths = []
                for p in parts:
                    if p:
                        paths.extend(prefix + q for q in expand_use(p))
                return paths
            depth += 1
    return [tree]


def module_of(src_dir, path):
    rel = os.path.relpath(path, src_dir)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def crate_modules(crate_dir):
    src_dir = os.path.join(crate_dir, "src")
    mods = {}
    for dirpath, dirnames, filenames in os.walk(src_dir):
        if os.path.relpath(dirpath, src_dir).split(os.sep)[0] == "bin":
            continue
        for f in filenames:
            if not f.endswith(".rs") or (f == "main.rs" and dirpath == src_dir and os.path.exists(os.path.join(src_dir, "lib.rs"))):
                continue
            p = os.path.join(dirpath, f)
            mods[module_of(src_dir, p)] = os.path.relpath(p, ROOT)
    return mods


def resolve(mods, here, path):
    """The module a path names, or None for one outside the crate."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    target = base
    for s in segs:
        if base + (s,) in mods or any(m[:len(base) + 1] == base + (s,) for m in mods):
            base = base + (s,)
            if base in mods:
                target = base
        else:
            break
    return target


def edges_of(mods):
    edges = {m: {} for m in mods}
    for here, file in mods.items():
        with open(os.path.join(ROOT, file)) as fh:
            src = strip_test_blocks(strip_comments_and_strings(fh.read()))
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", src):
            paths.extend(expand_use(m.group(1)))
        body = re.sub(r"\buse\s+[^;]+;", "", src)
        paths.extend(re.findall(r"(?<![A-Za-z0-9_:$])((?:crate|super|self)(?:::" + IDENT + r")+)", body))
        for p in paths:
            t = resolve(mods, here, p)
            if t is None or t == here:
                continue
            # A module and its ancestor may name each other.
            if t == here[:len(t)] or here == t[:len(here)]:
                continue
            edges[here].setdefault(t, set()).add(p)
    return edges


def circles(edges):
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(args):
    crates = args or sorted(
        d for d in os.listdir(ROOT)
        if os.path.exists(os.path.join(ROOT, d, "src", "lib.rs")) or os.path.exists(os.path.join(ROOT, d, "src", "main.rs")))
    status = 0
    for crate in crates:
        label = os.path.basename(os.path.normpath(crate))
        mods = crate_modules(os.path.join(ROOT, crate))
        edges = edges_of(mods)
        for comp in circles(edges):
            status = 1
            names = {m: "::".join(m) for m in comp}
            print(f"{label}: a module circle of {len(comp)}: {', '.join(names[m] for m in comp)}", file=sys.stderr)
            for m in comp:
                for t, via in sorted(edges[m].items()):
                    if t in comp:
                        print(f"  {mods[m]} -> {names[t]} ({', '.join(sorted(via))})", file=sys.stderr)
    if status == 0:
        print(f"module circles: none in {', '.join(crates)}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

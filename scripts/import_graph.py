#!/usr/bin/env python3
"""The module import graph of src/: which module uses which, its circles, and
arrows from the engine to the Postgres glue.

    python3 scripts/import_graph.py            # check: exit 1 on a circle or an engine -> pg arrow
    python3 scripts/import_graph.py --dot      # the graph in Graphviz dot, on stdout

A module is a file (src/engine/connector/kafka.rs is engine::connector::kafka,
a mod.rs names its folder). An arrow A -> B means A's code names a path into B
(`use crate::..`, `use super::..`, or a `crate::..` path in an expression).
Declaring a child module (`pub mod kafka;`) is not an arrow; naming an item of a
parent or a child is. Comments and unit-test modules (`#[cfg(test)] mod tests`)
are left out: tests may reach anywhere.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return tuple(rel)


def strip(text):
    """Drop comments, string literals and #[cfg(test)] modules."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [re.sub(r"as\w+$", "", tree)]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    return [p for part in parts if part for p in expand(prefix + part)]


def resolve(mod, is_dir_mod, path, modules):
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(mod) if is_dir_mod else list(mod[:-1]) if segs[0] == "super" else list(mod)
        if segs[0] == "super" and is_dir_mod:
            base = base[:-1]
        segs = segs[1:]
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    else:
        return None
    best = None
    for n in range(len(segs) + 1):
        cand = tuple(base + segs[:n])
        if cand in modules:
            best = cand
    return best


def graph():
    files = []
    for d, _, names in os.walk(ROOT):
        files += [os.path.join(d, n) for n in names if n.endswith(".rs")]
    modules = {module_of(f): f for f in files}
    edges = {m: set() for m in modules}
    for mod, f in modules.items():
        is_dir_mod = os.path.basename(f) in ("mod.rs", "lib.rs")
        text = strip(open(f, encoding="utf-8").read())
        paths = []
        for m in re.finditer(r"\buse\s+((?:crate|super|self)\b[^;]*);", text):
            paths += expand(m.group(1))
        paths += re.findall(r"\b(?:crate|super)(?:::\w+)+", re.sub(r"\buse\s+[^;]*;", "", text))
        # Paths that start at a child module of this one (`kafka::SPEC`).
        children = {c[-1] for c in modules if len(c) == len(mod) + 1 and c[:-1] == mod}
        for c in children:
            if re.search(r"(?<![:\w])" + c + r"::\w", re.sub(r"\b(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*;", "", text)):
                paths.append("self::" + c)
        for p in paths:
            target = resolve(mod, is_dir_mod, p, modules)
            if target and target != mod and target != ():
                edges[mod].add(target)
    return edges


def circles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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


def name(m):
    return "::".join(m) or "crate"


def main():
    edges = graph()
    if "--dot" in sys.argv:
        print("digraph pg_sink {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f'  "{name(a)}" -> "{name(b)}";')
        print("}")
        return 0
    bad = 0
    for comp in circles(edges):
        bad += 1
        print("circle: " + " <-> ".join(name(m) for m in comp))
    for a in sorted(edges):
        if a[:1] == ("engine",):
            for b in sorted(edges[a]):
                if b[:1] == ("pg",):
                    bad += 1
                    print(f"engine imports glue: {name(a)} -> {name(b)}")
    n = sum(len(v) for v in edges.values())
    print(f"{len(edges)} modules, {n} arrows, {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The library's module dependency graph, from the source files' `crate::`/`super::` paths.

Usage: module-deps.py SRC_DIR [--dot]

Each file is a module (`a/b.rs` and `a/b/mod.rs` are `a::b`). A path `crate::a::b::Item` used
in a file is an edge to the deepest module that exists among `a::b`, `a` (re-exports through
`lib.rs` or a `mod.rs` are followed to the module that defines the item). A parent declaring
its children (`mod x;`) and re-exporting their items is not an edge; a parent using a child's
item is, so a child may not use its parent's own items back. Prints the edges
and exits 1 if any two modules depend on each other, directly or through others (listing each
strongly connected group).
"""
import os
import re
import sys

src = sys.argv[1]
modules = {}  # module path tuple -> file
for dirpath, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
        if rel[-1] == "mod":
            rel = rel[:-1]
        if rel == ["lib"]:
            rel = []
        modules[tuple(rel)] = os.path.join(dirpath, f)


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def expand(prefix, body):
    """Expands `a::{b, c::{d, e}}` into paths."""
    out = []
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    for p in parts:
        p = p.strip()
        if not p:
            continue
        m = re.match(r"^([\w:]*?)(::)?\{(.*)\}$", p, re.S)
        if m:
            head = [x for x in m.group(1).split("::") if x]
            out += expand(prefix + head, m.group(3))
        else:
            p = re.sub(r"\s+as\s+\w+$", "", p)
            out.append(prefix + [x for x in p.split("::") if x])
    return out


def paths_in(mod, text):
    text = strip_comments(text)
    # Re-exports and module declarations are not uses.
    text = re.sub(r"\bpub(?:\([\w ]+\))?\s+use\s+[^;]*;", "", text, flags=re.S)
    found = []
    children = {m[-1] for m in modules if len(m) == len(mod) + 1 and m[: len(mod)] == mod}
    for m in re.finditer(r"(?<![\w:])(\w+)::\w+", text):
        if m.group(1) in children:
            found.append(["self", m.group(1)])
    for m in re.finditer(r"\buse\s+((?:crate|super|self)\b[^;]*);", text, re.S):
        # `use super::*;` is a unit-test module importing the file it sits in.
        if re.fullmatch(r"super::\*", m.group(1).strip()):
            continue
        found += expand([], m.group(1))
    for m in re.finditer(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", text):
        found.append(m.group(1).split("::"))
    out = []
    for p in found:
        base = list(mod)
        if p[0] == "crate":
            base, p = [], p[1:]
        elif p[0] == "self":
            p = p[1:]
        while p and p[0] == "super":
            base, p = base[:-1], p[1:]
        out.append(base + p)
    return out


reexports = {}  # (module, name) -> full path it re-exports
for mod, f in modules.items():
    text = strip_comments(open(f, encoding="utf-8").read())
    for m in re.finditer(r"\bpub(?:\([\w ]+\))?\s+use\s+([^;]*);", text, re.S):
        for p in expand([], m.group(1)):
            base = list(mod)
            if p and p[0] == "crate":
                base, p = [], p[1:]
            elif p and p[0] == "self":
                p = p[1:]
            while p and p[0] == "super":
                base, p = base[:-1], p[1:]
            if p and p[0] not in ("std", "oci_spec", "cap_std", "rustix", "serde"):
                reexports[(mod, p[-1])] = base + p


def resolve(path, seen=0):
    for n in range(len(path), 0, -1):
        prefix = tuple(path[:n])
        if prefix in modules:
            if n < len(path) and (prefix, path[n]) in reexports and seen < 10:
                return resolve(reexports[(prefix, path[n])], seen + 1)
            return prefix
    return None


edges = {m: set() for m in modules}
for mod, f in modules.items():
    for p in paths_in(mod, open(f, encoding="utf-8").read()):
        target = resolve(p)
        if target is None or target == mod:
            continue
        edges[mod].add(target)

name = lambda m: "::".join(m) or "crate"

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


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
        sccs.append(comp)


sys.setrecursionlimit(10000)
for v in sorted(modules):
    if v not in index:
        visit(v)

if "--dot" in sys.argv:
    print("digraph modules {")
    for m in sorted(edges):
        for t in sorted(edges[m]):
            print(f'  "{name(m)}" -> "{name(t)}";')
    print("}")
else:
    for m in sorted(edges):
        if edges[m]:
            print(f"{name(m)} -> {', '.join(sorted(name(t) for t in edges[m]))}")

cycles = [c for c in sccs if len(c) > 1]
for c in cycles:
    print("cycle: " + " <-> ".join(sorted(name(m) for m in c)), file=sys.stderr)
sys.exit(1 if cycles else 0)

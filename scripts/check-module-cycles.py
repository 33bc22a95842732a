#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a circle.

For every workspace crate (each `src/` under a member that has lib.rs or main.rs) this maps
each source file to its module path (src/a/b.rs and src/a/b/mod.rs are `a::b`), collects the
`crate::`, `super::` and `self::` paths the file names (in `use` items and inline in code,
comments and strings stripped), resolves each to the deepest module that is a file, and looks
for cycles in that graph. A child naming its own ancestor (`impl super::Conn` in conn/ops) is
not an edge: the ancestor declares the child, so that is one room, not a circle between rooms.
An inherent `impl` block of a type from another module (`impl Core` in replication.rs, Core
being server's) is an edge from the type's module to the one holding the methods when the
type's module calls one of them on the type (`self.m(`, `Self::m(`, `Type::m(`; calls are
matched by name, not resolved, and calls through a field or a variable are not seen).

Usage: scripts/check-module-cycles.py [--self-test] [CRATE_SRC_DIR ...]
(default: every workspace member). Exit status 1 and one line per cycle when any is found.
--self-test first checks that a made-up crate with a circle (and one without) is judged right.
"""

import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def workspace_src_dirs():
    members = []
    text = open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8").read()
    block = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S)
    if block:
        members = re.findall(r'"([^"]+)"', block.group(1))
    dirs = []
    for member in members:
        src = os.path.join(ROOT, member, "src")
        if os.path.isdir(src):
            dirs.append(src)
    return dirs


def strip_comments_and_strings(code):
    """Blanks out comments, string and char literals so paths inside them are not counted."""
    out = []
    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
        elif code.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if code.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif code.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', code[i:i + 260]) and not (i and (code[i - 1].isalnum() or code[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', code[i:]).group(1)
            end = code.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and code[i] != '"':
                i += 2 if code[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", code[i:i + 12]):
            m = re.match(r"'(\\.[^']*|[^\\'])'", code[i:i + 12])
            i += len(m.group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (aliases and globs dropped to their path)."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [tree.rstrip("*").rstrip(":")]
    prefix = tree[:brace]
    inner = tree[brace + 1:tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:k])
            start = k + 1
    parts.append(inner[start:])
    paths = []
    for part in parts:
        if not part:
            continue
        if part == "self":
            paths.append(prefix.rstrip(":"))
        else:
            paths.extend(prefix + p for p in expand_use_tree(part))
    return paths


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    if rel and rel[0] == "bin":
        return None  # binaries are separate crates; they only import the library
    return tuple(rel)


def collect_modules(src):
    modules = {}
    for dirpath, _, files in os.walk(src):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                module = module_of(src, path)
                if module is not None:
                    modules[module] = path
    return modules


PATH_RE = re.compile(r"(?<![\w:])((?:crate|super|self)(?:::(?:super|[A-Za-z_]\w*))+)")
USE_RE = re.compile(r"\buse\s+((?:crate|super|self)\s*::[^;]*);", re.S)


def referenced_paths(code):
    paths = []
    for m in USE_RE.finditer(code):
        paths.extend(expand_use_tree(m.group(1)))
    code_without_uses = USE_RE.sub("", code)
    paths.extend(m.group(1) for m in PATH_RE.finditer(code_without_uses))
    return paths


def resolve(module, path, modules, is_mod_file):
    parts = path.split("::")
    # `super` in a.rs or a/mod.rs of module x::a is x; `self` is x::a.
    if parts[0] == "crate":
        base, parts = (), parts[1:]
    else:
        base = module
        while parts and parts[0] in ("self", "super"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
    full = base + tuple(parts)
    for k in range(len(full), -1, -1):
        if full[:k] in modules:
            return full[:k]
    return None


IMPL_RE = re.compile(r"(?<![\w:])impl\b([^{;]*)\{")


def inherent_impls(code):
    """(type path as written, method names) of each inherent `impl` block in `code`
    (`impl<T: X> a::B<T> { fn f.. }`, not `impl Trait for B`)."""
    impls = []
    for m in IMPL_RE.finditer(code):
        header = m.group(1).strip()
        if re.search(r"\bfor\b", header):
            continue
        if header.startswith("<"):
            depth = 0
            for k, ch in enumerate(header):
                depth += {"<": 1, ">": -1}.get(ch, 0)
                if depth == 0:
                    header = header[k + 1:].strip()
                    break
        name = re.match(r"[A-Za-z_][\w:]*", header)
        if not name:
            continue
        depth, end = 0, len(code)
        for k in range(m.end() - 1, len(code)):
            depth += {"{": 1, "}": -1}.get(code[k], 0)
            if depth == 0:
                end = k
                break
        body = code[m.end():end]
        impls.append((name.group(0), set(re.findall(r"\bfn\s+([A-Za-z_]\w*)", body))))
    return impls


def impl_owners(module, code, modules, is_mod_file):
    """For each inherent `impl` block in `module` of a type defined in another module: that
    module and the method names the block defines."""
    imported = {}
    for m in USE_RE.finditer(code):
        for path in expand_use_tree(m.group(1)):
            imported[path.split("::")[-1]] = path
    owners = []
    for ty, methods in inherent_impls(code):
        path = ty if ty.split("::")[0] in ("crate", "super", "self") else imported.get(ty)
        if path:
            owner = resolve(module, path, modules, is_mod_file)
            if owner is not None:
                owners.append((owner, ty, methods))
    return owners


def calls_any(code, type_path, methods):
    """Whether `code` calls one of `methods` on its own type: `self.m(`, `Self::m(`, `Type::m(`
    (calls on other receivers are not resolved, so they are not counted)."""
    ty = re.escape(type_path.split("::")[-1])
    return any(re.search(r"(\bself\s*\.|\b(Self|" + ty + r")\s*::)\s*" + re.escape(f)
                         + r"\s*(::\s*<[^()]*>\s*)?\(", code)
               for f in methods)


def graph_of(src):
    modules = collect_modules(src)
    edges = {m: set() for m in modules}
    for module, path in modules.items():
        code = strip_comments_and_strings(open(path, encoding="utf-8").read())
        is_mod_file = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
        for ref in referenced_paths(code):
            target = resolve(module, ref, modules, is_mod_file)
            if target is None or target == module:
                continue
            if module[:len(target)] == target:
                continue  # naming an ancestor: it declares us
            edges[module].add(target)
    # Methods of a type written outside its module (and outside the module's descendants),
    # called by the type's module: that module depends on the one holding them.
    for module, path in modules.items():
        code = strip_comments_and_strings(open(path, encoding="utf-8").read())
        is_mod_file = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
        for owner, ty, methods in impl_owners(module, code, modules, is_mod_file):
            if owner == module or module[:len(owner)] == owner:
                continue
            owner_code = strip_comments_and_strings(open(modules[owner], encoding="utf-8").read())
            if calls_any(owner_code, ty, methods):
                edges[owner].add(module)
    return edges


def cycles_of(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, result = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return result


def one_cycle(edges, component):
    """A concrete circle through the component's first module, for the message."""
    members = set(component)
    start = component[0]
    parent, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    path = [v]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return list(reversed(path)) + [start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def name(module):
    return "::".join(module) or "crate"


def self_test():
    """The checker must be able to fail: a circle through a nested `use` tree and `super::` is
    found, and a child naming its parent is not a circle."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        os.makedirs(os.path.join(src, "a"))
        files = {
            "lib.rs": "mod a;\nmod b;\n",
            "a/mod.rs": "mod c;\npub struct A;\n// use crate::b::B; in a comment is no edge\n",
            "a/c.rs": "use super::A;\nuse crate::{b::{B as Bee}};\nfn f() -> Bee { todo!() }\n",
            "b.rs": "pub struct B;\nfn g() { let _ = crate::a::c::f; }\n",
        }
        for rel, text in files.items():
            with open(os.path.join(src, rel), "w", encoding="utf-8") as f:
                f.write(text)
        cycles = cycles_of(graph_of(src))
        assert cycles == [[("a", "c"), ("b",)]], cycles
        with open(os.path.join(src, "b.rs"), "w", encoding="utf-8") as f:
            f.write("pub struct B;\n")
        assert cycles_of(graph_of(src)) == [], "a child naming its parent is no circle"
        # Methods of b's type written in a::c (which names b): b calls them, so a circle; as
        # a child of b instead, one room.
        with open(os.path.join(src, "a/c.rs"), "w", encoding="utf-8") as f:
            f.write("use crate::b::B;\nimpl<T: Into<u8>> B { fn h(&self) {} }\n"
                    "impl Clone for B { fn clone(&self) -> B { B } }\n")
        with open(os.path.join(src, "a/mod.rs"), "w", encoding="utf-8") as f:
            f.write("mod c;\n")
        assert cycles_of(graph_of(src)) == [], "methods b does not call are no circle"
        with open(os.path.join(src, "b.rs"), "w", encoding="utf-8") as f:
            f.write("pub struct B;\nimpl B { fn g(&self) { self.h() } }\n")
        cycles = cycles_of(graph_of(src))
        assert cycles == [[("a", "c"), ("b",)]], cycles
        os.makedirs(os.path.join(src, "b"))
        os.rename(os.path.join(src, "a/c.rs"), os.path.join(src, "b/c.rs"))
        with open(os.path.join(src, "b.rs"), "w", encoding="utf-8") as f:
            f.write("mod c;\npub struct B;\nimpl B { fn g(&self) { self.h() } }\n")
        assert cycles_of(graph_of(src)) == [], "methods in a child module are no circle"
    print("check-module-cycles: self-test passed")


def main(argv):
    if argv[1:2] == ["--self-test"]:
        self_test()
        argv = argv[:1] + argv[2:]
    src_dirs = argv[1:] or workspace_src_dirs()
    failed = False
    for src in src_dirs:
        edges = graph_of(src)
        for component in cycles_of(edges):
            failed = True
            circle = " -> ".join(name(m) for m in one_cycle(edges, component))
            print(f"{os.path.relpath(src, ROOT)}: import cycle: {circle}"
                  f" (modules in the circle: {', '.join(name(m) for m in component)})")
    if failed:
        return 1
    print(f"check-module-cycles: no import cycle in {len(src_dirs)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

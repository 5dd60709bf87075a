"""The reconciler's modules import one way: no module reaches itself through its imports.

The graph is read from the source with `ast`, so imports inside functions (the ones that
hide a cycle from a plain `import`) count too; imports under `if TYPE_CHECKING:` do not run
and do not count. A module importing its own package is no edge: Python imports the
package first anyway.
"""
from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "reconciler"


def _modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (i for n in node.orelse for i in _imports_in(n))
            continue
        yield from _imports_in(node)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> Iterator[str]:
    """The reconciler modules an import statement in module `name` runs."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names if a.name in known)
        return
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if node.level:
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join([*base, node.module] if node.module else base)
    else:
        mod = node.module or ""
    for a in node.names:  # `from pkg import sub` runs pkg.sub when it is a module
        if f"{mod}.{a.name}" in known:
            yield f"{mod}.{a.name}"
        elif mod in known:
            yield mod


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    mods = _modules(root, package)
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            for target in _targets(name, path, node, known):
                if target != name and not name.startswith(target + "."):
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_imports_inside_functions_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import X\n")  # hidden in a function: still an edge
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import Y\n"
                              "else:\n    import p.sub.d\n")
    (pkg / "sub" / "__init__.py").write_text("from . import d\n")
    (pkg / "sub" / "d.py").write_text("from .. import a\nfrom . import x  # not a module: the package\n")
    graph = import_graph(tmp_path, "p")
    assert graph == {"p": set(), "p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.sub.d"}, "p.sub": {"p.sub.d"},
                     "p.sub.d": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b", "p.c", "p.sub.d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_reconciler_modules() -> None:
    graph = import_graph()
    assert len(graph) > 30
    assert cycles(graph) == []


def test_every_reconciler_module_imports_on_its_own() -> None:
    # the graph is the source's word; importing each module proves the names resolve
    for name in sorted(_modules()):
        if name.endswith("__main__"):
            continue
        importlib.import_module(name)


#: The reconciler's stages, in the order imports may flow (a stage imports only stages before it).
#: The base modules (errors, findings, keys, metrics) sit under all of them; the CLI sits on top.
STAGES = ("repository", "checks", "state", "rollout", "publish", "analysis", "notify", "console", "serve", "cli")
BASE = frozenset({"reconciler.errors", "reconciler.findings", "reconciler.keys", "reconciler.metrics"})


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 2 and parts[1] in STAGES else None


def test_the_stages_import_one_way() -> None:
    graph = import_graph()
    assert {m.split(".")[1] for m in graph if _stage(m) is not None} == set(STAGES)
    backwards = []
    for name, targets in graph.items():
        if name in BASE:  # the base imports no stage at all
            backwards += [f"{name} → {t}" for t in targets if t not in BASE and t != PACKAGE]
            continue
        here = _stage(name)
        for t in targets:
            there = _stage(t)
            if here is not None and there is not None and there > here:
                backwards.append(f"{name} → {t}")
    assert backwards == []

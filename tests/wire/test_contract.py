"""The agent depends on the wire contract alone, and installs without the reconciler's dependencies.

Two checks of one boundary (DESIGN.md §1: `agent → wire`, `agent → bpf`):
- the modules: importing every module of `agent` (and `wire`, `bpf`) loads no `reconciler` module;
- the distributions: the base dependencies of pyproject.toml are what a node needs; the reconciler's
  server, file watching and YAML round-tripping come with the `reconciler` extra only, and a fresh
  venv holding the base set alone (built offline from this venv's installed files) runs the agent.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The server, the watcher and the round-trip YAML editor: what a node must not need.
RECONCILER_ONLY = {"starlette", "uvicorn", "watchfiles", "ruamel-yaml"}

# Imports every module of the node's packages, then prints what got loaded. `blocked` names top-level
# modules to make unimportable first (a meta-path finder that refuses them, as if not installed).
_PROBE = r"""
import importlib, json, pkgutil, sys

blocked = set(json.loads(sys.argv[1]))

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
for package in ("wire", "bpf", "agent"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
try:
    from agent.cli import main
    main(["--help"])
except SystemExit as e:
    assert e.code in (0, None), e.code
print(json.dumps(sorted(sys.modules)))
"""


def _closure(python: str, blocked: set[str] = frozenset(), env: dict[str, str] | None = None) -> set[str]:
    out = subprocess.run([python, "-c", _PROBE, json.dumps(sorted(blocked))], capture_output=True, text=True,
                         cwd="/", env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.splitlines()[-1]))


def _names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def test_the_agents_import_closure_holds_no_reconciler_module() -> None:
    loaded = _closure(sys.executable)
    assert {"wire.bundle", "wire.keys", "wire.strict", "wire.values"} <= loaded
    assert {"agent.runner", "agent.daemon", "agent.cli"} <= loaded
    assert sorted(m for m in loaded if m == "reconciler" or m.startswith("reconciler.")) == []


def test_the_agent_imports_with_the_reconcilers_packages_unimportable() -> None:
    blocked = {"starlette", "uvicorn", "watchfiles", "ruamel", "git"}
    loaded = _closure(sys.executable, blocked)
    assert not {m.split(".")[0] for m in loaded} & blocked


def test_the_base_dependencies_are_the_agents_and_gitpython_is_gone() -> None:
    base = _names(PYPROJECT["project"]["dependencies"])
    extras = {k: _names(v) for k, v in PYPROJECT["project"]["optional-dependencies"].items()}
    assert extras["reconciler"] >= RECONCILER_ONLY
    assert not base & RECONCILER_ONLY
    every = base.union(*extras.values())
    assert "gitpython" not in every
    # and nothing would need it: no module of the project imports `git`
    for path in [p for pkg in ("reconciler", "agent", "bpf", "wire") for p in (ROOT / pkg).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                assert not [a for a in node.names if a.name.split(".")[0] == "git"], path
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] != "git", path


def test_make_installs_every_extra() -> None:
    """`make test` and `make demo` run the reconciler too: the venv target installs every extra."""
    m = re.search(r"pip install -q -e '\.\[([a-z,]+)\]'", (ROOT / "Makefile").read_text())
    assert m is not None
    assert set(m.group(1).split(",")) == set(PYPROJECT["project"]["optional-dependencies"])


def _requirement_closure(reqs: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions `reqs` need, transitively (markers evaluated here, extras not taken)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in reqs]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        dist = metadata.distribution(name)
        found[name] = dist
        todo.extend(Requirement(r) for r in dist.requires or ())
    return found


@pytest.mark.slow
def test_a_venv_with_the_base_dependencies_alone_runs_the_agent(tmp_path: Path) -> None:
    """Offline: a new venv gets the base set's installed files (linked from this venv, as pip would
    have unpacked them) and the project's source tree, not the `reconciler` extra."""
    dists = _requirement_closure(PYPROJECT["project"]["dependencies"])
    assert not set(dists) & RECONCILER_ONLY
    venv = tmp_path / "agent-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for dist in dists.values():
        for f in dist.files or ():
            if f.parts[0] == "..":  # console scripts and the like, outside site-packages
                continue
            target = site / f
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(Path(str(dist.locate_file(f))).resolve())
    (site / "palisade-source.pth").write_text(f"{ROOT}\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    missing = subprocess.run([python, "-c", "import importlib.util as u, sys; "
                              "print([m for m in sys.argv[1:] if u.find_spec(m)])",
                              "starlette", "uvicorn", "watchfiles", "ruamel", "git"],
                             capture_output=True, text=True, check=True, env=env, cwd="/")
    assert missing.stdout.strip() == "[]"
    loaded = _closure(python, env=env)
    assert "agent.daemon" in loaded
    assert not [m for m in loaded if m.startswith("reconciler")]

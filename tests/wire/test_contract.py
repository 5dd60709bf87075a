"""The agent depends on the wire contract alone, and installs without the reconciler's dependencies.

Two checks of one boundary (DESIGN.md §1: `agent → wire`, `agent → bpf`):
- the modules: importing every module of `agent` (and `wire`, `bpf`), and running what `palisade-agent try`
  does before it loads (reading its files), loads no `reconciler` module; no module of `agent` names one
  in any import, also inside a function;
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
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The server, the watcher and the round-trip YAML editor: what a node must not need.
RECONCILER_ONLY = {"starlette", "uvicorn", "watchfiles", "ruamel-yaml"}

# Imports every module of the node's packages, reads the files of argv[2:] as `palisade-agent try` does,
# then prints what got loaded. `blocked` names top-level modules to make unimportable first (a meta-path
# finder that refuses them, as if not installed).
_PROBE = r"""
import importlib, json, pkgutil, sys
from pathlib import Path

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
from agent.cli.try_ import read_file
for name in sys.argv[2:]:
    read_file(Path(name), name, {"PODCIDR": ("10.0.0.0/8",)})
print(json.dumps(sorted(sys.modules)))
"""

#: What `palisade-agent try` reads: a policy with a placeholder next to another kind, one that is no valid
#: TracingPolicy, and a file that is no YAML.
_TRY_FILES = {
    "policies.yaml": "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: p}\nspec:\n"
                     "  kprobes:\n  - call: tcp_connect\n    syscall: false\n    args: [{index: 0, type: sock}]\n"
                     "    selectors:\n    - matchArgs:\n      - {index: 0, operator: DAddr, values: ['${PODCIDR}']}\n"
                     "---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
    "invalid.yaml": "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: q}\n"
                    "spec: {kprobes: [{call: 1}]}\n",
    "broken.yaml": "spec: [unclosed\n",
}


def _try_files(tmp: Path) -> list[str]:
    for name, text in _TRY_FILES.items():
        (tmp / name).write_text(text)
    return [str(tmp / name) for name in _TRY_FILES]


def _closure(python: str, blocked: set[str] = frozenset(), env: dict[str, str] | None = None,
             files: Sequence[str] = ()) -> set[str]:
    out = subprocess.run([python, "-c", _PROBE, json.dumps(sorted(blocked)), *files], capture_output=True,
                         text=True, cwd="/", env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.splitlines()[-1]))


def _names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def test_the_agents_import_closure_holds_no_reconciler_module(tmp_path: Path) -> None:
    loaded = _closure(sys.executable, files=_try_files(tmp_path))
    assert {"wire.bundle", "wire.heartbeat", "wire.keys", "wire.strict", "wire.values"} <= loaded
    assert {"agent.runner", "agent.daemon", "agent.cli", "agent.cli.try_", "bpf.yamldocs", "bpf.policy"} <= loaded
    assert sorted(m for m in loaded if m == "reconciler" or m.startswith("reconciler.")) == []


def test_try_reads_its_files_with_the_reconcilers_reader_from_bpf(tmp_path: Path) -> None:
    """What the probe above ran: the policy parsed with its placeholder filled, the Pod skipped, the invalid
    policy and the broken file refused with their line and column (the reader the reconciler uses)."""
    from agent.cli.try_ import read_file

    policies, invalid, broken = (read_file(Path(f), Path(f).name, {"PODCIDR": ("10.0.0.0/8",)})
                                 for f in _try_files(tmp_path))
    assert policies[0].policy is not None and policies[1].skipped is not None
    assert policies[0].policy.hooks[0].selectors[0].match_args[0].values == ("10.0.0.0/8",)
    assert invalid[0].refused is not None and "(line 4, column" in (invalid[0].refused.reason or "")
    assert broken[0].refused is not None and "invalid YAML" in (broken[0].refused.reason or "")
    assert "(line 2, column 1)" in (broken[0].refused.reason or "")


def test_no_agent_module_imports_the_reconciler_anywhere() -> None:
    """Also an import inside a function (which the closure above sees only when that function runs)."""
    found = []
    for path in (ROOT / "agent").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "reconciler"]
    assert found == []


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
    loaded = _closure(python, env=env, files=_try_files(tmp_path))
    assert {"agent.daemon", "agent.cli.try_"} <= loaded
    assert not [m for m in loaded if m.startswith("reconciler")]

"""The `palisade-validate` hook of .pre-commit-hooks.yaml, installed by the real pre-commit from a clone of
this project (pre-commit builds its own virtualenv and pip-installs the package, so PyPI must be reachable),
blocking a commit of a broken policy and letting the fixed one through.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.policyrepo import PolicyRepo

ROOT = Path(__file__).resolve().parents[2]
PRE_COMMIT = ROOT / ".venv" / "bin" / "pre-commit"


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """A clone of this project at HEAD (where pre-commit takes the hook from), its commit, and a
    PRE_COMMIT_HOME shared by the module so the hook's environment is built once."""
    if not PRE_COMMIT.exists():
        msg = "pre-commit is not installed (make venv: the dev extra)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    base = tmp_path_factory.mktemp("pre-commit")
    clone = base / "palisade"
    subprocess.run(["git", "clone", "-q", "--no-local", str(ROOT), str(clone)], check=True, env=_env(base))
    sha = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert (clone / ".pre-commit-hooks.yaml").is_file(), "commit .pre-commit-hooks.yaml first"
    return clone, sha, base / "home"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PRE_COMMIT", "PALISADE"))}
    env.update({"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "PRE_COMMIT_HOME": str(home),
                "GIT_AUTHOR_NAME": "Dana", "GIT_AUTHOR_EMAIL": "dana@example.com",
                "GIT_COMMITTER_NAME": "Dana", "GIT_COMMITTER_EMAIL": "dana@example.com"})
    return env


def _git(repo: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git with the hook's output (pre-commit writes to stderr) in stdout."""
    return subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, env=_env(home),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def test_hook_blocks_a_broken_policy(tmp_path: Path, hooks: tuple[Path, str, Path]) -> None:
    clone, sha, home = hooks
    repo = PolicyRepo.create(tmp_path).path
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {clone}\n    rev: {sha}\n    hooks:\n      - id: palisade-validate\n")
    r = subprocess.run([str(PRE_COMMIT), "install"], cwd=repo, env=_env(home), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    _git(repo, home, "add", ".pre-commit-config.yaml")
    r = _git(repo, home, "commit", "-m", "pre-commit")  # builds the hook's environment (pip install)
    assert r.returncode == 0, r.stdout
    assert "palisade validate" in r.stdout and "Passed" in r.stdout

    head = _git(repo, home, "rev-parse", "HEAD").stdout
    policy = repo / "packs" / "web-lockdown" / "allowlist.yaml"
    # the change allows one more binary, and makes a typo
    good = policy.read_text().replace("                - /usr/bin/python3\n",
                                      "                - /usr/bin/python3\n                - /usr/bin/perl\n")
    broken = good.replace("action: Sigkill", "action: SigKil")
    policy.write_text(broken)
    line = next(i for i, x in enumerate(broken.splitlines(), 1) if "SigKil" in x)
    _git(repo, home, "add", "-A")
    r = _git(repo, home, "commit", "-m", "typo")
    assert r.returncode == 1, r.stdout
    assert "Failed" in r.stdout and f"packs/web-lockdown/allowlist.yaml:{line}:23: error[schema]" in r.stdout
    assert _git(repo, home, "rev-parse", "HEAD").stdout == head  # nothing was committed

    policy.write_text(good)
    _git(repo, home, "add", "-A")
    r = _git(repo, home, "commit", "-m", "fixed")
    assert r.returncode == 0 and "Passed" in r.stdout, r.stdout
    assert _git(repo, home, "rev-parse", "HEAD").stdout != head

    (repo / "notes.txt").write_text("not YAML by name: the hook has nothing to look at\n")
    _git(repo, home, "add", "notes.txt")
    r = _git(repo, home, "commit", "-m", "notes")
    assert r.returncode == 0 and "Skipped" in r.stdout, r.stdout

"""`--server` commands against a `palisade serve --token-file`: the token from $PALISADE_TOKEN or
$PALISADE_TOKEN_FILE, and without it a 401 that says what to set (exit 2), never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.keys import generate
from support.policyrepo import PolicyRepo
from support.serve import Serve, heartbeat

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("token")
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    repo = PolicyRepo.create(tmp / "repo")
    server = Serve(repo.path, tmp / "state", generate(tmp / "keys").signing_key_path, "--token-file", str(token))
    try:
        heartbeat(server.url, "web-1", version=1, labels={"role": "web"})  # agents need no token
        yield server.url, token
    finally:
        assert server.stop() == 0, server.log


def _palisade(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PALISADE_TOKEN", "PALISADE_TOKEN_FILE")}
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**clean, **env, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("command", [["status", "-o", "json"], ["events", "-o", "json"]])
def test_without_the_token_a_server_command_says_what_to_set(guarded: tuple[str, Path], command: list[str]) -> None:
    url, _ = guarded
    r = _palisade(*command, "--server", url, env={})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "401" in r.stderr and "$PALISADE_TOKEN" in r.stderr and "Traceback" not in r.stderr


def test_the_token_from_the_environment_or_its_file(guarded: tuple[str, Path]) -> None:
    url, token = guarded
    by_value = _palisade("status", "-o", "json", "--server", url, env={"PALISADE_TOKEN": TOKEN})
    assert by_value.returncode == 0, by_value.stderr
    by_file = _palisade("events", "-o", "json", "--server", url, env={"PALISADE_TOKEN_FILE": str(token)})
    assert by_file.returncode == 0, by_file.stderr
    wrong = _palisade("status", "--server", url, env={"PALISADE_TOKEN": "not-the-token-at-all"})
    assert wrong.returncode == 2 and "401" in wrong.stderr
    unreadable = _palisade("status", "--server", url, env={"PALISADE_TOKEN_FILE": str(token) + ".missing"})
    assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr

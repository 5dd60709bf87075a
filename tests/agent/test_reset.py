"""`palisade-agent reset` on real directories: refused beside a running agent, --forget leaves nothing."""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from agent.daemon import LOCK_FILE
from agent.runner import runtime_status_path


@pytest.fixture()
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("PALISADE_RUNTIME_DIR", str(run))
    return run


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    s = tmp_path / "state"
    s.mkdir()
    (s / "lkg.json").write_text("{}")
    return s


@pytest.fixture()
def locked_dir(state: Path) -> Iterator[Path]:
    """The state directory flock'ed as an agent does when it cannot create its lock file."""
    fd = os.open(state, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield state
    finally:
        os.close(fd)


def _reset(tmp_path: Path, state: Path, *extra: str) -> int:
    return main(["reset", "--pin-root", str(tmp_path / "pins"), "--state", str(state), *extra])


@pytest.mark.skipif(os.geteuid() != 0, reason="reset needs root")
def test_forget_removes_the_state_and_its_runtime_status_copy(tmp_path: Path, state: Path, runtime: Path) -> None:
    copy = runtime_status_path(state)
    copy.write_text("{}")
    assert _reset(tmp_path, state, "--forget") == 0
    assert not state.exists() and not copy.exists()


def test_reset_is_refused_beside_an_agent_that_locked_the_directory_itself(
        tmp_path: Path, locked_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _reset(tmp_path, locked_dir, "--forget") != 0
    assert "an agent is running" in capsys.readouterr().err
    assert (locked_dir / "lkg.json").exists()


def test_reset_is_refused_beside_an_agent_holding_its_lock_file(tmp_path: Path, state: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert _reset(tmp_path, state, "--forget") != 0
    finally:
        os.close(fd)
    assert "an agent is running" in capsys.readouterr().err and (state / "lkg.json").exists()

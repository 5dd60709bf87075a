"""The agent's state directory on a real full (or read-only) file system: a 1 MiB tmpfs that the test
fills. The agent must go on enforcing — last-known-good, and a new verified bundle held in memory —,
say what is wrong, and write what it could not once space returns; what is on disk stays verifiable.
"""
from __future__ import annotations

import asyncio
import errno
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_support import Served, make_agent, metric

from agent import lkg, trust
from agent.atomic import StateFiles
from agent.events import EventLog, read_all
from agent.runner import STATUS_FILE, runtime_status_path
from support.tmpfs import fill, free, read_only, small_tmpfs

__all__ = ["small_tmpfs"]

ROOT = Path(__file__).resolve().parents[2]
MAIN = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture()
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The runtime directory of the status copy, private to the test."""
    d = tmp_path / "run"
    monkeypatch.setenv("PALISADE_RUNTIME_DIR", str(d))
    return d


def test_state_files_keep_what_a_full_disk_refuses_and_write_it_later(small_tmpfs: Callable[..., Path],
                                                                     tmp_path: Path) -> None:
    disk = small_tmpfs(tmp_path / "disk")
    files = StateFiles()
    assert files.write(disk / "a", b"old")
    fill(disk)
    assert not files.write(disk / "a", b"new" * 1000)
    assert files.error is not None and files.error.errno == errno.ENOSPC
    assert (disk / "a").read_bytes() == b"old"  # the old file is whole ...
    assert sorted(p.name for p in disk.iterdir()) == [".filler", "a"]  # ... and no temporary file is left
    assert not files.flush() and files.pending == (disk / "a",)
    free(disk)
    assert files.flush() and files.error is None and files.pending == ()
    assert (disk / "a").read_bytes() == b"new" * 1000


def test_the_event_log_drops_and_counts_on_a_full_disk_and_recovers(small_tmpfs: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    disk = small_tmpfs(tmp_path / "disk")
    errors: list[OSError] = []
    recovered: list[bool] = []
    log = EventLog(disk, on_error=errors.append, on_recovered=lambda: recovered.append(True))
    log.write({"n": 0})
    fill(disk)
    kept = [0]
    for i in range(1, 50):  # the file's last page takes a few more; then the disk refuses
        dropped = log.dropped
        log.write({"n": i, "pad": "x" * 200})  # never raises
        if log.dropped == dropped:
            kept.append(i)
    assert log.dropped >= 20 and len(errors) == log.dropped and all(e.errno == errno.ENOSPC for e in errors)
    free(disk)
    log.write({"n": 50})
    log.close()
    assert recovered == [True]
    # every line on disk is whole: a torn one (the disk refused its tail) is skipped, never glued to the next
    assert [e["n"] for e in read_all(disk)] == [*kept, 50]


def test_a_running_agent_applies_the_next_bundle_on_a_full_disk_and_persists_it_later(
        served: Served, small_tmpfs: Callable[..., Path], tmp_path: Path, runtime: Path) -> None:
    state = small_tmpfs(tmp_path / "state")

    async def run() -> None:
        agent = make_agent(served.url, served, state, metrics=True, events=True)
        assert (await agent.sync_once()).version == 1
        fill(state)
        v = served.relax(1)
        result = await agent.sync_once()  # on main: OSError out of trust.save, nothing applied
        assert (result.outcome, result.version) == ("applied", v)
        assert agent.version == v  # enforced from memory
        problem = agent.health.get("disk:state")
        assert problem is not None and problem.reason == "ENOSPC"
        assert metric(agent, "palisade_agent_degraded") == 1
        assert metric(agent, "palisade_agent_problems", kind="disk") >= 1
        assert metric(agent, "palisade_agent_disk_errors_total", kind="state", errno="ENOSPC") >= 1
        assert agent.heartbeat_document()["health"]["state"] == "degraded"
        # on disk: still v1, whole and verifiable; the status went to the runtime copy
        saved = lkg.load(state, agent.pubkeys)
        assert saved is not None and saved.bundle.version == 1
        copy = json.loads(runtime_status_path(state).read_text())
        assert copy["version"] == v and copy["health"]["state"] == "degraded"
        out = subprocess.run([sys.executable, "-c", MAIN, "status", "--state", str(state)], capture_output=True,
                             text=True, cwd=ROOT)
        assert out.returncode == 1, out.stdout + out.stderr  # degraded
        assert f"bundle v{v}" in out.stdout and "disk (ENOSPC)" in out.stdout

        free(state)
        assert agent.flush_state()
        saved = lkg.load(state, agent.pubkeys)
        assert saved is not None and saved.bundle.version == v
        assert trust.load(state)[0].version == v
        st = json.loads((state / STATUS_FILE).read_text())
        assert st["version"] == v and st["health"]["state"] == "ok"
        assert not runtime_status_path(state).exists()
        await agent.client.aclose()

    asyncio.run(run())


def test_an_agent_on_a_read_only_state_directory_enforces_from_memory(
        served: Served, small_tmpfs: Callable[..., Path], tmp_path: Path, runtime: Path) -> None:
    state = small_tmpfs(tmp_path / "state")

    async def run() -> None:
        read_only(state)
        agent = make_agent(served.url, served, state)
        assert (await agent.sync_once()).version == 1
        problem = agent.health.get("disk:state")
        assert problem is not None and problem.reason == "EROFS"
        read_only(state, False)
        assert agent.flush_state() and not agent.health.degraded
        assert lkg.load(state, agent.pubkeys) is not None
        await agent.client.aclose()

    asyncio.run(run())

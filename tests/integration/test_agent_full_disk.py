"""`palisade-agent run` with its state directory on a real full file system (a 1 MiB tmpfs the test
fills): started on it, restarted on it, running when it fills, read-only. The agent must start,
enforce what it can, report the disk error (status, metrics, heartbeat) and write what it kept in
memory once space returns. The engine is off here except in the kernel test at the end, which checks
that the forbidden exec really dies on a node whose disk is full.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from agentproc import ROOT, AgentProc, free_port
from reconciled import Reconciled, reconciled
from test_agent_kernel import FORBIDDEN, Setup, setup
from test_agent_kernel import _until as kernel_until

from agent import lkg
from agent.events import read_all
from agent.runner import runtime_status_path
from reconciler import keys
from reconciler.state.fleet import Fleet
from support.tmpfs import fill, free, read_only, small_tmpfs

__all__ = ["setup", "small_tmpfs"]

pytestmark = pytest.mark.slow
MAIN = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Node:
    up: Reconciled
    state: Path
    tmp: Path

    def agent(self, *extra: str) -> AgentProc:
        return AgentProc(self.up.server.url, self.up.pub, self.state, "web-1", "--no-engine", *extra,
                         labels="role=web")

    def status(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", MAIN, "status", "--state", str(self.state), *extra],
                              capture_output=True, text=True, cwd=ROOT)

    def fleet_health(self) -> str | None:
        agents = Fleet.open(self.up.state_dir).agents()
        return agents[0].condition(agents[0].last_seen) if agents else None


@pytest.fixture()
def node(tmp_path: Path, small_tmpfs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    monkeypatch.setenv("PALISADE_RUNTIME_DIR", str(tmp_path / "run"))  # the agent and `status` both read it
    with reconciled(tmp_path) as up:
        yield Node(up, small_tmpfs(tmp_path / "state"), tmp_path)


def _copy_at(state: Path) -> dict | None:  # type: ignore[type-arg]
    """The runtime copy of the agent's status (written while the state directory refuses it)."""
    try:
        doc: dict = json.loads(runtime_status_path(state).read_text())  # type: ignore[type-arg]
        return doc
    except (OSError, ValueError):
        return None


def _copy(node: Node) -> dict | None:  # type: ignore[type-arg]
    return _copy_at(node.state)


def _until(cond: Callable[[], object], timeout: float, what: str, agent: AgentProc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if agent.proc.poll() is not None:
            raise AssertionError(f"agent exited ({agent.proc.returncode}) waiting for {what}:\n{agent.log}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{agent.log[-4000:]}")


def test_a_fresh_node_on_a_full_disk_starts_enforces_reports_and_recovers(node: Node) -> None:
    fill(node.state)
    mport = free_port()
    agent = node.agent("--metrics", f"127.0.0.1:{mport}")  # on main: exit 2 at start
    try:
        _until(lambda: (c := _copy(node)) is not None and c["version"] == 1, 20, "v1 enforced", agent)
        out = node.status()
        assert out.returncode == 1, out.stdout + out.stderr
        assert "bundle v1" in out.stdout and "health: degraded" in out.stdout and "disk (ENOSPC)" in out.stdout
        metrics = httpx.get(f"http://127.0.0.1:{mport}/metrics").text
        assert "palisade_agent_degraded 1.0" in metrics and "palisade_agent_applied_version 1.0" in metrics
        _until(lambda: node.fleet_health() == "degraded", 20, "the reconciler sees the node degraded", agent)

        free(node.state)
        agent.wait(lambda s: s["version"] == 1 and s["health"]["state"] == "ok", 10, "status in the state directory")
        assert not runtime_status_path(node.state).exists()
        dropped = [e for e in read_all(node.state) if "events_dropped" in e]
        assert dropped and dropped[0]["events_dropped"]["count"] >= 1  # the event log says what it missed
        saved = lkg.load(node.state, [keys.load_public_key(node.up.pub)])
        assert saved is not None and saved.bundle.version == 1
        assert node.status().returncode == 0
        _until(lambda: node.fleet_health() == "ok", 20, "the reconciler sees the node healthy", agent)
        assert agent.stop() == 0
        assert "Traceback" not in agent.log
    finally:
        agent.stop(signal.SIGKILL)


def test_a_running_agent_takes_the_next_bundle_when_the_disk_fills_and_a_restart_on_it_keeps_enforcing(
        node: Node) -> None:
    agent = node.agent()
    try:
        agent.wait(lambda s: s["version"] == 1 and s["health"]["state"] == "ok", 20, "v1 applied")
        fill(node.state)
        v = node.up.publish_observe()  # on main: tracebacks, and v2 never applied
        _until(lambda: (c := _copy(node)) is not None and c["version"] == v, 20, f"v{v} applied", agent)
        assert "disk" in [p["kind"] for p in _copy(node)["health"]["problems"]]  # type: ignore[index]

        # restarted on the full disk (on main: exit 2): last-known-good (v1 on disk) at once, then v2 again
        assert agent.stop() == 0
        agent = node.agent()
        _until(lambda: (c := _copy(node)) is not None and c["version"] == v and c["updated"] > 0
               and agent.proc.poll() is None and "enforcing last-known-good v1" in agent.log, 20,
               "lkg, then the new bundle, on a full disk", agent)

        free(node.state)
        agent.wait(lambda s: s["version"] == v and s["health"]["state"] == "ok", 10, "persisted")
        saved = lkg.load(node.state, [keys.load_public_key(node.up.pub)])
        assert saved is not None and saved.bundle.version == v
        assert agent.stop() == 0
        assert "Traceback" not in agent.log
    finally:
        agent.stop(signal.SIGKILL)


def test_an_agent_on_a_read_only_state_directory_starts_and_enforces(node: Node) -> None:
    read_only(node.state)
    agent = node.agent()
    try:
        _until(lambda: (c := _copy(node)) is not None and c["version"] == 1, 20, "v1 enforced", agent)
        out = node.status()
        assert out.returncode == 1 and "disk (EROFS)" in out.stdout, out.stdout
        read_only(node.state, False)
        agent.wait(lambda s: s["version"] == 1 and s["health"]["state"] == "ok", 10, "persisted")
        assert agent.stop() == 0
    finally:
        agent.stop(signal.SIGKILL)


@pytest.mark.kernel
def test_with_the_engine_a_fresh_node_on_a_full_disk_kills_the_forbidden_exec(
        setup: Setup, small_tmpfs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PALISADE_RUNTIME_DIR", str(setup.tmp / "run"))
    state = small_tmpfs(setup.tmp / "agent-state")  # where Setup.agent keeps its state
    fill(state)
    agent = setup.agent("node-canary-1")  # the canary enforces web-lockdown in v1
    try:
        kernel_until(lambda: setup.workload.run(FORBIDDEN) == -signal.SIGKILL, 60)
        # the status follows the apply (the kernel enforces first): the runtime copy, the state being full
        kernel_until(lambda: (_copy_at(state) or {}).get("version") == 1, 10)
        copy = _copy_at(state)
        assert copy is not None and copy["health"]["state"] == "degraded"
        assert {p["name"]: (p["status"], p["mode"]) for p in copy["policies"]}["web-exec-allowlist"] == \
            ("loaded", "enforced")
        free(state)
        agent.wait(lambda s: s["version"] == 1 and s["health"]["state"] == "ok", 10, "persisted")
        assert setup.workload.run(FORBIDDEN) == -signal.SIGKILL
        assert agent.stop() == 0
        assert "Traceback" not in agent.log
    finally:
        agent.stop(signal.SIGKILL)

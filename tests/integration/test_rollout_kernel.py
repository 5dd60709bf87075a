"""The rollout's false-positive alarm with the engine on: the canary is a real `palisade-agent run`
enforcing in the kernel; a change that makes it kill a workload's processes more often than the
gate allows halts the rollout at the canary and rolls the canary back, in the kernel too.

The other nine sensors are the heartbeat fleet of test_rollout_fleet.py."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agentproc import AgentProc, policies
from test_rollout_fleet import TIGHTEN, World, _cli, _events, _rollout, _wait
from test_rollout_fleet import make_world as make_world  # the fixture

from bpf import syscall
from bpf.engine import remove_all
from support import cgroups

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

FORBIDDEN = ["/bin/sh", "-c", "true"]  # not on web-lockdown's allowlist


@pytest.fixture()
def cgroup(require_kernel: None) -> Iterator[Path]:
    cg = syscall.cgroup2_root() / f"palisade-rollout-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    try:
        yield cg
    finally:
        cgroups.remove(cg)


@pytest.fixture()
def pin_root(require_kernel: None) -> Iterator[Path]:
    root = Path("/sys/fs/bpf") / f"palisade-rollout-test-{uuid.uuid4().hex[:8]}"
    try:
        yield root
    finally:
        from agent import sensor

        remove_all(root)
        sensor.remove_pins(root)  # the base sensor's, beside the root


def _dry_runs_reported(url: str, sensor: str, version: int) -> int:
    """The would-have-enforced count of `sensor`'s last heartbeat, if it reported `version` (else 0)."""
    agents = httpx.get(f"{url}/v1/agents", timeout=10).json()["agents"]
    mine = [a for a in agents if a["id"] == sensor and a["version"] == version]
    return int(mine[0]["counters"].get("wouldHaveEnforced", 0)) if mine else 0


def _run_in(cg: Path, argv: list[str]) -> int:
    def enter() -> None:
        (cg / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.run(argv, preexec_fn=enter, capture_output=True, timeout=30).returncode


def test_kills_on_the_canary_halt_the_rollout_and_the_kernel_rolls_back(
        make_world: object, cgroup: Path, pin_root: Path, tmp_path: Path) -> None:
    assert callable(make_world)
    # A long canary bake: the halt must come from the gate, during the bake. One refused policy is
    # allowed: block-kmod-load's syscalls do not exist on every kernel.
    w: World = make_world(bake="60s", real={"s1"}, max_refused=1)
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({
        "workloads": [{"name": "web", "namespace": "default", "labels": {"app": "web"}, "cgroup": str(cgroup)}],
        "pinRoot": str(pin_root),
        "intervals": {"wait": 30, "drift": 1, "heartbeat": 1, "retryMax": 1},
    }))
    agent = AgentProc(w.serve.url, w.pub, tmp_path / "agent-state", "s1", labels="role=web", config=config)
    try:
        agent.wait(lambda s: s["version"] == 1 and policies(s).get("web-exec-allowlist") == ("loaded", "enforce_ready"),
                   90, "v1 at enforce_ready")
        assert _run_in(cgroup, FORBIDDEN) == 0  # enforce_ready: it would have killed, it did not
        # a heartbeat reports that dry-run match as v1's, before v2 arrives
        _wait(lambda: _dry_runs_reported(w.serve.url, "s1", 1) >= 1, 30)

        w.repo.change("enforce web-lockdown on web", TIGHTEN, signer="alice", wait_days=4)
        agent.wait(lambda s: s["version"] == 2 and policies(s).get("web-exec-allowlist") == ("loaded", "enforced"),
                   30, "v2 enforced on the canary")
        kills = sum(_run_in(cgroup, FORBIDDEN) == -signal.SIGKILL for _ in range(7))
        assert kills == 7

        # 7 > maxEnforcementActionsPerNode 5: halted at the canary, the canary goes back to v1
        w.fleet.wait_pins({"canary": 1, "group": 1, "fleet": 1, "default": 1}, 15)
        agent.wait(lambda s: s["version"] == 1 and policies(s).get("web-exec-allowlist") == ("loaded", "enforce_ready"),
                   15, "v1 again")
        assert _run_in(cgroup, FORBIDDEN) == 0
        assert all(p["group"] == 1 and p["fleet"] == 1 for _, p, _ in w.fleet.pins_seen)
        doc = _rollout(w.state)
        assert doc["state"] == "halted"
        # at least the 7 kills (the engine also counts what else the agent's own policies acted on)
        m = re.match(r"stage canary: enforcement actions per node (\d+) > 5 \(maxEnforcementActionsPerNode\): s1",
                     doc["haltReason"])
        assert m is not None and int(m.group(1)) >= 7, doc["haltReason"]
        (halt,) = [e for e in _events(w.state, "rollout-halted") if e["subject"] == "v2"]
        assert halt["detail"]["gate"] == "maxEnforcementActionsPerNode"
        out = _cli("rollout", "status", "--state", str(w.state))
        assert out.returncode == 1 and "HALTED" in out.stdout
    finally:
        agent.stop()

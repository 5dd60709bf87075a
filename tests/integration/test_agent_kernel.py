"""The agent on the real kernel, driven by a real reconciler on a real git repository.

The test workload is a cgroup of its own, mapped by the agent's configuration
to the labels `app: web`, which web-lockdown's `podSelector` selects; the
forbidden exec is `/bin/sh`, which is not on the allowlist. Pins go to a
private bpffs directory, removed at the end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from agentproc import AgentProc, free_port, policies

from bpf import inventory, syscall
from bpf.compile import StringEntry
from bpf.engine import remove_all
from reconciler import keys
from reconciler.publish.reconcile import Reconciler
from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app
from reconciler.state.fleet import Fleet
from support import cgroups
from support.policyrepo import PolicyRepo

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

FORBIDDEN = ["/bin/sh", "-c", "echo ran"]
#: What the kernel reports running /bin/sh (Debian: /usr/bin/dash).
FORBIDDEN_REAL = os.path.realpath(FORBIDDEN[0])
CANARY = ("scope: {group: canary}\n      state: ", "scope: {group: canary}\n      state: ")


@dataclass
class Workload:
    path: Path

    def run(self, argv: list[str]) -> int:
        procs = self.path / "cgroup.procs"

        def enter() -> None:
            procs.write_text(str(os.getpid()))

        return subprocess.run(argv, preexec_fn=enter, capture_output=True, timeout=30).returncode


@dataclass
class Setup:
    repo: PolicyRepo
    rec: Reconciler
    server: BackgroundServer
    pub: Path
    pin_root: Path
    workload: Workload
    config: Path
    tmp: Path

    def publish(self) -> float:
        """Reconcile the new commit; returns the time the server has the new index."""
        out = self.rec.run_once()
        assert out.published, out
        self.server.publication.refresh()
        return time.monotonic()

    def agent(self, sensor: str, labels: str | None = None, *extra: str) -> AgentProc:
        return AgentProc(self.server.url, self.pub, self.tmp / "agent-state", sensor, *extra, labels=labels,
                         config=self.config)

    def loads(self) -> dict[str, list[str]]:
        """Policy name → the complete loads pinned for it (half-built directories excluded)."""
        out: dict[str, list[str]] = {}
        if self.pin_root.exists():
            for d in sorted(self.pin_root.iterdir()):
                if d.is_dir() and not d.name.startswith("_loading_"):  # not the engine's _self map
                    out.setdefault(d.name.rsplit("--", 1)[0], []).append(d.name)
        return out


def _until(cond: object, timeout: float, step: float = 0.05) -> float:
    """Seconds until `cond()` holds; AssertionError at `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture()
def setup(tmp_path: Path, require_kernel: None) -> Iterator[Setup]:
    # windows run on the reconciler's real clock (not on commit dates); enforcement is the subject here
    repo = PolicyRepo.create(tmp_path, min_observation="0s")
    pair = keys.generate(tmp_path / "keys")
    rec = Reconciler(str(repo.path), tmp_path / "rstate", keys.load_signing_key(pair.signing_key_path))
    rec.run_once()
    server = BackgroundServer(create_app(rec.store.root), port=free_port()).start()
    cg = syscall.cgroup2_root() / f"palisade-agent-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    pin_root = Path("/sys/fs/bpf") / f"palisade-agent-test-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({
        "workloads": [{"name": "web", "namespace": "default", "labels": {"app": "web"}, "cgroup": str(cg)}],
        "pinRoot": str(pin_root),
        "intervals": {"wait": 30, "drift": 1, "heartbeat": 5, "retryMax": 1},
    }))
    try:
        yield Setup(repo, rec, server, pair.public_key_path, pin_root, Workload(cg), config, tmp_path)
    finally:
        server.stop()
        rec.close()
        _cleanup_pins(pin_root)
        _remove_cgroup(cg)


def _cleanup_pins(root: Path) -> None:
    from agent import sensor

    remove_all(root)
    sensor.remove_pins(root)  # the base sensor's, beside the root (left when a test kills the agent)


def _remove_cgroup(cg: Path) -> None:
    cgroups.remove(cg)


def _canary(setup: Setup, old: str, new: str, signer: str | None = None) -> float:
    setup.repo.change(f"canary web-lockdown {old} -> {new}",
                      [("enforcement/web-lockdown.yaml", CANARY[0] + old, CANARY[1] + new)],
                      signer=signer, wait_days=4 if signer else 0)
    return setup.publish()


def _reset(setup: Setup) -> subprocess.CompletedProcess[str]:
    main = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", main, "reset", "--pin-root", str(setup.pin_root),
                           "--state", str(setup.tmp / "agent-state")], capture_output=True, text=True, timeout=60)


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_enforce_from_a_commit_within_2s_drift_healed_within_5s_back_to_observe_within_2s(setup: Setup) -> None:
    # The test sensor is the canary (the first rollout stage, which gets every new bundle at once).
    # Its web-lockdown assignment is walked back to observe, then up the ladder to enforce_ready.
    _canary(setup, "enforced", "observe")
    _canary(setup, "observe", "enforce_ready", signer="alice")
    mport = free_port()
    agent = setup.agent("node-canary-1", None, "--metrics", f"127.0.0.1:{mport}")
    w = setup.workload
    try:
        st = agent.wait(lambda s: s["version"] == 3, 90, "v3 applied")
        assert policies(st)["web-exec-allowlist"] == ("loaded", "enforce_ready")
        assert w.run(FORBIDDEN) == 0  # enforce_ready: would have killed, did not

        # a merge signed by a reviewer moves web-lockdown to enforced (after the observation window)
        published = _canary(setup, "enforce_ready", "enforced", signer="alice")
        _until(lambda: w.run(FORBIDDEN) == -signal.SIGKILL, 2.0, step=0.02)
        latency = time.monotonic() - published
        assert latency < 2.0, latency
        assert w.run(["/usr/bin/python3", "-c", "pass"]) == 0  # on the allowlist
        assert subprocess.run(FORBIDDEN, capture_output=True).returncode == 0  # outside the workload
        agent.wait(lambda s: policies(s)["web-exec-allowlist"] == ("loaded", "enforced"), 5, "status enforced")

        # drift 1: one of the policy's attachments is removed from bpffs (the link is detached)
        (load,) = setup.loads()["web-exec-allowlist"]
        link = next(p for p in (setup.pin_root / load).iterdir() if p.name.startswith("link_"))
        link.unlink()
        t0 = time.monotonic()
        _until(lambda: w.run(FORBIDDEN) == -signal.SIGKILL and setup.loads()["web-exec-allowlist"] != [load], 5.0)
        assert time.monotonic() - t0 < 5.0
        _until(lambda: _metric(mport, "palisade_agent_drift_healed_total") >= 1, 2.0)

        # drift 2: /bin/sh is written into the policy's allowlist map
        (load,) = setup.loads()["web-exec-allowlist"]
        nginx = StringEntry("eq", b"/usr/sbin/nginx", 0)
        fd = syscall.obj_get(setup.pin_root / load / f"map_{nginx.map_name}")
        try:
            bits = syscall.map_lookup_elem(fd, nginx.key, 8)
            assert bits is not None
            # the kernel judges the file that runs: /bin/sh is a symlink, its real path is what matches
            syscall.map_update_elem(fd, StringEntry("eq", FORBIDDEN_REAL.encode(), 0).key, bits)
        finally:
            os.close(fd)
        assert w.run(FORBIDDEN) == 0  # the tampered allowlist lets /bin/sh through ...
        t0 = time.monotonic()
        _until(lambda: w.run(FORBIDDEN) == -signal.SIGKILL, 5.0)  # ... until the agent restores the map
        assert time.monotonic() - t0 < 5.0
        _until(lambda: _metric(mport, 'palisade_agent_drift_detected_total{kind="map_changed"}') >= 1, 2.0)
        assert _metric(mport, 'palisade_agent_drift_healed_total{kind="map_changed"}') >= 1
        assert _metric(mport, 'palisade_agent_drift_detected_total{kind="detached"}') >= 1

        # the kill is an event in Tetragon's shape, in the node's event log
        events = [json.loads(line) for line in (setup.tmp / "agent-state" / "events.jsonl").read_text().splitlines()]
        kills = [e for e in events if e.get("process_tracepoint", {}).get("action") == "KPROBE_ACTION_SIGKILL"
                 and e["process_tracepoint"]["policy_name"] == "web-exec-allowlist"]
        assert kills and kills[0]["process_tracepoint"]["process"]["binary"] == FORBIDDEN_REAL
        assert kills[0]["process_tracepoint"]["process"]["pod"]["name"] == "web"
        # ... and an observation the reconciler keeps for impact previews (sent with the heartbeats)
        fleet = Fleet.open(setup.tmp / "rstate")
        _until(lambda: any(b == FORBIDDEN_REAL for _, b, _ in fleet.observations("web-exec-allowlist")), 10,
               step=0.2)

        # back to observe (no approval needed): the killing stops within 2 s of the publish
        published = _canary(setup, "enforced", "observe")
        _until(lambda: w.run(FORBIDDEN) == 0, 2.0, step=0.02)
        assert time.monotonic() - published < 2.0
        assert agent.stop() == 0
        # enforcement (here: observe) outlives the agent: the loads stay pinned
        assert setup.loads()["web-exec-allowlist"]
    finally:
        agent.stop(signal.SIGKILL)


def test_sigkill_mid_apply_leaves_old_or_new_and_a_restart_converges(setup: Setup) -> None:
    w = setup.workload
    agent = setup.agent("node-canary-1")  # group canary: web-lockdown is enforced there from v1
    try:
        st = agent.wait(lambda s: s["version"] == 1, 90, "v1 applied")
        assert policies(st)["web-exec-allowlist"] == ("loaded", "enforced")
        assert w.run(["/usr/bin/true"]) == -signal.SIGKILL
        v1_loads = setup.loads()

        # v2 changes the policy text: the agent replaces the load (new first, then the old one goes)
        setup.repo.change("allow true", [("packs/web-lockdown/allowlist.yaml", "- /usr/sbin/nginx",
                                          "- /usr/sbin/nginx\n                - /usr/bin/true")])
        setup.publish()
        # kill the agent while the new load is being built
        _until(lambda: any(d.name.startswith("_loading_") for d in setup.pin_root.iterdir()), 20, step=0.005)
        agent.stop(signal.SIGKILL)

        # the kernel still enforces: the old load (or the new one) is complete and killing
        loads = setup.loads()
        assert loads["web-exec-allowlist"], loads
        assert w.run(FORBIDDEN) == -signal.SIGKILL
        assert set(loads) == set(v1_loads)

        agent = setup.agent("node-canary-1")
        st = agent.wait(lambda s: s["version"] == 2, 90, "v2 applied after the restart")
        loads = setup.loads()
        # exactly the selected policies that this kernel can run (no-kernel-modules needs tracepoints it lacks)
        assert set(loads) == {n for n, (status, _) in policies(st).items() if status == "loaded"}, loads
        assert all(len(v) == 1 for v in loads.values()), loads  # nothing duplicated
        assert not [d for d in setup.pin_root.iterdir() if d.name.startswith("_loading_")]  # nothing left over
        assert w.run(["/usr/bin/true"]) == 0  # the v2 text is what runs
        assert w.run(FORBIDDEN) == -signal.SIGKILL
        # the kernel holds exactly the programs of these loads (inventory of the pins)
        inv = inventory.inventory(pin_root=setup.pin_root, cgroup_hooks=())
        pinned_dirs = {Path(p.path).parent.name for p in inv.pins if Path(p.path).parent != setup.pin_root}
        assert pinned_dirs == {x for v in loads.values() for x in v}

        # `reset` unloads everything, but not under a running agent
        assert _reset(setup).returncode == 2
        assert agent.stop() == 0
        assert setup.loads(), "enforcement outlives the agent"
        out = _reset(setup)
        assert out.returncode == 0, out.stderr
        assert setup.loads() == {}
        assert w.run(FORBIDDEN) == 0
    finally:
        agent.stop(signal.SIGKILL)



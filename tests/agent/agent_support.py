"""Helpers of the agent tests: a real reconciler on a real git repository served on a loopback
port, and a real HTTP proxy in front of it that can turn hostile (`support.hostile`: tampered,
replayed, truncated, oversized, trickled or frozen answers)."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey, VerifyKey

from agent.apply import NullEnforcer
from agent.client import Client
from agent.config import AgentConfig, Intervals, Workload
from agent.enforcer import EngineEnforcer
from agent.events import EventLog
from agent.metrics import AgentMetrics
from agent.runner import Agent
from bpf import syscall
from bpf.engine import Engine
from reconciler import keys
from reconciler.publish.reconcile import Reconciler
from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app
from reconciler.state.store import Store
from support import hostile
from support.hostile import Proxy
from support.policyrepo import PolicyRepo

__all__ = ["CANARY", "Proxy", "Served", "engine_enforcer", "make_agent", "metric", "proxy", "served"]

CANARY = "node-canary-1"


@dataclass
class Served:
    """A policy repository reconciled into a bundle store that a real HTTP server serves."""

    repo: PolicyRepo
    rec: Reconciler
    server: BackgroundServer
    key: SigningKey
    pub_path: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> Store:
        return self.rec.store

    @property
    def verify_key(self) -> VerifyKey:
        return self.key.verify_key

    def publish(self) -> int:
        """Reconcile; the new version, which the server picks up at once."""
        out = self.rec.run_once()
        assert out.published, out
        self.server.publication.refresh()
        return out.published[-1]

    def relax(self, n: int) -> int:
        """A new version from a change that needs no approval (back to observe / a description)."""
        self.repo.change(f"edit {n}", [("packs/web-lockdown/pack.yaml", "owners: [",
                                        f"owners: [rev{n}@example.com, ")])
        return self.publish()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    repo = PolicyRepo.create(tmp_path)
    pair = keys.generate(tmp_path / "reconciler-keys")
    key = keys.load_signing_key(pair.signing_key_path)
    rec = Reconciler(str(repo.path), tmp_path / "reconciler-state", key)
    rec.run_once()
    server = BackgroundServer(create_app(rec.store.root)).start()
    try:
        yield Served(repo, rec, server, key, pair.public_key_path)
    finally:
        server.stop()
        rec.close()


@pytest.fixture()
def proxy(served: Served) -> Iterator[Proxy]:
    with hostile.running(served.url) as p:
        yield p


def make_agent(server: str, served: Served, state: Path, *, sensor: str = CANARY,
               labels: tuple[tuple[str, str], ...] = (), persist: bool = True, attempts: int | None = 2,
               now: Callable[[], _dt.datetime] | None = None, wait: float = 5, deadline_margin: float = 15.0,
               min_poll: float = 0.5, metrics: bool = False, events: bool = False) -> Agent:
    """A real Agent with a real Client; `deadline_margin` (index and bundle) and `min_poll` shrink the
    transfer deadlines and the poll pacing for tests; `metrics`/`events` give it its own registry / event
    log in `state`."""
    cfg = AgentConfig(server=server, pubkeys=(served.pub_path,), sensor_id=sensor, state=state, labels=labels,
                      intervals=Intervals(wait=wait, heartbeat=1, drift=1, retry_max=0.2), engine=False)
    client = Client(server, attempts=attempts, retry_initial=0.01, retry_max=0.05, deadline_margin=deadline_margin,
                    bundle_deadline=deadline_margin)
    log = None
    if events:
        state.mkdir(parents=True, exist_ok=True)
        log = EventLog(state)
    return Agent(cfg, enforcer=NullEnforcer(), client=client, pubkeys=[keys.load_public_key(served.pub_path)],
                 persist=persist, clock=now, min_poll=min_poll, metrics=AgentMetrics() if metrics else None,
                 events=log)


def metric(agent: Agent, name: str, **labels: str) -> float:
    """The value of one sample of the agent's own registry (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    assert agent.metrics is not None
    for fam in text_string_to_metric_families(agent.metrics.render().decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


@pytest.fixture()
def cgroup(require_kernel: None) -> Iterator[Path]:
    """An empty cgroup for a workload; its processes are killed and it is removed afterwards."""
    path = syscall.cgroup2_root() / f"palisade-agent-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    for pid in (path / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    path.rmdir()


@contextlib.contextmanager
def engine_enforcer(workloads: list[Workload], prefix: str = "palisade-agent") -> Iterator[EngineEnforcer]:
    """The agent's real engine enforcer on a private pin root (`prefix`-*); on the way out it is closed and
    whatever it left pinned is adopted, unloaded and its root removed."""
    root = Path("/sys/fs/bpf") / f"{prefix}-{uuid.uuid4().hex[:8]}"
    e = EngineEnforcer(workloads, pin_root=root, node_name="t")
    try:
        yield e
    finally:
        e.close()
        eng = Engine(pin_root=root)
        for key in eng.adopt():
            eng.unload(key)
        eng.close()
        if root.exists():
            root.rmdir()


@pytest.fixture()
def enforcer(cgroup: Path) -> Iterator[EngineEnforcer]:
    """The agent's real engine enforcer with one workload, `cgroup` as shop/web; what it loaded is unloaded."""
    with engine_enforcer([Workload("web", str(cgroup), "shop", (("app", "web"),))]) as e:
        yield e

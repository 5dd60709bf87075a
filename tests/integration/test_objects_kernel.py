"""Objects from the signed bundle on the real kernel: a real reconciler builds them (real git, real clang), a
real HTTP server on loopback serves them, a real agent with the kernel engine loads them.

The workload is a cgroup of its own mapped to `app: web` (web-lockdown's podSelector), so both kinds of
policy are exercised: node-wide ones (unscoped objects) and workload-limited ones (scoped objects).
"""
from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agent.client import Client
from agent.config import AgentConfig, Intervals, Workload
from agent.enforcer import EngineEnforcer
from agent.runner import Agent
from bpf import syscall
from bpf.compile import compile_policy
from bpf.engine import remove_all
from bpf.errors import Unsupported
from bpf.objects import source_digest
from bpf.policy import parse
from reconciler import keys
from reconciler.publish.objects import KernelProfile, ObjectBuilder, host_profile, loads_scoped
from reconciler.publish.reconcile import Reconciler
from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app
from support import cgroups
from support.kernel import unavailable
from support.policyrepo import PolicyRepo

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

SENSOR = "node-canary-1"  # in the canary group: web-lockdown applies to it


@dataclass
class Node:
    tmp: Path
    cgroup: Path
    pins: list[Path]
    enforcers: list[EngineEnforcer]

    def serve(self, objects: ObjectBuilder | bool) -> tuple[Reconciler, BackgroundServer, Path]:
        repo = PolicyRepo.create(self.tmp / uuid.uuid4().hex[:6])
        pair = keys.generate(self.tmp / uuid.uuid4().hex[:6])
        state = self.tmp / f"rstate-{uuid.uuid4().hex[:6]}"
        if isinstance(objects, ObjectBuilder):
            objects = ObjectBuilder(state, objects.profiles)
        rec = Reconciler(str(repo.path), state, keys.load_signing_key(pair.signing_key_path), objects=objects)
        assert rec.run_once().published == (1,)
        server = BackgroundServer(create_app(rec.store.root)).start()
        return rec, server, pair.public_key_path

    def agent(self, url: str, pub: Path, *, build: bool) -> tuple[Agent, EngineEnforcer]:
        pin = Path("/sys/fs/bpf") / f"palisade-objects-test-{uuid.uuid4().hex[:8]}"
        self.pins.append(pin)
        wl = Workload("web", str(self.cgroup), "default", (("app", "web"),))
        enf = EngineEnforcer([wl], pin_root=pin, node_name=SENSOR, build_objects=build,
                             object_cache=self.tmp / f"node-cache-{uuid.uuid4().hex[:6]}")
        self.enforcers.append(enf)
        cfg = AgentConfig(server=url, pubkeys=(pub,), sensor_id=SENSOR, state=self.tmp / f"agent-{pin.name}",
                          workloads=(wl,), intervals=Intervals(wait=1, retry_max=0.2), build_objects=build)
        client = Client(url, attempts=2, retry_initial=0.01, retry_max=0.05)
        return Agent(cfg, enforcer=enf, client=client, pubkeys=[keys.load_public_key(pub)]), enf


@pytest.fixture()
def node(tmp_path: Path, require_kernel: None) -> Iterator[Node]:
    if host_profile() is None:
        unavailable("this host's kernel cannot be probed (root and tracefs needed)")
    cg = syscall.cgroup2_root() / f"palisade-objects-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    n = Node(tmp_path, cg, [], [])
    try:
        yield n
    finally:
        for e in n.enforcers:
            e.close()
        for pin in n.pins:
            remove_all(pin)
        cgroups.remove(cg)


def _sync(agent: Agent) -> str:
    async def run() -> str:
        try:
            return (await agent.sync_once()).outcome
        finally:
            await agent.client.aclose()
    return asyncio.run(run())


def _statuses(agent: Agent) -> dict[str, tuple[str, str | None]]:
    """Status of each selected policy this kernel can run at all (those it cannot are refused as
    unsupported whatever the object: e.g. module tracepoints on a kernel without modules)."""
    assert agent.applied is not None
    host = host_profile()
    assert host is not None
    out = {}
    for p in agent.applied.statuses:
        tp = parse(yaml.safe_load(p.desired.yaml))
        try:
            compile_policy(tp, host.features, host.formats, scoped=loads_scoped(tp))
        except Unsupported:
            assert p.status == "refused"
            continue
        out[p.name] = (p.status, p.reason)
    return out


def test_a_published_policy_loads_from_the_signed_bundle_with_node_building_off(node: Node) -> None:
    rec, server, pub = node.serve(True)
    try:
        agent, enf = node.agent(server.url, pub, build=False)
        assert _sync(agent) == "applied"
        statuses = _statuses(agent)
        loaded = [n for n, (s, _) in statuses.items() if s == "loaded"]
        assert statuses and all(s == "loaded" for s, _ in statuses.values()), statuses
        assert "web-exec-allowlist" in loaded  # a workload-limited policy: its scoped object
        assert set(enf.origins.values()) == {"bundle"} and len(enf.origins) == len(loaded)
    finally:
        server.stop()
        rec.close()


def _other_kernel() -> KernelProfile:
    """A kernel that plans syscall hooks differently from this one (no 32-bit syscalls here, or there)."""
    host = host_profile()
    assert host is not None
    feats = dataclasses.replace(host.features, ia32_syscalls=not host.features.ia32_syscalls)
    return KernelProfile("other-kernel", feats, host.formats)


def test_an_object_built_for_another_kernel_is_refused_when_the_node_cannot_build(node: Node, tmp_path: Path) -> None:
    other = _other_kernel()
    rec, server, pub = node.serve(ObjectBuilder(tmp_path, [other]))
    try:
        bundle = rec.store.bundle_bytes(1)
        assert bundle is not None and b'"other-kernel"' in bundle
        agent, enf = node.agent(server.url, pub, build=False)
        assert _sync(agent) == "applied"
        statuses = _statuses(agent)
        host = host_profile()
        assert host is not None
        differs = set()
        for p in agent.applied.bundle.policies if agent.applied else ():
            tp = parse(yaml.safe_load(p.yaml))
            try:
                a = compile_policy(tp, host.features, host.formats, scoped=loads_scoped(tp)).source
                b = compile_policy(tp, other.features, other.formats, scoped=loads_scoped(tp)).source
            except Unsupported:
                continue
            if source_digest(a) != source_digest(b):
                differs.add(p.name)
        assert differs, "the other kernel must plan at least one selected policy differently"
        for name in differs & set(statuses):
            status, reason = statuses[name]
            assert status == "refused"
            assert reason is not None and "building on the node is off" in reason
            assert "built for kernel profile other-kernel" in reason
        # what both kernels plan alike still loads from the bundle
        same = [n for n in statuses if n not in differs]
        assert all(statuses[n][0] == "loaded" for n in same)
        assert set(enf.origins.values()) <= {"bundle"}
        assert agent.last_error is None
    finally:
        server.stop()
        rec.close()


def test_an_object_built_for_another_kernel_is_built_on_the_node_when_it_can(node: Node, tmp_path: Path) -> None:
    rec, server, pub = node.serve(ObjectBuilder(tmp_path, [_other_kernel()]))
    try:
        agent, enf = node.agent(server.url, pub, build=True)
        assert _sync(agent) == "applied"
        statuses = _statuses(agent)
        assert all(s == "loaded" for s, _ in statuses.values()), statuses
        assert {"built", "cache"} & set(enf.origins.values()), enf.origins
    finally:
        server.stop()
        rec.close()


def test_an_old_bundle_without_objects_loads_by_building_on_the_node(node: Node) -> None:
    rec, server, pub = node.serve(False)
    try:
        agent, enf = node.agent(server.url, pub, build=True)
        assert _sync(agent) == "applied"
        assert all(s == "loaded" for s, _ in _statuses(agent).values())
        assert set(enf.origins.values()) <= {"built", "cache"}
        # and with building off, each policy is refused saying so
        agent2, enf2 = node.agent(server.url, pub, build=False)
        assert _sync(agent2) == "applied"
        for status, reason in _statuses(agent2).values():
            assert status == "refused" and reason is not None and "building on the node is off" in reason
        assert enf2.origins == {}
    finally:
        server.stop()
        rec.close()

"""The agent fetches a verified bundle's CO-RE objects, checks them against the signed digests and offers
them to its enforcer: a real reconciler on a real git repository, a real HTTP server, a real proxy."""
from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agent_support import Served, make_agent

from agent.apply import NullEnforcer
from agent.objects import OBJECTS_DIR
from agent.runner import Agent
from agent.select import select
from support.hostile import Proxy
from wire.bundle import Bundle, BundleObject


def _sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def run(*args: Any, **kw: Any) -> None:
        asyncio.run(fn(*args, **kw))
    return run


def _engine_like(agent: Agent) -> NullEnforcer:
    """The in-memory enforcer, asking for objects as the kernel engine does."""
    enf = NullEnforcer(wants_objects=True)
    agent.enforcer = enf
    return enf


async def _applied(served: Served, proxy: Proxy, tmp_path: Path) -> tuple[Agent, NullEnforcer]:
    """An agent (state in tmp_path/agent) behind the proxy, with an engine-like enforcer, after its first
    sync applied the served bundle."""
    agent = make_agent(proxy.url, served, tmp_path / "agent")
    enf = _engine_like(agent)
    assert (await agent.sync_once()).outcome == "applied"
    return agent, enf


def _wanted(agent: Agent) -> tuple[Bundle, tuple[BundleObject, ...]]:
    assert agent.applied is not None
    b = agent.applied.bundle
    digests = {d.sha256 for d in select(b, agent.cfg.sensor_id, agent.labels)}
    return b, tuple(o for o in b.objects if o.policy in digests)


@_sync
async def test_the_objects_of_the_selected_policies_are_fetched_kept_and_offered(
        served: Served, proxy: Proxy, tmp_path: Path) -> None:
    agent, enf = await _applied(served, proxy, tmp_path)
    _, wanted = _wanted(agent)
    assert wanted, "the reconciler built objects for this sensor's policies"
    assert set(enf.offered) == {o.source for o in wanted}
    for o in wanted:
        assert hashlib.sha256(enf.offered[o.source]).hexdigest() == o.sha256
        assert (tmp_path / "agent" / OBJECTS_DIR / o.sha256).read_bytes() == enf.offered[o.source]
    # only the selected policies' objects travel
    fetched = {r.split()[1].rsplit("/", 1)[1] for r in proxy.requests if "/v1/objects/" in r}
    assert fetched == {o.sha256 for o in wanted}
    # a new version that changes no policy fetches no object again
    proxy.requests.clear()
    served.relax(1)
    assert (await agent.sync_once()).outcome == "applied"
    assert not [r for r in proxy.requests if "/v1/objects/" in r]
    await agent.client.aclose()


@_sync
async def test_a_tampered_object_is_refused_like_a_tampered_bundle_and_the_last_good_stays(
        served: Served, proxy: Proxy, tmp_path: Path) -> None:
    agent, enf = await _applied(served, proxy, tmp_path)
    v1 = agent.version
    # a policy changes: v2 lists a new object, which the server hands out with one byte changed
    served.repo.change("watch setuid(1000)", [("packs/baseline-observe/privileges.yaml", 'values: ["0"]',
                                               'values: ["1000"]')])
    v2 = served.publish()
    old = set(_bundle(served, v1).objects)
    new = next(o for o in _bundle(served, v2).objects if o not in old)
    good = served.store.object_bytes(new.sha256)
    assert good is not None
    proxy.serve(f"/v1/objects/{new.sha256}", good[:-1] + bytes([good[-1] ^ 1]))
    res = await agent.sync_once()
    assert res.outcome == "refused" and agent.version == v1
    assert agent.counters.refused["digest"] == 1 and "object refused" in (agent.last_error or "")
    assert new.source not in enf.offered and not (tmp_path / "agent" / OBJECTS_DIR / new.sha256).exists()
    # the genuine bytes are taken
    proxy.tamper = None
    assert (await agent.sync_once()).outcome == "applied" and agent.version == v2
    assert enf.offered[new.source] == good
    await agent.client.aclose()


@_sync
async def test_kept_objects_are_offered_again_from_disk_when_starting_offline(
        served: Served, proxy: Proxy, tmp_path: Path) -> None:
    agent, _ = await _applied(served, proxy, tmp_path)
    _, wanted = _wanted(agent)
    await agent.client.aclose()
    restarted = make_agent("http://127.0.0.1:9", served, tmp_path / "agent")  # nothing listens there
    enf = _engine_like(restarted)
    assert restarted.start_from_lkg()
    assert set(enf.offered) == {o.source for o in wanted}
    # a kept file damaged on disk is never offered
    damaged = tmp_path / "agent" / OBJECTS_DIR / wanted[0].sha256
    damaged.write_bytes(b"\x7fELF not the signed bytes")
    again = make_agent("http://127.0.0.1:9", served, tmp_path / "agent")
    enf2 = _engine_like(again)
    assert again.start_from_lkg()
    assert set(enf2.offered) == {o.source for o in wanted[1:]}
    await restarted.client.aclose()
    await again.client.aclose()


def _bundle(served: Served, version: int) -> Bundle:
    from wire.bundle import parse_bundle

    data = served.store.bundle_bytes(version)
    assert data is not None
    return parse_bundle(data)


def test_build_objects_is_read_from_agent_yaml(tmp_path: Path) -> None:
    from agent.config import load
    from agent.errors import ConfigError

    f = tmp_path / "agent.yaml"
    f.write_text("server: http://127.0.0.1:8740\npubkeys: [k.pub]\nsensorId: n1\nstate: st\nbuildObjects: false\n")
    assert load(f, {}).build_objects is False
    f.write_text("server: http://127.0.0.1:8740\npubkeys: [k.pub]\nsensorId: n1\nstate: st\n")
    assert load(f, {}).build_objects is True
    f.write_text("server: http://127.0.0.1:8740\npubkeys: [k.pub]\nsensorId: n1\nstate: st\nbuildObjects: no way\n")
    import pytest

    with pytest.raises(ConfigError, match="buildObjects"):
        load(f, {})


def test_the_agent_process_builds_its_enforcer_with_build_objects_from_agent_yaml(
        require_kernel: None, tmp_path: Path) -> None:
    from agent.config import load
    from agent.daemon import make_enforcer

    f = tmp_path / "agent.yaml"
    pin = f"/sys/fs/bpf/palisade-test-{tmp_path.name[-8:]}"
    f.write_text("server: http://127.0.0.1:8740\npubkeys: [k.pub]\nsensorId: n1\nstate: st\n"
                 f"pinRoot: {pin}\nbuildObjects: false\n")
    enforcer = make_enforcer(load(f, {}))
    try:
        assert enforcer.build_objects is False
    finally:
        enforcer.close()

"""A server that tries to freeze the agent without a word: trickled transfers, 304 forever, the same
index at once again and again. The real Agent and the real Client over real loopback HTTP, the
misbehaving server from `support.hostile` in front of a real reconciler.

Each case checks what an operator cares about: the agent keeps enforcing what it verified, says what
is wrong (health in status, metrics and the heartbeat), never asks in a hot loop, and takes the next
genuine publish once the server behaves.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import json
import time
from pathlib import Path

import jsonschema
import pytest
from agent_support import Proxy, Served, make_agent, metric

from agent.client import Pacer
from agent.errors import FetchError
from agent.runner import STATUS_FILE, Agent
from wire.bundle import sign_index

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "heartbeat.schema.json").read_text())


def _loaded(agent: Agent) -> list[tuple[str, str, str]]:
    return sorted((x.name, x.digest, str(x.state)) for x in agent.enforcer.loaded())


async def _until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("case", ["index body", "index headers", "bundle body", "bundle headers"])
def test_a_trickled_transfer_misses_its_total_deadline_and_is_reported(case: str, served: Served, proxy: Proxy,
                                                                         tmp_path: Path) -> None:
    """Slow-loris: one byte every 0.2 s, well inside any per-read timeout, never completes."""
    what = case.split()[0]

    async def run() -> None:
        agent = make_agent(proxy.url, served, tmp_path / "agent", deadline_margin=1.0, metrics=True)
        assert (await agent.sync_once()).version == 1
        before = _loaded(agent)
        v = served.relax(1)
        proxy.trickle("/v1/index" if what == "index" else "/v1/bundles/", every=0.2, headers="headers" in case)
        t0 = time.monotonic()
        with pytest.raises(FetchError) as err:
            # on a client without a total deadline this never returns; 20 s is the test's own limit
            await asyncio.wait_for(agent.sync_once(wait=0.5), 20)
        elapsed = time.monotonic() - t0
        assert err.value.reason == "stalled"
        # two attempts (make_agent's), each bounded by its deadline (index: wait + margin), plus backoff
        assert elapsed < 2 * (0.5 + 1.0) + 1.5, elapsed
        # still enforcing v1, and saying why nothing newer arrives
        assert agent.version == 1 and _loaded(agent) == before
        problem = agent.health.get(f"transfer:{what}")
        assert problem is not None and problem.reason == "stalled" and problem.count == 2
        assert metric(agent, "palisade_agent_transfer_stalls_total", what=what) == 2
        assert metric(agent, "palisade_agent_degraded") == 1
        assert metric(agent, "palisade_agent_problems", kind="transfer") == 1
        doc = agent.heartbeat_document()
        jsonschema.Draft202012Validator(SCHEMA).validate(doc)
        assert doc["health"]["state"] == "degraded"
        assert [(p["kind"], p["reason"]) for p in doc["health"]["problems"]] == [("transfer", "stalled")]
        st = json.loads((tmp_path / "agent" / STATUS_FILE).read_text())
        assert st["health"]["problems"][0]["detail"].startswith("GET /v1/")

        # the server behaves again: the next pass takes the new version and the problem clears
        proxy.tamper = None
        assert (await agent.sync_once(wait=0.5)).version == v
        assert not agent.health.degraded and metric(agent, "palisade_agent_degraded") == 0
        await agent.client.aclose()

    asyncio.run(run())


def _short_lived(served: Served, seconds: int) -> bytes:
    """A genuinely signed index (the reconciler's key) that expires `seconds` from now."""
    cur = served.store.index()
    assert cur is not None
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    return sign_index(dataclasses.replace(cur, serial=cur.serial + 1, issued=now - _dt.timedelta(seconds=1),
                                          expires=now + _dt.timedelta(seconds=seconds)), served.key)


@pytest.mark.parametrize("case", ["304 forever", "the same index at once, forever"])
def test_a_frozen_server_is_polled_at_a_bounded_rate_and_expiry_is_seen_on_the_clock(
        case: str, served: Served, proxy: Proxy, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    short = _short_lived(served, 4)

    async def run() -> None:
        # the node agent as it runs (retries forever), long-poll 5 s, at least 0.5 s between requests
        agent = make_agent(proxy.url, served, state, attempts=None, wait=5, min_poll=0.5, metrics=True)
        proxy.serve("/v1/index", short)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await _until(lambda: agent.version == 1 and agent.applied is not None
                         and agent.applied.index_bytes == short, 10, "the short-lived index applied")
            before = _loaded(agent)
            if case == "304 forever":
                proxy.not_modified_forever()
            # else: keep serving `short` at once, to every request, also after it expired
            t0 = time.monotonic()
            await _until(lambda: agent.health.get("index_expired") is not None, 8, "the expiry noticed")
            if case == "304 forever":
                # an expired index is no base for "not modified": asked without If-None-Match (within the
                # pacer's gap, at most the long-poll wait), and a 304 to that is a transfer problem
                await _until(lambda: agent.health.get("transfer:index") is not None, 5 + 2, "the 304 refused")
                problem = agent.health.get("transfer:index")
                assert problem is not None and problem.reason == "unexpected_304"
            else:  # the same expired body again: refused, never applied
                await _until(lambda: agent.counters.refused["expired"] >= 1, 5 + 2, "the expired index refused")
            await asyncio.sleep(1.0)  # and a while longer, expired
            window = time.monotonic() - t0
            n = proxy.count("/v1/index", t0)
            assert n <= window / 0.5 + 2, (n, window)  # the hot loop this replaces made ~400/s
            # still enforcing the last verified bundle, and saying the index expired
            assert agent.version == 1 and _loaded(agent) == before
            st = json.loads((state / STATUS_FILE).read_text())
            assert "index_expired" in [p["kind"] for p in st["health"]["problems"]]
            assert metric(agent, "palisade_agent_problems", kind="index_expired") == 1
            assert metric(agent, "palisade_agent_degraded") == 1
            doc = agent.heartbeat_document()
            jsonschema.Draft202012Validator(SCHEMA).validate(doc)
            assert "index_expired" in [p["kind"] for p in doc["health"]["problems"]]

            # the server behaves: a genuine publish arrives, is applied, and the node is healthy again
            proxy.tamper = None
            v = served.relax(1)
            await _until(lambda: agent.version == v, 15, f"v{v} applied")
            await _until(lambda: not agent.health.degraded, 5, "healthy again")
        finally:
            stop.set()
            await task
            await agent.client.aclose()

    asyncio.run(run())


def test_the_pacer_backs_off_from_a_server_that_does_not_hold_the_long_poll() -> None:
    p = Pacer(minimum=1.0, ceiling=30.0)
    gaps = []
    for _ in range(7):  # 304 at once, again and again
        p = p.after("unchanged", elapsed=0.01, asked=30.0)
        gaps.append(p.gap)
    assert gaps == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert p.after("unchanged", elapsed=29.0, asked=30.0).gap == 1.0  # the server held it: no backoff
    assert p.after("applied", elapsed=0.01, asked=30.0).gap == 0.0  # a new verified bundle: ask again at once
    assert p.after("applied", 0.01, 30.0).after("current", 0.01, 30.0).gap == 1.0  # then paced again
    assert Pacer(minimum=1.0, ceiling=0.5).after("current", 0.0, 0.5).gap == 1.0  # never below the minimum


def test_a_trickled_heartbeat_reply_is_cut_at_its_deadline(served: Served, proxy: Proxy, tmp_path: Path) -> None:
    async def run() -> None:
        agent = make_agent(proxy.url, served, tmp_path / "agent", metrics=True)
        agent.client.heartbeat_deadline = 1.0
        assert (await agent.sync_once()).version == 1
        proxy.trickle("/v1/agents/", every=0.2, headers=True)
        t0 = time.monotonic()
        assert not await asyncio.wait_for(agent.send_heartbeat(), 20)
        assert time.monotonic() - t0 < 3
        problem = agent.health.get("transfer:heartbeat")
        assert problem is not None and problem.reason == "stalled"
        assert metric(agent, "palisade_agent_transfer_stalls_total", what="heartbeat") == 1
        proxy.tamper = None
        assert await agent.send_heartbeat()
        assert agent.health.get("transfer:heartbeat") is None
        await agent.client.aclose()

    asyncio.run(run())

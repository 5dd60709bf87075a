"""The pull → verify → select → apply pipeline against a real reconciler and a real HTTP server.

Every refusal case checks the same outcome: nothing the agent enforces, trusts
or keeps on disk changes, and the agent still takes the next genuine publish.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_support import Proxy, Served, make_agent
from nacl.signing import SigningKey

from agent import lkg, trust
from agent.runner import Agent, SyncOutcome
from wire.bundle import (
    Index,
    IndexEntry,
    Signature,
    parse_bundle,
    sha256_hex,
    sign_bundle,
    sign_index,
)


def _snapshot(agent: Agent, state: Path) -> tuple[object, ...]:
    return (
        sorted((x.name, x.digest, x.state) for x in agent.enforcer.loaded()),
        (state / lkg.LKG_FILE).read_bytes(),
        trust.load(state)[0],
        agent.version,
    )


def test_first_pull_applies_the_selection_for_this_sensor(served: Served, tmp_path: Path) -> None:
    async def run() -> None:
        agent = make_agent(served.url, served, tmp_path / "agent")
        result = await agent.sync_once()
        assert (result.outcome, result.version) == ("applied", 1)
        assert result.outcome is SyncOutcome.APPLIED
        loaded = {x.name: str(x.state) for x in agent.enforcer.loaded()}
        # node-canary-1 is in group canary: web-lockdown enforced there; fleet-wide policies observe
        assert loaded == {"baseline-privilege-changes": "observe", "baseline-process-lifecycle": "observe",
                          "no-kernel-modules": "enforced", "web-exec-allowlist": "enforced"}
        again = await agent.sync_once(wait=0.2)
        assert again.outcome is SyncOutcome.UNCHANGED
        await agent.client.aclose()

    asyncio.run(run())


def test_labels_select_group_policies(served: Served, tmp_path: Path) -> None:
    async def run() -> None:
        agent = make_agent(served.url, served, tmp_path / "agent", sensor="web-7", labels=(("role", "web"),))
        await agent.sync_once()
        loaded = {x.name: str(x.state) for x in agent.enforcer.loaded()}
        assert loaded["web-exec-allowlist"] == "enforce_ready"
        assert loaded["no-ptrace-attach"] == "enforce_ready"
        assert loaded["no-exec-from-tmp"] == "observe"
        assert "no-raw-sockets" not in loaded  # that is the db group's
        assert agent.status()["stage"] == "web"
        await agent.client.aclose()

    asyncio.run(run())


def _expired(served: Served) -> bytes:
    cur = served.store.index()
    assert cur is not None
    past = _dt.datetime.now(_dt.UTC).replace(microsecond=0) - _dt.timedelta(hours=2)
    return sign_index(dataclasses.replace(cur, serial=cur.serial + 5, issued=past,
                                          expires=past + _dt.timedelta(hours=1)), served.key)


def _other_key(served: Served) -> bytes:
    cur = served.store.index()
    assert cur is not None
    return sign_index(dataclasses.replace(cur, serial=cur.serial + 5), SigningKey.generate())


def _broken_signature_bundle(served: Served) -> dict[str, bytes]:
    """A bundle v2 whose signature is garbage, listed with its true digest in a validly signed index."""
    cur = served.store.index()
    assert cur is not None
    data = served.store.bundle_bytes(cur.version)
    assert data is not None
    b = parse_bundle(data)
    forged = dataclasses.replace(b, version=cur.version + 1,
                                 signatures=(Signature(b.signatures[0].keyid, "A" * 86 + "=="),)).to_bytes()
    entry = IndexEntry(cur.version + 1, sha256_hex(forged), len(forged))
    index = Index(serial=cur.serial + 1, version=cur.version + 1, issued=cur.issued, expires=cur.expires,
                  bundles=(*cur.bundles, entry), stages={k: cur.version + 1 for k in cur.stages})
    return {"/v1/index": sign_index(index, served.key), f"/v1/bundles/{cur.version + 1}": forged}


def _digest_differs(served: Served) -> dict[str, bytes]:
    """A newer index, genuinely signed, whose bundle is swapped in transit for a validly signed other one."""
    cur = served.store.index()
    assert cur is not None
    data = served.store.bundle_bytes(cur.version)
    assert data is not None
    b = parse_bundle(data)
    genuine = sign_bundle(dataclasses.replace(b, version=cur.version + 1), served.key)
    swapped = sign_bundle(dataclasses.replace(b, version=cur.version + 1, policies=b.policies[:1]), served.key)
    entry = IndexEntry(cur.version + 1, sha256_hex(genuine), len(genuine))
    index = Index(serial=cur.serial + 1, version=cur.version + 1, issued=cur.issued, expires=cur.expires,
                  bundles=(*cur.bundles, entry), stages={k: cur.version + 1 for k in cur.stages})
    # pad the swap to the announced size so only the digest can tell
    swapped = swapped + b" " * (len(genuine) - len(swapped)) if len(swapped) < len(genuine) else swapped
    return {"/v1/index": sign_index(index, served.key), f"/v1/bundles/{cur.version + 1}": swapped}


CASES: dict[str, Callable[[Served, Proxy, bytes], str]] = {
    "index signed by another key": lambda s, p, old: (p.serve("/v1/index", _other_key(s)), "signature")[1],
    "expired index": lambda s, p, old: (p.serve("/v1/index", _expired(s)), "expired")[1],
    "older index replayed": lambda s, p, old: (p.serve("/v1/index", old), "replay")[1],
    "bundle digest differs": lambda s, p, old: (p.serve_many(_digest_differs(s)), "digest")[1],
    "valid digest, broken signature": lambda s, p, old: (p.serve_many(_broken_signature_bundle(s)),
                                                         "signature")[1],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_and_enforcement_unchanged(case: str, served: Served, proxy: Proxy, tmp_path: Path) -> None:
    state = tmp_path / "agent"

    async def run() -> None:
        agent = make_agent(proxy.url, served, state)
        old_index = served.store.index_bytes()
        assert old_index is not None
        served.relax(1)
        assert (await agent.sync_once()).version == 2
        before = _snapshot(agent, state)

        expected = CASES[case](served, proxy, old_index)
        result = await agent.sync_once()
        assert result.outcome == "refused"
        assert agent.counters.refused[expected] == 1, (result.reason, agent.counters.refused)
        assert _snapshot(agent, state) == before

        # the genuine next publish still goes through
        proxy.tamper = None
        served.relax(2)
        result = await agent.sync_once()
        assert (result.outcome, result.version) == ("applied", 3)
        await agent.client.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("case", ["truncated index", "truncated bundle", "50 MB index", "50 MB bundle",
                                  "50 MB index, no length"])
def test_broken_transfers_are_refused_and_change_nothing(case: str, served: Served, proxy: Proxy,
                                                         tmp_path: Path) -> None:
    state = tmp_path / "agent"

    async def run() -> None:
        agent = make_agent(proxy.url, served, state)
        await agent.sync_once()
        before = _snapshot(agent, state)
        v = served.relax(1)
        index_bytes = served.store.index_bytes()
        bundle_bytes = served.store.bundle_bytes(v)
        assert index_bytes is not None and bundle_bytes is not None
        path = "/v1/index" if "index" in case else f"/v1/bundles/{v}"
        if case.startswith("truncated"):
            proxy.truncate(path, index_bytes if "index" in case else bundle_bytes)
        else:
            proxy.flood(path, 50 * 1024 * 1024, announce="no length" not in case)
        result = await agent.sync_once()
        assert result.outcome == "refused"
        reason = "truncated" if case.startswith("truncated") else "too_large"
        assert agent.counters.refused == {reason: 1}
        assert _snapshot(agent, state) == before
        if "no length" in case:
            # refused while streaming: far less than 50 MB was read
            assert proxy.flood_sent < 50 * 1024 * 1024
        proxy.tamper = None
        assert (await agent.sync_once()).version == v
        await agent.client.aclose()

    asyncio.run(run())


def test_refusals_are_counted_by_reason_in_metrics(served: Served, proxy: Proxy, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from agent.metrics import AgentMetrics

    async def run() -> None:
        agent = make_agent(proxy.url, served, tmp_path / "agent")
        agent.metrics = AgentMetrics()
        await agent.sync_once()
        proxy.serve("/v1/index", _expired(served))
        await agent.sync_once()
        await agent.client.aclose()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(agent.metrics.render().decode()) for s in fam.samples}
        assert samples[("palisade_agent_verification_failures_total", (("reason", "expired"),))] == 1
        assert samples[("palisade_agent_applied_version", ())] == 1
        assert samples[("palisade_agent_policies", (("mode", "enforced"), ("status", "loaded")))] == 2

    asyncio.run(run())


def test_the_heartbeat_matches_its_schema_and_the_server_stores_it(served: Served, tmp_path: Path) -> None:
    import json

    import jsonschema

    from reconciler.state.fleet import Fleet
    from wire import heartbeat

    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "heartbeat.schema.json").read_text())

    async def run() -> None:
        agent = make_agent(served.url, served, tmp_path / "agent", sensor="web-3", labels=(("role", "web"),))
        await agent.sync_once()
        agent.observations.add({"process_tracepoint": {"policy_name": "web-exec-allowlist", "action":
                                "KPROBE_ACTION_SIGKILL", "process": {"binary": "/bin/sh"}},
                                "palisade": {"acted": False}})
        doc = agent.heartbeat_document()
        jsonschema.Draft202012Validator(schema).validate(doc)
        # the parser (the one definition) reads the real heartbeat as the schema does, and back to the same JSON
        assert heartbeat.encode(heartbeat.parse(doc, "web-3")) == doc
        agent.observations.add({"process_tracepoint": {"policy_name": "web-exec-allowlist",
                                                       "process": {"binary": "/bin/sh"}}})
        assert await agent.send_heartbeat()
        await agent.client.aclose()

    asyncio.run(run())
    (rec,) = Fleet.open(served.rec.state_dir).agents()
    assert (rec.id, rec.version, rec.stage, rec.labels) == ("web-3", 1, "web", {"role": "web"})
    assert {p.name: p.status for p in rec.policies}["web-exec-allowlist"] == "loaded"

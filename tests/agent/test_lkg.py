"""Last-known-good on disk: enforced at start without a server; damage and tampering refused."""
from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from agent_support import Served, make_agent

from agent import lkg, trust


def _synced(served: Served, state: Path) -> None:
    async def run() -> None:
        agent = make_agent(served.url, served, state)
        served.relax(1)
        assert (await agent.sync_once()).version == 2
        await agent.client.aclose()

    asyncio.run(run())


def test_restart_without_server_enforces_last_known_good(served: Served, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    _synced(served, state)
    agent = make_agent("http://127.0.0.1:9", served, state)  # nothing listens there
    assert agent.start_from_lkg()
    assert agent.version == 2
    assert {x.name for x in agent.enforcer.loaded()} >= {"web-exec-allowlist", "no-kernel-modules"}
    assert agent.trust.serial == served.store.index().serial  # type: ignore[union-attr]


def _rewrite(state: Path, member: str, change: bytes, to: bytes) -> None:
    path = state / lkg.LKG_FILE
    doc = json.loads(path.read_bytes())
    raw = base64.b64decode(doc[member])
    assert change in raw
    doc[member] = base64.b64encode(raw.replace(change, to, 1)).decode()
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage", ["policy text edited", "index serial edited", "truncated file", "not json"])
def test_tampered_last_known_good_is_refused(damage: str, served: Served, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    _synced(served, state)
    path = state / lkg.LKG_FILE
    if damage == "policy text edited":
        _rewrite(state, "bundle", b"Sigkill", b"Sigkilx")
    elif damage == "index serial edited":
        _rewrite(state, "index", b'"serial":', b'"serial":9')
    elif damage == "truncated file":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(b"\x00garbage")
    agent = make_agent("http://127.0.0.1:9", served, state)
    assert not agent.start_from_lkg()
    assert agent.version is None and agent.enforcer.loaded() == ()
    assert sum(agent.counters.refused.values()) == 1


def test_a_damaged_trust_file_never_lowers_the_floor(served: Served, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    _synced(served, state)
    (state / trust.TRUST_FILE).write_text('{"serial": 0, "version": "x"}')
    agent = make_agent("http://127.0.0.1:9", served, state)
    assert agent.trust == trust.TrustState()  # the file is ignored ...
    assert agent.start_from_lkg()
    # ... and the signed last-known-good index sets the floor again
    assert agent.trust.serial == served.store.index().serial  # type: ignore[union-attr]
    assert agent.trust.version == 2

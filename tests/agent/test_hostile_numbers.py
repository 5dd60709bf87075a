"""Numbers a hostile server (or a damaged disk) puts where an integer belongs: a 5,000-digit serial,
2**63, negatives, floats, NaN and Infinity — in the index, the bundle, the last-known-good file, the
trust file, a Content-Length, a heartbeat. Each is a refusal with a reason and a typed exception,
never a traceback, and changes nothing the agent enforces or trusts.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_support import Proxy, Served, make_agent

from agent import lkg, trust
from wire.bundle import (
    Malformed,
    OutOfRange,
    WireError,
    canonical_json,
    parse_index,
    sign_index,
    verify_bundle,
    verify_index,
)
from wire.heartbeat import parse as parse_heartbeat

ROOT = Path(__file__).resolve().parents[2]
MAIN = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"
HUGE = "9" * 5000
#: literal → the refusal class it must raise
NUMBERS: dict[str, type[WireError]] = {
    HUGE: OutOfRange, "-" + HUGE: OutOfRange, "9" * 4000: OutOfRange, str(2**63): OutOfRange,
    "-1": OutOfRange, "1.5": Malformed, "1e400": Malformed, "NaN": Malformed, "Infinity": Malformed,
    "-Infinity": Malformed,
}
INDEX_FIELDS: dict[str, Callable[[dict[str, Any]], None]] = {
    "serial": lambda d: d.__setitem__("serial", "@N@"),
    "version": lambda d: d.__setitem__("version", "@N@"),
    "bundle version": lambda d: d["bundles"][0].__setitem__("version", "@N@"),
    "bundle size": lambda d: d["bundles"][0].__setitem__("size", "@N@"),
    "stage pin": lambda d: d["stages"].__setitem__(next(iter(d["stages"])), "@N@"),
}
BUNDLE_FIELDS: dict[str, Callable[[dict[str, Any]], None]] = {
    "version": lambda d: d.__setitem__("version", "@N@"),
    "stage bake": lambda d: d["staging"]["stages"][0].__setitem__("bake", "@N@"),
    "stage gate": lambda d: d["staging"]["stages"][0]["gates"].__setitem__("maxAgentErrors", "@N@"),
}


def _with_number(data: bytes, put: Callable[[dict[str, Any]], None], literal: str) -> bytes:
    doc = json.loads(data)
    put(doc)
    return canonical_json(doc).replace(b'"@N@"', literal.encode())


def _index(served: Served) -> bytes:
    data = served.store.index_bytes()
    assert data is not None
    return data


@pytest.mark.parametrize("literal", list(NUMBERS), ids=lambda n: n if len(n) < 24 else f"{len(n)} digits")
@pytest.mark.parametrize("field", list(INDEX_FIELDS))
def test_a_number_out_of_range_in_the_index_is_a_typed_refusal(field: str, literal: str, served: Served) -> None:
    data = _with_number(_index(served), INDEX_FIELDS[field], literal)
    with pytest.raises(WireError) as err:
        verify_index(data, [served.verify_key])
    assert type(err.value) is NUMBERS[literal], err.value
    assert len(str(err.value)) < 400  # the reason, not the number


@pytest.mark.parametrize("literal", [HUGE, str(2**63), "-1", "1.5", "NaN"])
@pytest.mark.parametrize("field", list(BUNDLE_FIELDS))
def test_a_number_out_of_range_in_a_bundle_is_a_typed_refusal(field: str, literal: str, served: Served) -> None:
    data = served.store.bundle_bytes(1)
    assert data is not None and json.loads(data)["staging"] is not None
    bad = _with_number(data, BUNDLE_FIELDS[field], literal)
    with pytest.raises(WireError) as err:
        verify_bundle(bad, [served.verify_key], expected_sha256=None, expected_size=None)
    expected = NUMBERS[literal] if not (field == "version" and literal == "-1") else OutOfRange
    assert type(err.value) is expected, err.value


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "99999-01-01T00:00:00Z",
                                  "2026-13-01T00:00:00Z", "2026-01-01T00:00:00"])
@pytest.mark.parametrize("field", ["expires", "issued"])
def test_a_time_beyond_the_calendar_in_the_index_is_a_refusal(field: str, text: str, served: Served) -> None:
    """9999-12-31T23:59:59-23:59 is a valid RFC 3339 time past the last instant Python can hold."""
    doc = json.loads(_index(served))
    doc[field] = text
    with pytest.raises(Malformed):
        verify_index(canonical_json(doc), [served.verify_key])


def test_a_signed_index_is_bounded_too(served: Served) -> None:
    """The signature proves who wrote a number, not that it makes sense: a bundle of 2**40 bytes is refused."""
    cur = parse_index(_index(served))
    entry = dataclasses.replace(cur.bundles[-1], size=2**40)
    signed = sign_index(dataclasses.replace(cur, serial=cur.serial + 1, bundles=(*cur.bundles[:-1], entry)),
                        served.key)
    with pytest.raises(OutOfRange, match="size"):
        verify_index(signed, [served.verify_key])


def _status(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", MAIN, "status", "--state", str(state), *extra],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("where", ["serial", "stage pin", "bundle size"])
def test_the_agent_refuses_an_index_with_a_5000_digit_number_and_says_so(where: str, served: Served, proxy: Proxy,
                                                                         tmp_path: Path) -> None:
    state = tmp_path / "agent"

    async def run() -> None:
        agent = make_agent(proxy.url, served, state)
        assert (await agent.sync_once()).version == 1
        before = ((state / lkg.LKG_FILE).read_bytes(), trust.load(state)[0], agent.version)
        served.relax(1)
        proxy.serve("/v1/index", _with_number(_index(served), INDEX_FIELDS[where], HUGE))
        result = await agent.sync_once()
        assert result.outcome == "refused"
        assert dict(agent.counters.refused) == {"out_of_range": 1}
        assert ((state / lkg.LKG_FILE).read_bytes(), trust.load(state)[0], agent.version) == before
        proxy.tamper = None
        assert (await agent.sync_once()).version == 2
        await agent.client.aclose()

    asyncio.run(run())
    out = _status(state)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "last refused: index at " in out.stdout and "(out_of_range)" in out.stdout
    assert "refusals: out_of_range=1" in out.stdout
    doc = json.loads(_status(state, "-o", "json").stdout)
    assert doc["health"]["lastRefusal"]["reason"] == "out_of_range"
    assert doc["health"]["lastRefusal"]["what"] == "index"


def _synced(served: Served, state: Path) -> None:
    async def run() -> None:
        agent = make_agent(served.url, served, state)
        assert (await agent.sync_once()).version == 1
        await agent.client.aclose()

    asyncio.run(run())


def _lkg_index_number(state: Path, literal: str) -> None:
    path = state / lkg.LKG_FILE
    doc = json.loads(path.read_bytes())
    raw = base64.b64decode(doc["index"])
    doc["index"] = base64.b64encode(_with_number(raw, INDEX_FIELDS["serial"], literal)).decode()
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage", ["5000-digit serial in the index", "2**63 serial in the index",
                                    "5000-digit member in the file", "NaN member in the file"])
def test_a_last_known_good_file_with_absurd_numbers_is_refused_not_fatal(damage: str, served: Served,
                                                                        tmp_path: Path) -> None:
    state = tmp_path / "agent"
    _synced(served, state)
    path = state / lkg.LKG_FILE
    if damage.endswith("in the index"):
        _lkg_index_number(state, HUGE if damage.startswith("5000") else str(2**63))
    else:
        text = path.read_text()
        path.write_text(text[:-1] + ', "x": ' + (HUGE if damage.startswith("5000") else "NaN") + "}")
    agent = make_agent("http://127.0.0.1:9", served, state)
    assert not agent.start_from_lkg()
    assert agent.version is None
    assert sum(agent.counters.refused.values()) == 1
    refusal = agent.health.last_refusal
    assert refusal is not None and refusal.what == "lkg"
    assert refusal.reason == ("out_of_range" if damage.endswith("in the index") else "malformed")


@pytest.mark.parametrize("serial", ["9" * 4000, HUGE, str(2**63), "-1", "1.5", "NaN", "true"])
def test_a_trust_file_with_an_absurd_floor_is_damaged_not_a_freeze(serial: str, served: Served,
                                                                  tmp_path: Path) -> None:
    """A 4,000-digit serial parses as an int: trusted, it would refuse every genuine index as a replay."""
    state = tmp_path / "agent"
    _synced(served, state)
    (state / trust.TRUST_FILE).write_text('{"keyids": [], "serial": ' + serial + ', "version": 1}')
    loaded, problem = trust.load(state)
    assert loaded == trust.TrustState() and problem is not None and "damaged" in problem

    async def run() -> None:
        agent = make_agent(served.url, served, state)
        assert agent.start_from_lkg()
        v = served.relax(1)
        result = await agent.sync_once()
        assert (result.outcome, result.version) == ("applied", v), result
        await agent.client.aclose()

    asyncio.run(run())


def test_a_content_length_of_5000_digits_is_a_refused_transfer(served: Served, proxy: Proxy,
                                                              tmp_path: Path) -> None:
    def h(req: BaseHTTPRequestHandler) -> bool:
        if req.path.split("?")[0] != "/v1/index":
            return False
        req.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + HUGE.encode() + b"\r\nConnection: close\r\n\r\n{}")
        req.close_connection = True
        return True

    async def run() -> None:
        agent = make_agent(proxy.url, served, tmp_path / "agent")
        proxy.tamper = h
        result = await agent.sync_once()
        assert result.outcome == "refused" and agent.version is None
        assert sum(agent.counters.refused.values()) == 1
        await agent.client.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("member", ["version", "counter", "observation count"])
def test_the_reconciler_refuses_a_heartbeat_with_numbers_it_cannot_store(member: str, served: Served) -> None:
    doc: dict[str, Any] = {"sensor": "n1", "version": 1, "counters": {"events": 1},
                           "observations": [{"policy": "p", "binary": "/bin/sh", "count": 1}]}
    if member == "version":
        doc["version"] = 2**63
    elif member == "counter":
        doc["counters"]["events"] = 2**63
    else:
        doc["observations"][0]["count"] = 2**63
    with pytest.raises(ValueError, match="9223372036854775807"):
        parse_heartbeat(doc, "n1")
    body = json.dumps(doc).encode()
    r = httpx.post(served.url + "/v1/agents/n1/heartbeat", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    huge = body.replace(b'"version": ' + str(doc["version"]).encode(), b'"version": ' + HUGE.encode())
    assert httpx.post(served.url + "/v1/agents/n1/heartbeat", content=huge).status_code == 400

"""Agent heartbeats: the fleet store in real SQLite, and the endpoint on a real server."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import httpx
import pytest

from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app
from reconciler.state.fleet import Fleet
from wire.heartbeat import parse as parse_heartbeat


def _doc(sensor: str = "node-1", version: int = 3) -> dict[str, object]:
    return {
        "sensor": sensor, "labels": {"role": "web"}, "version": version, "stage": "canary", "commit": "ab" * 20,
        "policies": [{"name": "web-exec-allowlist", "status": "loaded", "mode": "enforced"},
                     {"name": "no-raw-sockets", "status": "refused", "mode": "observe", "reason": "no hook"}],
        "drift": {"detected": 1, "healed": 1, "unhealed": 0, "findings": []},
        "counters": {"events": 12, "enforced": 2, "wouldHaveEnforced": 5},
        "observations": [{"policy": "web-exec-allowlist", "binary": "/usr/bin/curl", "count": 2}],
    }


def test_heartbeats_replace_the_agent_row_and_add_observations(tmp_path: Path) -> None:
    fleet = Fleet.open(tmp_path)
    t0 = _dt.datetime(2026, 11, 21, 12, 0, tzinfo=_dt.UTC)
    fleet.record_heartbeat(parse_heartbeat(_doc(version=3), "node-1"), t0)
    fleet.record_heartbeat(parse_heartbeat(_doc(version=4), "node-1"), t0 + _dt.timedelta(seconds=10))
    fleet.record_heartbeat(parse_heartbeat(_doc("node-2"), "node-2"), t0)
    fleet.close()
    fleet = Fleet.open(tmp_path)  # survives a reopen
    agents = {a.id: a for a in fleet.agents()}
    assert agents["node-1"].version == 4
    assert agents["node-1"].last_seen == t0 + _dt.timedelta(seconds=10)
    assert agents["node-1"].policies[1].reason == "no hook"
    assert fleet.observations("web-exec-allowlist") == [("web-exec-allowlist", "/usr/bin/curl", 6)]
    assert fleet.observations(since=t0 + _dt.timedelta(seconds=5)) == [("web-exec-allowlist", "/usr/bin/curl", 2)]
    # health for `palisade status --server`: a refused policy degrades, silence makes stale
    assert agents["node-1"].condition(t0 + _dt.timedelta(seconds=20)) == "degraded"
    assert agents["node-2"].condition(t0 + _dt.timedelta(minutes=5)) == "stale"


@pytest.mark.parametrize(("doc", "message"), [
    ({"version": "3"}, "version"),
    ({"sensor": "other"}, "does not match"),
    ({"counters": {"events": -1}}, "counters.events"),
    ({"observations": [{"policy": "p", "binary": "/b"}]}, "observations[0]"),
    ({"policies": [{"name": "p", "status": "weird"}]}, "policies[0]"),
    ({"surprise": 1}, "unknown member"),
])
def test_bad_heartbeats_are_refused_with_the_reason(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        parse_heartbeat({**_doc(), **doc}, "node-1")


def test_endpoint_stores_heartbeats_and_refuses_bad_input(tmp_path: Path) -> None:
    store = tmp_path / "state" / "store"
    store.mkdir(parents=True)
    with BackgroundServer(create_app(store)) as srv:
        url = srv.url + "/v1/agents/node-1/heartbeat"
        assert httpx.post(url, content=json.dumps(_doc())).status_code == 204
        bad = httpx.post(url, content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"] == "invalid heartbeat"
        assert httpx.post(srv.url + "/v1/agents/bad%20id/heartbeat", content=json.dumps(_doc())).status_code == 400
        huge = httpx.post(url, content=b" " * (2 * 1024 * 1024))
        assert huge.status_code == 413
        assert httpx.get(url).status_code == 405
    fleet = Fleet.open(tmp_path / "state")
    assert [a.id for a in fleet.agents()] == ["node-1"]


def test_rows_an_older_reconciler_stored_are_read_typed_or_left_out(tmp_path: Path) -> None:
    import sqlite3

    Fleet.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "fleet.db")
    row = "INSERT INTO agents (id, labels, version, stage, commit_id, policies, drift, counters, last_seen, health) " \
          "VALUES (?, ?, 3, 'canary', NULL, ?, ?, ?, '2026-11-21T12:00:00Z', ?)"
    # as the hand-checked parser stored them: an empty drift, no health, a problem with its time as text
    db.execute(row, ("old-1", '{"role":"web"}', '[{"name":"p","status":"refused","mode":"observe","reason":"x"}]',
                     "{}", '{"events":3}', None))
    db.execute(row, ("old-2", "{}", "[]", "{}", "{}", '{"problems":[{"detail":"d","kind":"disk","reason":"ENOSPC",'
                     '"since":"2026-11-21T11:00:00Z"}],"state":"degraded"}'))
    db.execute(row, ("odd-1", "{}", '[{"name":"p","status":"weird"}]', "{}", "{}", None))  # never a valid one
    db.commit()
    db.close()
    fleet = Fleet.open(tmp_path)
    agents = {a.id: a for a in fleet.agents()}
    assert sorted(agents) == ["old-1", "old-2"]
    at = _dt.datetime(2026, 11, 21, 12, 0, 10, tzinfo=_dt.UTC)
    assert (agents["old-1"].refused, agents["old-1"].counters.get("events"), agents["old-1"].condition(at)) == \
        (1, 3, "degraded")
    assert agents["old-2"].health is not None and agents["old-2"].health.problems[0].reason == "ENOSPC"
    assert agents["old-2"].condition(at) == "degraded" and agents["old-2"].drift.unhealed == 0


def test_the_agents_reader_gives_what_the_fleet_gives_parsing_only_rows_that_changed(tmp_path: Path) -> None:
    from reconciler.state.fleet import AgentsReader
    from reconciler.state.statedir import StateDir

    fleet = Fleet.open(tmp_path)
    t0 = _dt.datetime(2026, 11, 21, 12, 0, tzinfo=_dt.UTC)
    for sensor in ("node-1", "node-2"):
        fleet.record_heartbeat(parse_heartbeat(_doc(sensor), sensor), t0)
    reader = AgentsReader(StateDir(tmp_path).fleet_db)
    try:
        first = reader.agents()
        assert first == fleet.agents()
        fleet.record_heartbeat(parse_heartbeat(_doc("node-2", version=4), "node-2"), t0 + _dt.timedelta(seconds=5))
        fleet.record_heartbeat(parse_heartbeat(_doc("node-3"), "node-3"), t0)
        second = reader.agents()
        assert second == fleet.agents() and [a.id for a in second] == ["node-1", "node-2", "node-3"]
        assert second[0] is first[0]  # unchanged: not parsed again
        assert second[1] is not first[1] and second[1].version == 4
    finally:
        reader.close()
        fleet.close()

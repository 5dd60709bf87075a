"""The pure detector: (what was observed, what is now) → new notifications with stable ids, and the new observed."""
from __future__ import annotations

import datetime as _dt
from types import MappingProxyType

from reconciler.findings import Finding, Severity
from reconciler.notify.config import TargetKind
from reconciler.notify.events import AgentSeen, EventKind, Notification, Observed, Snapshot, detect
from reconciler.notify.payload import body
from reconciler.state.fleet import AgentRecord
from reconciler.state.ledger import Event, LedgerEntry, Result
from wire.heartbeat import Drift, DriftFinding, DriftKind, LoadStatus, PolicyReport

T0 = _dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=_dt.UTC)
STALE = _dt.timedelta(seconds=30)


def _commit(row: int, result: Result, *findings: Finding) -> LedgerEntry:
    return LedgerEntry(row, f"{row:040x}", None, row, result, findings, None if result is Result.REJECTED else row,
                       T0 + _dt.timedelta(seconds=row), "Dana <dana@example.com>", None, ())


def _event(row: int, kind: str, **detail: object) -> Event:
    return Event(row, T0 + _dt.timedelta(seconds=row), kind, "v3", MappingProxyType(dict(detail)), "palisade-rollout")


def _agent(sensor: str, seen: _dt.datetime, *, unhealed: int = 0, refused: tuple[str, ...] = ()) -> AgentRecord:
    policies = tuple(PolicyReport(p, LoadStatus.REFUSED, reason=f"{p}: kprobes unavailable") for p in refused)
    drift = Drift(unhealed, 0, unhealed, tuple(DriftFinding(DriftKind.DETACHED, "web", "link gone")
                                                for _ in range(unhealed)))
    return AgentRecord(sensor, policies=(*policies, PolicyReport("ok", LoadStatus.LOADED)), drift=drift,
                       last_seen=seen)


BAD = Finding("enforcement/web.yaml", 7, 12, Severity.ERROR, "schema", "state: 'observ' is not one of ...")


def test_rejected_commits_past_the_cursor_each_once_with_their_findings() -> None:
    snap = Snapshot(T0, commits=(_commit(2, Result.ACCEPTED), _commit(3, Result.REJECTED, BAD),
                                 _commit(1, Result.REJECTED, BAD)))
    observed, found = detect(Observed(commit_cursor=1), snap)
    assert [n.kind for n in found] == [EventKind.COMMIT_REJECTED]
    n = found[0]
    assert n.id == f"commit-rejected:{3:040x}:3"
    assert n.details["findings"][0] == {"file": "enforcement/web.yaml", "line": 7, "column": 12, "severity": "error",
                                        "code": "schema", "message": BAD.message}
    assert "enforcement/web.yaml:7" in n.summary
    assert observed.commit_cursor == 3
    assert n.links == ()
    linked = detect(Observed(commit_cursor=1), Snapshot(T0, commits=snap.commits, links=(("Console", "https://c/ui"),),
                                                        commit_url="https://git/c/{commit}"))[1][0]
    assert linked.links == (("commit", f"https://git/c/{3:040x}"), ("Console", "https://c/ui"))
    # the same rows again (a crash before recording, or the next pass): nothing new
    assert detect(observed, snap)[1] == ()
    # pure: the same inputs give the same ids
    assert detect(Observed(commit_cursor=1), snap)[1] == found


def test_rollout_halts_and_rollbacks_come_from_the_ledger_events_in_order() -> None:
    snap = Snapshot(T0, events=(
        _event(6, "rollout-rolled-back", pins={"canary": 2}, to=2, reason="gate errors failed"),
        _event(5, "rollout-halted", stage="canary", gate="errors", reason="gate errors failed"),
        _event(4, "rollout-promoted", stage="canary"),
    ))
    observed, found = detect(Observed(), snap)
    assert [(n.kind, n.id) for n in found] == [(EventKind.ROLLOUT_HALTED, "rollout-halted:5"),
                                               (EventKind.ROLLOUT_ROLLED_BACK, "rollout-rolled-back:6")]
    assert found[0].summary == "rollout of v3 halted at stage canary: gate errors failed"
    assert found[1].summary == "rollout of v3 rolled back to v2: gate errors failed"
    assert observed.event_cursor == 6


def test_agents_notify_on_the_change_not_on_every_heartbeat() -> None:
    later = T0 + _dt.timedelta(seconds=10)
    a1 = _agent("node-1", T0, unhealed=1, refused=("kmod",))
    observed, found = detect(Observed(), Snapshot(T0, agents=(a1,), stale_after=STALE))
    assert sorted(n.kind for n in found) == [EventKind.DRIFT_UNHEALED, EventKind.POLICY_REFUSED]
    refused = next(n for n in found if n.kind is EventKind.POLICY_REFUSED)
    assert refused.details["sensor"] == "node-1" and refused.details["policy"] == "kmod"
    assert refused.details["reason"] == "kmod: kprobes unavailable"
    assert observed.agents["node-1"] == AgentSeen(False, True, frozenset({"kmod"}))

    # the next heartbeat says the same: nothing; a second refused policy: that one only
    same = detect(observed, Snapshot(later, agents=(_agent("node-1", later, unhealed=1, refused=("kmod",)),)))
    assert same[1] == ()
    more = detect(same[0], Snapshot(later, agents=(_agent("node-1", later, unhealed=1, refused=("kmod", "bpf")),)))
    assert [n.details.get("policy") for n in more[1]] == ["bpf"]

    # healed, then drifting again: a new notification with a new id
    healed = detect(more[0], Snapshot(later, agents=(_agent("node-1", later),)))
    assert healed[1] == ()
    again_at = later + _dt.timedelta(seconds=5)
    again = detect(healed[0], Snapshot(again_at, agents=(_agent("node-1", again_at, unhealed=2),)))
    assert [n.kind for n in again[1]] == [EventKind.DRIFT_UNHEALED]
    assert again[1][0].id != next(n for n in found if n.kind is EventKind.DRIFT_UNHEALED).id


def test_an_agent_goes_stale_once_past_the_timeout_and_again_after_it_recovers() -> None:
    a = _agent("node-2", T0)
    fresh = detect(Observed(), Snapshot(T0 + STALE, agents=(a,), stale_after=STALE))
    assert fresh[1] == ()  # exactly at the timeout: not yet
    stale = detect(fresh[0], Snapshot(T0 + STALE + _dt.timedelta(seconds=1), agents=(a,), stale_after=STALE))
    assert [(n.kind, n.id) for n in stale[1]] == [(EventKind.AGENT_STALE, "agent-stale:node-2:2026-12-01T12:00:00Z")]
    assert stale[1][0].details["lastSeen"] == "2026-12-01T12:00:00Z"
    assert detect(stale[0], Snapshot(T0 + 5 * STALE, agents=(a,), stale_after=STALE))[1] == ()
    back_at = T0 + 6 * STALE
    back = detect(stale[0], Snapshot(back_at, agents=(_agent("node-2", back_at),), stale_after=STALE))
    assert back[1] == () and not back[0].agents["node-2"].stale
    gone = detect(back[0], Snapshot(back_at + 2 * STALE, agents=(_agent("node-2", back_at),), stale_after=STALE))
    assert [n.kind for n in gone[1]] == [EventKind.AGENT_STALE] and gone[1][0].id != stale[1][0].id


def test_observed_and_notifications_round_trip_through_json() -> None:
    observed, found = detect(Observed(), Snapshot(T0, commits=(_commit(1, Result.REJECTED, BAD),),
                                                  agents=(_agent("n", T0, refused=("x",)),)))
    assert Observed.from_json(observed.to_json()) == observed
    for n in found:
        assert Notification.from_json(n.to_json()).to_json() == n.to_json()


def test_payloads_generic_and_slack() -> None:
    import json

    n = detect(Observed(), Snapshot(T0, commits=(_commit(1, Result.REJECTED, BAD),)))[1][0]
    generic = json.loads(body(TargetKind.GENERIC, n))
    assert set(generic) == {"id", "kind", "severity", "summary", "details", "links", "time"}
    assert generic["kind"] == "commit-rejected" and generic["severity"] == "error"
    slack = json.loads(body(TargetKind.SLACK, n))
    assert set(slack) == {"text", "blocks"} and slack["text"].startswith(":x: Commit rejected: commit")
    assert slack["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "text": "Commit rejected"}}
    text = json.dumps(slack["blocks"])
    assert "enforcement/web.yaml:7" in text and n.id in text
    # Slack reads <...> as links and mentions: text from a commit is escaped
    sneaky = Finding("a.yaml", 1, 1, Severity.ERROR, "schema", "<!channel> <https://evil|click>")
    n = detect(Observed(), Snapshot(T0, commits=(_commit(1, Result.REJECTED, sneaky),)))[1][0]
    text = json.dumps(json.loads(body(TargetKind.SLACK, n)))
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text

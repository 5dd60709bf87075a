"""What deserves a notification, found by comparing what was observed before with what is now.

`detect(previous, current)` is pure: the same inputs give the same notifications with the same
ids, so a crash between detecting and recording repeats the detection (and the outbox keeps
one row per id), never loses or doubles it. Where each comes from:

    commit-rejected      a `rejected` ledger row newer than the cursor (its findings, file:line)
    rollout-halted       a `rollout-halted` ledger event (stage, gate, reason)
    rollout-rolled-back  a `rollout-rolled-back` ledger event (pins, the version rolled back to, reason)
    drift-unhealed       an agent whose heartbeat reports unhealed drift, where the previous one did not
    policy-refused       a policy an agent reports refused (sensor, policy, reason) that it did not before
    agent-stale          an agent not seen for longer than the agent timeout, that was fresh before

Ledger rows are read past cursors (the highest row ids seen); agents are remembered by their
last condition, so an agent stays one notification until it recovers and goes wrong again.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from reconciler.state.fleet import AgentRecord
from reconciler.state.ledger import Event as LedgerEvent
from reconciler.state.ledger import LedgerEntry, Result
from wire.bundle import format_time

__all__ = ["AgentSeen", "EventKind", "Notification", "Observed", "Severity", "Snapshot", "detect"]


class EventKind(StrEnum):
    COMMIT_REJECTED = "commit-rejected"
    ROLLOUT_HALTED = "rollout-halted"
    ROLLOUT_ROLLED_BACK = "rollout-rolled-back"
    DRIFT_UNHEALED = "drift-unhealed"
    POLICY_REFUSED = "policy-refused"
    AGENT_STALE = "agent-stale"


class Severity(StrEnum):
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


SEVERITY = MappingProxyType({
    EventKind.COMMIT_REJECTED: Severity.ERROR,
    EventKind.ROLLOUT_HALTED: Severity.CRITICAL,
    EventKind.ROLLOUT_ROLLED_BACK: Severity.CRITICAL,
    EventKind.DRIFT_UNHEALED: Severity.ERROR,
    EventKind.POLICY_REFUSED: Severity.ERROR,
    EventKind.AGENT_STALE: Severity.WARNING,
})
#: The ledger events that are notifications of their own name.
_LEDGER_KINDS = {str(k): k for k in (EventKind.ROLLOUT_HALTED, EventKind.ROLLOUT_ROLLED_BACK)}
_MAX_FINDINGS = 20  # a commit with hundreds of findings: the first ones, and the count


@dataclass(frozen=True)
class Notification:
    """One thing to tell. `id` is stable: the same occurrence always gets the same id (receivers dedupe
    on it; the outbox keeps one row per target and id)."""

    id: str
    kind: EventKind
    summary: str
    time: _dt.datetime
    details: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (title, URL)

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": str(self.kind), "severity": str(self.severity), "summary": self.summary,
                "details": _plain(self.details), "links": [{"title": t, "url": u} for t, u in self.links],
                "time": format_time(self.time)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Notification:
        from wire.bundle import parse_time

        return cls(d["id"], EventKind(d["kind"]), d["summary"], parse_time(d["time"]),
                   MappingProxyType(dict(d["details"])), tuple((x["title"], x["url"]) for x in d["links"]))


@dataclass(frozen=True)
class AgentSeen:
    """An agent's condition as last observed."""

    stale: bool = False
    drifting: bool = False  # unhealed drift reported
    refused: frozenset[str] = frozenset()  # policies reported refused

    def to_json(self) -> dict[str, Any]:
        return {"stale": self.stale, "drifting": self.drifting, "refused": sorted(self.refused)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AgentSeen:
        return cls(bool(d["stale"]), bool(d["drifting"]), frozenset(d["refused"]))


@dataclass(frozen=True)
class Observed:
    """What the notifier has already seen (and enqueued): stored with the outbox, in its transaction."""

    commit_cursor: int = 0  # the highest ledger `commits` row id seen
    event_cursor: int = 0  # the highest ledger `events` row id seen
    agents: Mapping[str, AgentSeen] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"commitCursor": self.commit_cursor, "eventCursor": self.event_cursor,
                "agents": {k: v.to_json() for k, v in sorted(self.agents.items())}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Observed:
        return cls(int(d["commitCursor"]), int(d["eventCursor"]),
                   MappingProxyType({k: AgentSeen.from_json(v) for k, v in d["agents"].items()}))


@dataclass(frozen=True)
class Snapshot:
    """The current state: ledger rows past the cursors (any order), the fleet, and the time."""

    now: _dt.datetime
    commits: tuple[LedgerEntry, ...] = ()
    events: tuple[LedgerEvent, ...] = ()
    agents: tuple[AgentRecord, ...] = ()
    stale_after: _dt.timedelta = _dt.timedelta(seconds=30)
    links: tuple[tuple[str, str], ...] = ()  # added to every notification (the server's console, ...)
    commit_url: str | None = None  # `{commit}` replaced: a rejected commit's page


def detect(previous: Observed, current: Snapshot) -> tuple[Observed, tuple[Notification, ...]]:
    """The notifications `current` holds that `previous` had not seen, in the order they happened, and
    what is seen after them."""
    out: list[Notification] = []
    commit_cursor = previous.commit_cursor
    for c in sorted(current.commits, key=lambda e: e.id):
        if c.id <= previous.commit_cursor:
            continue
        commit_cursor = max(commit_cursor, c.id)
        if c.result is Result.REJECTED:
            commit_link = () if current.commit_url is None else (
                ("commit", current.commit_url.replace("{commit}", c.commit)),)
            out.append(_rejected(c, (*commit_link, *current.links)))
    agents = dict(previous.agents)
    for a in sorted(current.agents, key=lambda a: a.id):
        before = previous.agents.get(a.id, AgentSeen())
        now_seen, found = _agent(a, before, current)
        out.extend(found)
        agents[a.id] = now_seen
    event_cursor = previous.event_cursor
    for e in sorted(current.events, key=lambda e: e.id):
        if e.id <= previous.event_cursor:
            continue
        event_cursor = max(event_cursor, e.id)
        if e.kind in _LEDGER_KINDS:
            out.append(_rollout(e, _LEDGER_KINDS[e.kind], current.links))
    # Times are whole seconds: within one, causes come first (a commit, then what agents report, then the
    # rollout decisions those reports lead to), as listed above; the sort is stable.
    out.sort(key=lambda n: n.time)
    return Observed(commit_cursor, event_cursor, MappingProxyType(agents)), tuple(out)


def _rejected(c: LedgerEntry, links: tuple[tuple[str, str], ...]) -> Notification:
    errors = [f for f in c.findings if str(f.severity) == "error"] or list(c.findings)
    first = f"; first: {errors[0].file}:{errors[0].line}: {errors[0].message}" if errors else ""
    count = len(c.findings)
    return Notification(
        f"commit-rejected:{c.commit}:{c.id}", EventKind.COMMIT_REJECTED,
        f"commit {c.commit[:12]} by {c.author} rejected ({count} finding{'s' if count != 1 else ''}){first}",
        c.processed,
        {"commit": c.commit, "author": c.author, "parent": c.parent,
         "findings": [{"file": f.file, "line": f.line, "column": f.column, "severity": str(f.severity),
                       "code": f.code, "message": f.message} for f in c.findings[:_MAX_FINDINGS]],
         "findingCount": count},
        links)


def _rollout(e: LedgerEvent, kind: EventKind, links: tuple[tuple[str, str], ...]) -> Notification:
    d = dict(e.detail)
    reason = d.get("reason") or "no reason given"
    if kind is EventKind.ROLLOUT_HALTED:
        where = f" at stage {d['stage']}" if d.get("stage") else ""
        summary = f"rollout of {e.subject} halted{where}: {reason}"
    else:
        to = f" to v{d['to']}" if d.get("to") is not None else ""
        summary = f"rollout of {e.subject} rolled back{to}: {reason}"
    return Notification(f"{kind}:{e.id}", kind, summary, e.time,
                        {"version": e.subject, "actor": e.actor, **d}, links)


def _agent(a: AgentRecord, before: AgentSeen, cur: Snapshot) -> tuple[AgentSeen, list[Notification]]:
    out: list[Notification] = []
    seen = format_time(a.last_seen)
    stale = cur.now - a.last_seen > cur.stale_after
    if stale and not before.stale:
        out.append(Notification(
            f"agent-stale:{a.id}:{seen}", EventKind.AGENT_STALE,
            f"agent {a.id} stale: no heartbeat since {seen} (timeout {_secs(cur.stale_after)})",
            a.last_seen + cur.stale_after,
            {"sensor": a.id, "lastSeen": seen, "timeoutSeconds": cur.stale_after.total_seconds(),
             "version": a.version, "labels": dict(a.labels)}, cur.links))
    if stale:
        # What a silent agent reported last is old news: keep its drift and refusals as they were.
        return replace(before, stale=True), out
    drifting = a.drift.unhealed > 0
    if drifting and not before.drifting:
        findings = [{"kind": str(f.kind), "policy": f.policy, "detail": f.detail} for f in a.drift.findings]
        policies = sorted({f.policy for f in a.drift.findings})
        on = f" ({', '.join(policies)})" if policies else ""
        out.append(Notification(
            f"drift-unhealed:{a.id}:{seen}", EventKind.DRIFT_UNHEALED,
            f"agent {a.id}: {a.drift.unhealed} drift finding(s) the agent could not heal{on}", a.last_seen,
            {"sensor": a.id, "unhealed": a.drift.unhealed, "detected": a.drift.detected, "healed": a.drift.healed,
             "findings": findings, "version": a.version}, cur.links))
    refused = {p.name: p for p in a.policies if p.refused}
    for name in sorted(set(refused) - before.refused):
        p = refused[name]
        out.append(Notification(
            f"policy-refused:{a.id}:{name}:{seen}", EventKind.POLICY_REFUSED,
            f"agent {a.id} refused policy {name}: {p.reason or 'no reason given'}", a.last_seen,
            {"sensor": a.id, "policy": name, "reason": p.reason, "version": p.version or a.version,
             "mode": None if p.mode is None else str(p.mode)}, cur.links))
    return AgentSeen(False, drifting, frozenset(refused)), out


def _secs(d: _dt.timedelta) -> str:
    s = d.total_seconds()
    return f"{s:g}s"


def _plain(v: Any) -> Any:
    """JSON-ready copies of mappings and sequences (details hold MappingProxyType from the ledger)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v

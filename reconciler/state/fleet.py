"""What agents report, kept in SQLite in the reconciler's state directory (`<state>/fleet.db`).

    agents        one row per sensor: labels, loaded version, stage, per-policy state,
                  drift, counters, last seen (replaced at every heartbeat)
    observations  per heartbeat interval: (time, sensor, policy, binary, count) — what
                  policies matched, which the reconciler sums for impact previews — and,
                  when the agent says, the workload, the parent binary, the action of
                  the matching selector and whether it was taken (optional members of a
                  heartbeat's observation; older agents send none of them)

A heartbeat is parsed strictly at the edge, once (`wire.heartbeat.parse`: wrong shapes and
numbers beyond a signed 64-bit integer are refused with the path of the bad member, never
stored) and kept as its typed value: `AgentRecord` is the last heartbeat of a sensor and when it
came. Its optional `health` (ok / degraded and the problems: an unwritable disk, a stalled
transfer, an expired index) makes the agent `degraded` in the fleet view.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from reconciler.state import statedir
from wire import heartbeat as wire
from wire import strict
from wire.heartbeat import (
    MAX_HEARTBEAT_BYTES,
    HealthState,
    Heartbeat,
    Observation,
)

__all__ = ["FLEET_DB", "MAX_HEARTBEAT_BYTES", "AgentRecord", "AgentsReader", "Fleet", "Heartbeat", "Observation",
           "ObservationRow"]

FLEET_DB = statedir.FLEET_DB
log = logging.getLogger("palisade.fleet")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    version INTEGER,
    stage TEXT,
    commit_id TEXT,
    policies TEXT NOT NULL,
    drift TEXT NOT NULL,
    counters TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS observations (
    time TEXT NOT NULL,
    sensor TEXT NOT NULL,
    policy TEXT NOT NULL,
    binary TEXT NOT NULL,
    count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS observations_policy ON observations (policy, time);
"""
#: Columns added after the first release of the table (NULL = the agent did not say).
_OPTIONAL_COLUMNS = (("workload", "TEXT"), ("parent", "TEXT"), ("action", "TEXT"), ("acted", "INTEGER"))
_AGENT_OPTIONAL_COLUMNS = (("health", "TEXT"),)
_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class ObservationRow:
    """Stored observations summed over a query's period, per sensor and everything the agent said."""

    sensor: str
    policy: str
    binary: str
    workload: str | None
    parent: str | None
    action: str | None
    acted: bool | None
    count: int
    first: _dt.datetime  # the first and last heartbeat that carried it
    last: _dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "policy": self.policy, "binary": self.binary, "workload": self.workload,
                "parent": self.parent, "action": self.action, "acted": self.acted, "count": self.count,
                "first": self.first.strftime(_TIME), "last": self.last.strftime(_TIME)}


@dataclass(frozen=True)
class AgentRecord(Heartbeat):
    """A sensor's last heartbeat (every member typed, as `wire.heartbeat.parse` read it) and when it came."""

    last_seen: _dt.datetime = field(kw_only=True)

    @classmethod
    def of(cls, beat: Heartbeat, last_seen: _dt.datetime) -> AgentRecord:
        return cls(**{f.name: getattr(beat, f.name) for f in fields(Heartbeat)}, last_seen=last_seen)

    @property
    def id(self) -> str:
        return self.sensor

    def condition(self, now: _dt.datetime, stale_after: _dt.timedelta = _dt.timedelta(minutes=2)) -> str:
        """`stale` (no heartbeat lately), `drift` (unhealed drift), `degraded` (a policy refused, or the agent
        says so: disk, transfer, expired index), or `ok`."""
        if now - self.last_seen > stale_after:
            return "stale"
        if self.drift.unhealed > 0:
            return "drift"
        if self.refused:
            return "degraded"
        if self.health is not None and self.health.state is HealthState.DEGRADED:
            return "degraded"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "labels": dict(self.labels), "version": self.version, "stage": self.stage,
                "commit": self.commit, "policies": [wire.encode_policy(p) for p in self.policies],
                "drift": wire.encode_drift(self.drift), "counters": self.counters.to_json(),
                "lastSeen": self.last_seen.strftime(_TIME),
                "reported": None if self.health is None else wire.encode_health(self.health)}

    @classmethod
    def from_json(cls, v: Any) -> AgentRecord:
        """An agent of the fleet view (`to_json`, GET /v1/agents); ValueError says what is wrong."""
        d = strict.obj(v, "agent", ("id", "lastSeen"),
                            ("labels", "version", "stage", "commit", "policies", "drift", "counters", "reported"))
        doc: dict[str, Any] = {k: d[k] for k in ("labels", "version", "stage", "commit", "policies", "drift",
                                                 "counters") if k in d}
        if d.get("reported") is not None:
            doc["health"] = d["reported"]
        return cls.of(wire.parse(doc, d["id"]), strict.time(d["lastSeen"], "lastSeen"))


class Fleet:
    """The agents table and the observations table. Safe to call from several threads."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._lock = threading.Lock()

    @classmethod
    def open(cls, state_dir: Path | statedir.StateView) -> Fleet:
        state = statedir.StateDir.of(state_dir)
        state.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(state.fleet_db, isolation_level=None, timeout=10,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # Heartbeats are replaced every few seconds: losing the last ones to a power cut is harmless,
        # an fsync per heartbeat across a thousand agents is not.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        have = {r[1] for r in db.execute("PRAGMA table_info(observations)")}
        for name, kind in _OPTIONAL_COLUMNS:
            if name not in have:  # a database written before the column existed
                db.execute(f"ALTER TABLE observations ADD COLUMN {name} {kind}")
        have = {r[1] for r in db.execute("PRAGMA table_info(agents)")}
        for name, kind in _AGENT_OPTIONAL_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE agents ADD COLUMN {name} {kind}")
        return cls(db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record_heartbeat(self, hb: Heartbeat, now: _dt.datetime | None = None) -> None:
        self.record_heartbeats([hb], now)

    def record_heartbeats(self, beats: Sequence[Heartbeat], now: _dt.datetime | None = None) -> None:
        """Store `beats` (in order: a later one of a sensor replaces an earlier) in one transaction — the
        server's group commit (serve/ingest.py): one commit for every heartbeat that arrived meanwhile."""
        t = (now or _dt.datetime.now(_dt.UTC)).strftime(_TIME)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO agents (id, labels, version, stage, commit_id, policies, drift, counters, "
                    "last_seen, health) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(hb.sensor, _dumps(hb.labels), hb.version, hb.stage, hb.commit,
                      _dumps([wire.encode_policy(p) for p in hb.policies]), _dumps(wire.encode_drift(hb.drift)),
                      _dumps(hb.counters.to_json()), t,
                      None if hb.health is None else _dumps(wire.encode_health(hb.health))) for hb in beats])
                self._db.executemany(
                    "INSERT INTO observations (time, sensor, policy, binary, count, workload, parent, action, acted)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(t, hb.sensor, o.policy, o.binary, o.count, o.workload, o.parent, o.action,
                      None if o.acted is None else int(o.acted)) for hb in beats for o in hb.observations if o.count])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def agents(self) -> list[AgentRecord]:
        with self._lock:
            rows = self._db.execute(_AGENTS_SQL).fetchall()
        out = []
        for r in rows:
            try:
                out.append(_record(r))
            except ValueError as e:
                # a row an older reconciler stored, with less checked members: the agent's next heartbeat
                # replaces it; until then it counts as not reporting (rollout gates hold) rather than as clean
                log.warning("fleet: the stored heartbeat of %s is unreadable (%s); ignored until its next one",
                            r[0], e)
        return out

    def observations(self, policy: str | None = None, since: _dt.datetime | None = None
                     ) -> list[tuple[str, str, int]]:
        """(policy, binary, total count) over the fleet, largest first."""
        sql = "SELECT policy, binary, SUM(count) FROM observations WHERE 1=1"
        args: list[Any] = []
        if policy is not None:
            sql += " AND policy = ?"
            args.append(policy)
        if since is not None:
            sql += " AND time >= ?"
            args.append(since.strftime(_TIME))
        sql += " GROUP BY policy, binary ORDER BY SUM(count) DESC, policy, binary"
        with self._lock:
            return [(r[0], r[1], int(r[2])) for r in self._db.execute(sql, args)]

    def query(self, *, policies: tuple[str, ...] | None = None, sensor: str | None = None,
              binary: str | None = None, workload: str | None = None, since: _dt.datetime | None = None,
              until: _dt.datetime | None = None, limit: int = 10_000) -> list[ObservationRow]:
        """Observations in [since, until), summed per (sensor, policy, binary, workload, parent, action,
        acted), largest first. `policies=()` matches nothing."""
        keys = "sensor, policy, binary, workload, parent, action, acted"
        sql = f"SELECT {keys}, SUM(count), MIN(time), MAX(time) FROM observations WHERE 1=1"
        args: list[Any] = []
        if policies is not None:
            sql += f" AND policy IN ({', '.join('?' * len(policies))})" if policies else " AND 0"
            args += list(policies)
        for column, value in (("sensor", sensor), ("binary", binary), ("workload", workload)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if since is not None:
            sql += " AND time >= ?"
            args.append(since.strftime(_TIME))
        if until is not None:
            sql += " AND time < ?"
            args.append(until.strftime(_TIME))
        sql += f" GROUP BY {keys} ORDER BY SUM(count) DESC, {keys} LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [ObservationRow(r[0], r[1], r[2], r[3], r[4], r[5], None if r[6] is None else bool(r[6]), int(r[7]),
                               _parse_time(r[8]), _parse_time(r[9])) for r in rows]


class AgentsReader:
    """The agents table read-only, parsing again only the rows that changed since the last read: what a
    page loaded every few seconds needs (strictly reading a thousand heartbeats takes ~100 ms). Gives
    what `Fleet.agents()` gives. Safe to call from several threads."""

    def __init__(self, fleet_db: Path) -> None:
        self._db = sqlite3.connect(f"file:{fleet_db}?mode=ro", uri=True, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        self._known: dict[str, tuple[tuple[Any, ...], AgentRecord]] = {}

    def agents(self) -> list[AgentRecord]:
        with self._lock:
            rows = self._db.execute(_AGENTS_SQL).fetchall()
            fresh: dict[str, tuple[tuple[Any, ...], AgentRecord]] = {}
            for r in rows:
                hit = self._known.get(r[0])
                if hit is None or hit[0] != r:
                    try:
                        hit = (r, _record(r))
                    except ValueError as e:  # as Fleet.agents: unreadable until the sensor's next heartbeat
                        log.debug("fleet: the stored heartbeat of %s is unreadable (%s)", r[0], e)
                        continue
                fresh[r[0]] = hit
            self._known = fresh
            return [record for _, record in fresh.values()]

    def close(self) -> None:
        with self._lock:
            self._db.close()


_AGENTS_SQL = ("SELECT id, labels, version, stage, commit_id, policies, drift, counters, last_seen, health "
               "FROM agents ORDER BY id")


def _record(r: tuple[Any, ...]) -> AgentRecord:
    return AgentRecord.of(_stored(r), _parse_time(r[8]))


def _parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.strptime(text, _TIME).replace(tzinfo=_dt.UTC)


def _stored(r: tuple[Any, ...]) -> Heartbeat:
    """The heartbeat of an agents row, read with the heartbeat's own readers (its members were written by
    them). `strict.parse_json`: what the table holds is read as strictly as what came in."""
    return Heartbeat(r[0], json.loads(r[1]), r[2], r[3], r[4],
                     wire.parse_policies(strict.parse_json(r[5]), "policies"),
                     wire.parse_drift(strict.parse_json(r[6]), "drift"),
                     wire.parse_counters(strict.parse_json(r[7]), "counters"),
                     health=None if r[9] is None else wire.parse_health(strict.parse_json(r[9]), "health"))


def _dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))

"""What agents report, kept in SQLite in the reconciler's state directory (`<state>/fleet.db`).

    agents        one row per sensor: labels, loaded version, stage, per-policy state,
                  drift, counters, last seen (replaced at every heartbeat)
    observations  per heartbeat interval: (time, sensor, policy, binary, count) — what
                  policies matched, which the reconciler sums for impact previews — and,
                  when the agent says, the workload, the parent binary, the action of
                  the matching selector and whether it was taken (optional members of a
                  heartbeat's observation; older agents send none of them)

A heartbeat is parsed strictly at the edge (`parse_heartbeat`): wrong shapes and
numbers beyond a signed 64-bit integer are refused with the path of the bad
member, never stored. Its optional `health` (ok / degraded and the problems: an
unwritable disk, a stalled transfer, an expired index) is kept with the agent
and makes it `degraded` in the fleet view.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.state import statedir

__all__ = ["FLEET_DB", "MAX_HEARTBEAT_BYTES", "AgentRecord", "Fleet", "Heartbeat", "Observation", "ObservationRow",
           "parse_heartbeat"]

FLEET_DB = statedir.FLEET_DB
MAX_HEARTBEAT_BYTES = 1024 * 1024
MAX_OBSERVATIONS = 10_000
SENSOR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
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
_MAX_INT = 2**63 - 1  # what SQLite stores
_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Observation:
    """One member of a heartbeat's `observations`: events of `policy` by `binary` in the interval."""

    policy: str
    binary: str
    count: int
    workload: str | None = None
    parent: str | None = None
    action: str | None = None  # Tetragon's name of the matching selector's action, e.g. KPROBE_ACTION_SIGKILL
    acted: bool | None = None  # the action was taken (enforced), not only reported


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
class Heartbeat:
    sensor: str
    labels: Mapping[str, str]
    version: int | None
    stage: str | None
    commit: str | None
    policies: tuple[Mapping[str, Any], ...]
    drift: Mapping[str, Any]
    counters: Mapping[str, int]
    observations: tuple[Observation, ...]
    health: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class AgentRecord:
    id: str
    labels: Mapping[str, str]
    version: int | None
    stage: str | None
    commit: str | None
    policies: tuple[Mapping[str, Any], ...]
    drift: Mapping[str, Any]
    counters: Mapping[str, int]
    last_seen: _dt.datetime
    reported: Mapping[str, Any] | None = None  # the heartbeat's own `health`

    def health(self, now: _dt.datetime, stale_after: _dt.timedelta = _dt.timedelta(minutes=2)) -> str:
        """`stale` (no heartbeat lately), `drift` (unhealed drift), `degraded` (a policy refused, or the agent
        says so: disk, transfer, expired index), or `ok`."""
        if now - self.last_seen > stale_after:
            return "stale"
        if int(self.drift.get("unhealed", 0) or 0) > 0:
            return "drift"
        if any(p.get("status") == "refused" for p in self.policies):
            return "degraded"
        if self.reported is not None and self.reported.get("state") == "degraded":
            return "degraded"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "labels": dict(self.labels), "version": self.version, "stage": self.stage,
                "commit": self.commit, "policies": list(self.policies), "drift": dict(self.drift),
                "counters": dict(self.counters), "lastSeen": self.last_seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "reported": None if self.reported is None else dict(self.reported)}


def parse_heartbeat(sensor_id: str, doc: Any) -> Heartbeat:
    """A heartbeat from its JSON document; ValueError says what is wrong and where."""
    if not SENSOR_ID.match(sensor_id):
        raise ValueError(f"sensor id {sensor_id[:80]!r} is not valid (letters, digits, . _ -)")
    d = _obj(doc, "heartbeat")
    if d.get("sensor", sensor_id) != sensor_id:
        raise ValueError(f"sensor: {d.get('sensor')!r} does not match the URL ({sensor_id})")
    unknown = set(d) - {"sensor", "labels", "version", "stage", "commit", "policies", "drift", "counters",
                        "observations", "time", "health"}
    if unknown:
        raise ValueError(f"unknown member {', '.join(sorted(unknown))}")
    labels = _obj(d.get("labels", {}), "labels")
    for k, v in labels.items():
        if not isinstance(v, str):
            raise ValueError(f"labels.{k}: expected a string")
    version = d.get("version")
    if version is not None and not _count(version, 1):
        raise ValueError(f"version: expected an integer from 1 to {_MAX_INT} or null")
    stage, commit = d.get("stage"), d.get("commit")
    for name, v in (("stage", stage), ("commit", commit)):
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{name}: expected a string or null")
    policies = d.get("policies", [])
    if not isinstance(policies, list) or not all(isinstance(p, dict) for p in policies):
        raise ValueError("policies: expected an array of objects")
    for i, p in enumerate(policies):
        if not isinstance(p.get("name"), str) or p.get("status") not in ("loaded", "refused", "inactive"):
            raise ValueError(f"policies[{i}]: needs a name and a status of loaded, refused or inactive")
    drift = _obj(d.get("drift", {}), "drift")
    counters = _obj(d.get("counters", {}), "counters")
    for k, v in counters.items():
        if not _count(v):
            raise ValueError(f"counters.{k}: expected an integer from 0 to {_MAX_INT}")
    raw_obs = d.get("observations", [])
    if not isinstance(raw_obs, list):
        raise ValueError("observations: expected an array")
    if len(raw_obs) > MAX_OBSERVATIONS:
        raise ValueError(f"observations: at most {MAX_OBSERVATIONS} entries")
    obs = []
    for i, o in enumerate(raw_obs):
        o = _obj(o, f"observations[{i}]")
        policy, binary, count = o.get("policy"), o.get("binary"), o.get("count")
        if not (isinstance(policy, str) and isinstance(binary, str) and isinstance(count, int) and _count(count)):
            raise ValueError(f"observations[{i}]: needs policy and binary strings and a count from 0 to {_MAX_INT}")
        extra = {k: o.get(k) for k in ("workload", "parent", "action")}
        for k, v in extra.items():
            if v is not None and not isinstance(v, str):
                raise ValueError(f"observations[{i}].{k}: expected a string")
        acted = o.get("acted")
        if acted is not None and not isinstance(acted, bool):
            raise ValueError(f"observations[{i}].acted: expected true or false")
        obs.append(Observation(policy, binary, count, extra["workload"], extra["parent"], extra["action"], acted))
    health = _health(d["health"]) if d.get("health") is not None else None
    return Heartbeat(sensor_id, dict(labels), version, stage, commit, tuple(policies), drift, counters, tuple(obs),
                     health)


def _health(v: Any) -> dict[str, Any]:
    h = _obj(v, "health")
    if h.get("state") not in ("ok", "degraded"):
        raise ValueError("health.state: expected ok or degraded")
    problems = h.get("problems", [])
    if not isinstance(problems, list) or len(problems) > 100:
        raise ValueError("health.problems: expected an array of at most 100")
    out = []
    for i, p in enumerate(problems):
        p = _obj(p, f"health.problems[{i}]")
        if not all(isinstance(p.get(k), str) for k in ("kind", "reason", "detail")):
            raise ValueError(f"health.problems[{i}]: needs kind, reason and detail strings")
        out.append({k: str(p[k])[:2000] for k in ("kind", "reason", "detail", "since") if isinstance(p.get(k), str)})
    return {"state": h["state"], "problems": out}


def _count(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= _MAX_INT


def _obj(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"{path}: expected an object")
    return v


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
        t = (now or _dt.datetime.now(_dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO agents (id, labels, version, stage, commit_id, policies, drift, counters, "
                    "last_seen, health) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (hb.sensor, _dumps(hb.labels), hb.version, hb.stage, hb.commit, _dumps(list(hb.policies)),
                     _dumps(hb.drift), _dumps(hb.counters), t, None if hb.health is None else _dumps(hb.health)))
                self._db.executemany(
                    "INSERT INTO observations (time, sensor, policy, binary, count, workload, parent, action, acted)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(t, hb.sensor, o.policy, o.binary, o.count, o.workload, o.parent, o.action,
                      None if o.acted is None else int(o.acted)) for o in hb.observations if o.count])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def agents(self) -> list[AgentRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, labels, version, stage, commit_id, policies, drift, counters, "
                                    "last_seen, health FROM agents ORDER BY id").fetchall()
        return [AgentRecord(r[0], json.loads(r[1]), r[2], r[3], r[4], tuple(json.loads(r[5])), json.loads(r[6]),
                            json.loads(r[7]), _dt.datetime.strptime(r[8], "%Y-%m-%dT%H:%M:%SZ").replace(
                                tzinfo=_dt.UTC), None if r[9] is None else json.loads(r[9])) for r in rows]

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
            args.append(since.strftime("%Y-%m-%dT%H:%M:%SZ"))
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


def _parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.strptime(text, _TIME).replace(tzinfo=_dt.UTC)


def _dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))

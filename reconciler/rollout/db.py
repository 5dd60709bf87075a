"""The rollout's record: `<state>/rollout.db` (SQLite, WAL).

    progress         one row: the rollout's `Progress` and the pins it wants the index to carry
    plans            per published version: whether it was fast-tracked and the change's classification
    sensor_versions  per sensor, each version it ran: when it began and stopped, and its counters at the
                     start (enforcement actions and errors during a bake are measured from there)
    requests         operators' pause / resume / abort, queued by `palisade rollout` (any process)
                     and applied by the reconciler at its next tick
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler.errors import StateError
from reconciler.rollout.decide import Progress
from reconciler.state import sqlitedb, statedir
from wire.bundle import format_time, parse_time

log = logging.getLogger("palisade.rollout")

DB_FILE = statedir.ROLLOUT_DB


#: An agent silent for longer than this is not reporting (agents heartbeat every 10s by default).
DEFAULT_STALE_AFTER = _dt.timedelta(seconds=30)

VERBS = ("pause", "resume", "abort")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    progress TEXT NOT NULL,
    pins TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plans (
    version INTEGER PRIMARY KEY,
    relaxing INTEGER NOT NULL,
    fast_tracked INTEGER NOT NULL,
    reasons TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sensor_versions (
    sensor TEXT NOT NULL,
    version INTEGER NOT NULL,
    began TEXT NOT NULL,
    ended TEXT,
    base_actions INTEGER NOT NULL,
    base_errors INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sensor_versions_open ON sensor_versions (sensor, ended);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    verb TEXT NOT NULL,
    reason TEXT NOT NULL,
    operator TEXT NOT NULL,
    requested TEXT NOT NULL,
    applied TEXT,
    result TEXT
);
"""



@dataclass(frozen=True)
class SensorVersion:
    sensor: str
    version: int
    began: _dt.datetime
    ended: _dt.datetime | None
    base_actions: int
    base_errors: int

    def to_json(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "version": self.version, "began": format_time(self.began),
                "ended": format_time(self.ended) if self.ended else None}


class Outcome(StrEnum):
    APPLIED = "applied"
    REFUSED = "refused"  # nothing to pause, resume or abort: the rollout is as it was


@dataclass(frozen=True)
class RequestResult:
    """What the controller did with an operator's request, and what happened (or why not).

    Stored as text, the form rows have always had: the detail when applied, `refused: <why>` when refused."""

    outcome: Outcome
    detail: str

    @property
    def refused(self) -> bool:
        return self.outcome is Outcome.REFUSED

    def __str__(self) -> str:
        return f"{_REFUSED}{self.detail}" if self.refused else self.detail

    @classmethod
    def from_text(cls, text: str) -> RequestResult:
        if text.startswith(_REFUSED):
            return cls(Outcome.REFUSED, text[len(_REFUSED):])
        return cls(Outcome.APPLIED, text)


_REFUSED = "refused: "


@dataclass(frozen=True)
class Request:
    id: int
    verb: str
    reason: str
    operator: str
    requested: _dt.datetime
    applied: _dt.datetime | None
    result: RequestResult | None  # None until the controller settles it


class RolloutDB:
    """`<state>/rollout.db`. Several processes may open it (the CLI queues requests beside the reconciler)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, state_dir: Path | statedir.StateView, *, readonly: bool = False) -> RolloutDB:
        state = statedir.StateDir.of(state_dir)
        path = state.rollout_db
        try:
            if readonly:
                if not path.is_file():
                    raise StateError(f"no rollout state at {path} (has a reconciler run with --state {state.root}?)")
                db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                     timeout=10)
            else:
                state.create()
                db = sqlite3.connect(path, isolation_level=None, timeout=10)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StateError(f"cannot open the rollout state {path}: {e}") from None
        db.row_factory = sqlite3.Row
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlitedb.transaction(self._db, f"rollout state write failed ({self.path})")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return sqlitedb.rows(self._db, sql, args, f"cannot read the rollout state {self.path}")

    # progress

    def load(self) -> tuple[Progress, dict[str, int]]:
        rows = self._rows("SELECT progress, pins FROM progress WHERE id = 1")
        if not rows:
            return Progress(), {}
        return _progress_from(json.loads(rows[0]["progress"])), json.loads(rows[0]["pins"])

    def save(self, progress: Progress, pins: Mapping[str, int]) -> None:
        doc = progress.to_json()
        # Full precision: a bake resumed after a restart must not end even a fraction of a second early.
        doc["since"] = progress.since.isoformat() if progress.since else None
        doc["started"] = progress.started.isoformat() if progress.started else None
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO progress VALUES (1, ?, ?)",
                       (json.dumps(doc, sort_keys=True), json.dumps(dict(pins), sort_keys=True)))

    # settings (the running controller's, so readers judge agents the same way)

    def stale_after(self) -> _dt.timedelta | None:
        rows = self._rows("SELECT value FROM settings WHERE key = 'stale_after'")
        return _dt.timedelta(seconds=float(rows[0]["value"])) if rows else None

    def set_stale_after(self, value: _dt.timedelta) -> None:
        if self.stale_after() != value:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO settings VALUES ('stale_after', ?)",
                           (str(value.total_seconds()),))

    # plans

    def save_plan(self, version: int, relaxing: bool, fast_tracked: bool, reasons: Sequence[str]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO plans VALUES (?, ?, ?, ?)",
                       (version, int(relaxing), int(fast_tracked), json.dumps(list(reasons))))

    def plan(self, version: int) -> tuple[bool, bool, list[str]] | None:
        rows = self._rows("SELECT * FROM plans WHERE version = ?", (version,))
        if not rows:
            return None
        return bool(rows[0]["relaxing"]), bool(rows[0]["fast_tracked"]), json.loads(rows[0]["reasons"])

    # sensor versions

    def sensor_versions(self, sensor: str | None = None) -> list[SensorVersion]:
        sql, args = "SELECT * FROM sensor_versions", tuple[str, ...]()
        if sensor is not None:
            sql, args = sql + " WHERE sensor = ?", (sensor,)
        return [_sv(r) for r in self._rows(sql + " ORDER BY began, rowid", args)]

    def open_versions(self) -> dict[str, SensorVersion]:
        return {r["sensor"]: _sv(r) for r in self._rows("SELECT * FROM sensor_versions WHERE ended IS NULL")}

    def switch_versions(self, switches: Sequence[tuple[str, int | None, _dt.datetime, int, int]]) -> None:
        """For each (sensor, version, at, base actions, base errors): close the sensor's open interval at
        `at` and open one for `version` (None: it runs nothing). One transaction for a whole fleet wave."""
        if not switches:
            return
        with self._tx() as db:
            for sensor, version, at, actions, errors in switches:
                db.execute("UPDATE sensor_versions SET ended = ? WHERE sensor = ? AND ended IS NULL",
                           (format_time(at), sensor))
                if version is not None:
                    db.execute("INSERT INTO sensor_versions VALUES (?, ?, ?, NULL, ?, ?)",
                               (sensor, version, format_time(at), actions, errors))

    def rebase(self, sensor: str, actions: int, errors: int) -> None:
        """The agent's counters went down (it restarted): measure from zero again."""
        with self._tx() as db:
            db.execute("UPDATE sensor_versions SET base_actions = ?, base_errors = ? "
                       "WHERE sensor = ? AND ended IS NULL", (actions, errors, sensor))

    # requests

    def request(self, verb: str, reason: str, operator: str, now: _dt.datetime) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO requests (verb, reason, operator, requested) VALUES (?, ?, ?, ?)",
                             (verb, reason, operator, format_time(now)))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def pending_requests(self) -> list[Request]:
        return [_request(r) for r in self._rows("SELECT * FROM requests WHERE applied IS NULL ORDER BY id")]

    def get_request(self, rid: int) -> Request | None:
        rows = self._rows("SELECT * FROM requests WHERE id = ?", (rid,))
        return _request(rows[0]) if rows else None

    def settle_request(self, rid: int, result: RequestResult, now: _dt.datetime) -> None:
        with self._tx() as db:
            db.execute("UPDATE requests SET applied = ?, result = ? WHERE id = ?",
                       (format_time(now), str(result), rid))


def _sv(r: sqlite3.Row) -> SensorVersion:
    return SensorVersion(r["sensor"], r["version"], parse_time(r["began"]),
                         parse_time(r["ended"]) if r["ended"] else None, r["base_actions"], r["base_errors"])


def _request(r: sqlite3.Row) -> Request:
    return Request(r["id"], r["verb"], r["reason"], r["operator"], parse_time(r["requested"]),
                   parse_time(r["applied"]) if r["applied"] else None,
                   None if r["result"] is None else RequestResult.from_text(r["result"]))


def _progress_from(d: Mapping[str, Any]) -> Progress:
    def t(key: str) -> _dt.datetime | None:
        return _dt.datetime.fromisoformat(d[key]).astimezone(_dt.UTC) if d.get(key) else None

    return Progress(target=d.get("target"), stable=d.get("stable"), stage=d.get("stage", -1), since=t("since"),
                    started=t("started"), paused=bool(d.get("paused")), halted=d.get("halted"),
                    aborted=d.get("aborted"), fast_tracked=bool(d.get("fastTracked")))

"""The notification outbox: a bounded, durable queue per target and the record of every delivery attempt.

`<state>/notify.db` (WAL, synchronous=FULL: a queued alert must survive a power cut too):

    observed    what the detector has seen (events.py `Observed`), one row
    outbox      one row per (target, notification id): pending → delivered | dropped, attempts, next try
    deliveries  every attempt and its outcome (delivered, failed, timeout, unreachable, error) and every
                drop: what `palisade ledger --notifications` shows

`record()` writes the new `observed` and enqueues the notifications in one transaction, so a crash
either leaves both (nothing is detected again) or neither (the detector finds the same
notifications, with the same ids, again): none is lost or enqueued twice at the source. A row turns
`delivered` only after a 2xx, in the transaction that records that attempt. The queue keeps at most
`limit` pending rows per target: enqueueing beyond drops the oldest pending one (state `dropped`, a
`dropped` delivery row, a metric), because during a long outage the newest news matters most.

Why not the ledger: the ledger is the reconciler thread's (its connection and lock), while attempts
happen in delivery threads, and an attempt's record and its outbox row must commit together —
possible only in one database. Settled rows beyond the newest `KEEP_SETTLED`, and attempts beyond
`KEEP_DELIVERIES`, are pruned.
"""
from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler.errors import StateError
from reconciler.notify.config import Target
from reconciler.notify.events import Notification, Observed
from reconciler.state import sqlitedb, statedir
from wire.bundle import format_time, parse_time

__all__ = ["NOTIFY_DB", "Delivery", "Outbox", "Outcome", "Queued", "Recorded"]

NOTIFY_DB = statedir.NOTIFY_DB
SCHEMA_VERSION = 1
KEEP_SETTLED = 10_000
KEEP_DELIVERIES = 100_000

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE observed (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL);
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    target       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    notification TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dropped')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    enqueued     TEXT NOT NULL,
    settled      TEXT,
    UNIQUE (target, event_id)
);
CREATE INDEX outbox_queue ON outbox (target, state, seq);
CREATE TABLE deliveries (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    time     TEXT NOT NULL,
    target   TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind     TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    outcome  TEXT NOT NULL,
    status   INTEGER,
    error    TEXT,
    seconds  REAL
);
"""


class Outcome(StrEnum):
    """What became of one attempt (the `outcome` label of palisade_notifications_total)."""

    DELIVERED = "delivered"  # a 2xx
    FAILED = "failed"  # another HTTP status
    TIMEOUT = "timeout"  # no answer within the target's timeout
    UNREACHABLE = "unreachable"  # connection refused, DNS, TLS
    ERROR = "error"  # anything else on the way
    DROPPED = "dropped"  # the queue was full: pushed out by a newer one, never sent again


@dataclass(frozen=True)
class Queued:
    seq: int
    target: str
    notification: Notification
    attempts: int
    next_attempt: float  # unix seconds


@dataclass(frozen=True)
class Delivery:
    """One row of the delivery record."""

    id: int
    time: _dt.datetime
    target: str
    event: str
    kind: str
    attempt: int
    outcome: Outcome
    status: int | None
    error: str | None
    seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "time": format_time(self.time), "target": self.target, "event": self.event,
                "kind": self.kind, "attempt": self.attempt, "outcome": str(self.outcome), "status": self.status,
                "error": self.error, "seconds": self.seconds}


@dataclass(frozen=True)
class Recorded:
    """What one `record` did: (target, id) enqueued, and pushed out of a full queue."""

    enqueued: tuple[tuple[str, str], ...] = ()
    dropped: tuple[tuple[str, str], ...] = ()


def path_of(state: Path | statedir.StateView) -> Path:
    return statedir.StateView.of(state).notify_db


class Outbox:
    """The outbox of one state directory; safe to use from several threads (one connection, one lock)."""

    def __init__(self, path: Path, db: sqlite3.Connection, writable: bool) -> None:
        self.path = path
        self._db = db
        self._writable = writable
        self._lock = threading.Lock()

    @classmethod
    def open(cls, state: Path | statedir.StateView, *, readonly: bool = False) -> Outbox:
        path = path_of(state)
        try:
            if readonly:
                if not path.is_file():
                    raise StateError(f"no notification outbox at {path} (was `palisade serve --notify` run?)")
                db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                db = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            sqlitedb.ensure_schema(db, path, _SCHEMA, SCHEMA_VERSION, "notification outbox", create=not readonly)
        except sqlite3.Error as e:
            raise StateError(f"cannot open the notification outbox {path}: {e}") from None
        db.row_factory = sqlite3.Row
        return cls(path, db, not readonly)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the detector's side --------------------------------------------------------

    def observed(self) -> Observed | None:
        rows = self._rows("SELECT doc FROM observed WHERE id = 1")
        return Observed.from_json(json.loads(rows[0]["doc"])) if rows else None

    def record(self, observed: Observed, notifications: Iterable[Notification], targets: Iterable[Target],
               limit: int, *, now: _dt.datetime | None = None) -> Recorded:
        """Store `observed` and enqueue each notification for each target that wants its kind, in one
        transaction; a full queue drops its oldest pending row for each new one."""
        when = now or _dt.datetime.now(_dt.UTC)
        enqueued: list[tuple[str, str]] = []
        dropped: list[tuple[str, str]] = []
        targets = tuple(targets)
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO observed (id, doc) VALUES (1, ?)",
                       (json.dumps(observed.to_json(), sort_keys=True),))
            for n in notifications:
                for t in targets:
                    if not t.wants(n.kind):
                        continue
                    cur = db.execute(
                        "INSERT OR IGNORE INTO outbox (target, event_id, kind, notification, state, next_attempt,"
                        " enqueued) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                        (t.name, n.id, str(n.kind), json.dumps(n.to_json(), sort_keys=True), when.timestamp(),
                         format_time(when)))
                    if cur.rowcount == 0:
                        continue  # already queued once: the outbox keeps one row per target and id
                    enqueued.append((t.name, n.id))
                    dropped.extend((t.name, e) for e in self._trim(db, t.name, limit, when))
            if enqueued:
                self._prune(db)
        return Recorded(tuple(enqueued), tuple(dropped))

    def _trim(self, db: sqlite3.Connection, target: str, limit: int, when: _dt.datetime) -> list[str]:
        over = db.execute("SELECT COUNT(*) FROM outbox WHERE target = ? AND state = 'pending'",
                          (target,)).fetchone()[0] - limit
        if over <= 0:
            return []
        rows = db.execute("SELECT seq, event_id, kind, attempts FROM outbox WHERE target = ? AND state = 'pending'"
                          " ORDER BY seq LIMIT ?", (target, over)).fetchall()
        for r in rows:
            db.execute("UPDATE outbox SET state = 'dropped', settled = ? WHERE seq = ?", (format_time(when), r[0]))
            self._attempt(db, when, target, r[1], r[2], r[3], Outcome.DROPPED, None,
                          f"queue full ({limit} undelivered): dropped for a newer notification", None)
        return [r[1] for r in rows]

    def _prune(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM outbox WHERE state != 'pending' AND seq <= "
                   "(SELECT seq FROM outbox WHERE state != 'pending' ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                   (KEEP_SETTLED,))
        db.execute("DELETE FROM deliveries WHERE id <= (SELECT MAX(id) FROM deliveries) - ?", (KEEP_DELIVERIES,))

    # -- the delivery side ------------------------------------------------------------

    def head(self, target: str) -> Queued | None:
        """The oldest pending notification of `target` (delivery is in order: nothing passes it)."""
        rows = self._rows("SELECT seq, notification, attempts, next_attempt FROM outbox "
                          "WHERE target = ? AND state = 'pending' ORDER BY seq LIMIT 1", (target,))
        if not rows:
            return None
        r = rows[0]
        return Queued(r["seq"], target, Notification.from_json(json.loads(r["notification"])), r["attempts"],
                      r["next_attempt"])

    def settle(self, q: Queued, outcome: Outcome, *, status: int | None, error: str | None, seconds: float,
               retry_at: float | None, now: _dt.datetime | None = None) -> None:
        """Record an attempt on `q` and, in the same transaction, mark it delivered (a 2xx) or due again at
        `retry_at`. A row no longer pending (dropped meanwhile) only gets the attempt recorded."""
        when = now or _dt.datetime.now(_dt.UTC)
        with self._write() as db:
            self._attempt(db, when, q.target, q.notification.id, str(q.notification.kind), q.attempts + 1, outcome,
                          status, error, seconds)
            if outcome is Outcome.DELIVERED:
                db.execute("UPDATE outbox SET state = 'delivered', attempts = attempts + 1, settled = ? "
                           "WHERE seq = ? AND state = 'pending'", (format_time(when), q.seq))
            else:
                db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt = ? "
                           "WHERE seq = ? AND state = 'pending'", (retry_at or when.timestamp(), q.seq))

    @staticmethod
    def _attempt(db: sqlite3.Connection, when: _dt.datetime, target: str, event: str, kind: str, attempt: int,
                 outcome: Outcome, status: int | None, error: str | None, seconds: float | None) -> None:
        db.execute("INSERT INTO deliveries (time, target, event_id, kind, attempt, outcome, status, error, seconds)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (format_time(when), target, event, kind, attempt, str(outcome), status, error, seconds))

    # -- reading -----------------------------------------------------------------------

    def deliveries(self, limit: int | None = None, *, target: str | None = None) -> list[Delivery]:
        """Attempts and drops, newest first."""
        query = sqlitedb.newest_first("deliveries", [("target = ?", target)], limit)
        return [Delivery(r["id"], parse_time(r["time"]), r["target"], r["event_id"], r["kind"], r["attempt"],
                         Outcome(r["outcome"]), r["status"], r["error"], r["seconds"])
                for r in self._rows(*query)]

    def pending(self) -> dict[str, int]:
        """Undelivered notifications per target."""
        return {r[0]: int(r[1]) for r in self._rows(
            "SELECT target, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY target")}

    # -- internals ---------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The connection's lock, then one write transaction."""
        if not self._writable:
            raise StateError(f"the notification outbox {self.path} was opened read-only")
        with self._lock, sqlitedb.transaction(self._db, "notification outbox write failed") as db:
            yield db

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return sqlitedb.rows(self._db, sql, args, "cannot read the notification outbox")

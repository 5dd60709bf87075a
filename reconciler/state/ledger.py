"""The reconciler's state: an SQLite ledger of every processed commit, and events.

`<state>/palisade.db` (WAL, synchronous=FULL, schema version in `meta`) is the
auditor's record: which commit was accepted or rejected, why, as which bundle
version, who wrote and who approved it. `<state>/lock` is held (flock) by the
one reconciler that may write the state directory and its bundle store; another
finds it held (`StateInUse`), and a standby server tries again until the kernel
releases it with its holder (reconciler/serve/service.py).

Publishing an accepted commit touches two stores — the ledger and the bundle
store — that cannot share a transaction. The order makes every crash point
recoverable without losing an accepted commit or reusing a version:

1. `next_version(store)` = 1 + the highest version the ledger *or* the store
   has ever held (index, or any bundle file, even one no index names).
2. The caller builds and signs the bundle with that version, and the rollout
   controller decides the pins of the index that publishes it.
3. `record_accepted` — the one publish call — inserts the row as `publishing`
   (the version is now reserved: the column is UNIQUE and rows are never
   deleted) and commits;
4. publishes: bundle file, then the index with those pins (store.py makes each
   step atomic);
5. turns the row `accepted` and commits.

`recover(store)` — call it after opening, before reconciling — settles a row a
crash left `publishing` (`unsettled` says which, and what the store holds of
it, so the caller can decide the pins again first): if the store holds that
version's bundle for that commit, it finishes the publish (writing the index if
a crash came between bundle and index; a no-op if the index already names it)
and marks the row `accepted`; otherwise nothing was published and the row
becomes `interrupted` (its version stays burnt), so the commit is processed
again under a new version. A crash before step 3 leaves no trace anywhere, and
the commit is simply processed again. Rejections are a single insert.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from reconciler.errors import StateError, VerificationError
from reconciler.findings import Finding
from reconciler.repository.acceptances import Acceptances
from reconciler.state import sqlitedb, statedir
from reconciler.state.store import SignedBundle
from wire.bundle import format_time, parse_bundle, parse_time

if TYPE_CHECKING:
    from reconciler.state.store import Store

DB_FILE = statedir.LEDGER_DB
LOCK_FILE = statedir.LOCK_FILE
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE commits (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    commit_id  TEXT NOT NULL,
    parent     TEXT,
    position   INTEGER NOT NULL,
    result     TEXT NOT NULL CHECK (result IN ('publishing', 'accepted', 'rejected', 'interrupted')),
    findings   TEXT NOT NULL,
    version    INTEGER UNIQUE,
    processed  TEXT NOT NULL,
    author     TEXT NOT NULL,
    committed  TEXT,
    approvers  TEXT NOT NULL
);
CREATE INDEX commits_by_commit ON commits (commit_id);
-- At most one publish in flight: recover() must settle it before the next one.
CREATE UNIQUE INDEX one_publishing ON commits (result) WHERE result = 'publishing';
CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    time     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL,
    actor    TEXT
);
CREATE INDEX events_by_kind ON events (kind, id);
"""


class StateInUse(StateError):
    """Another live process holds the state lock (exit 2; `palisade serve --leader-elect` waits for it)."""

    def __init__(self, lock: Path, holder: int | None) -> None:
        super().__init__(
            f"the state directory {lock.parent} is in use by another reconciler (pid {holder or 'unknown'}); "
            "run one reconciler per state directory, or `palisade serve --leader-elect` to stand by")
        self.lock, self.holder = lock, holder


def lock_holder(state_dir: Path | statedir.StateView) -> int | None:
    """The pid the state lock names (the last process that took it; it may have died since), or None.
    Reads only: what a standby shows about its leader."""
    try:
        text = statedir.StateDir.of(state_dir).lock.read_text("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class Result(StrEnum):
    PUBLISHING = "publishing"  # reserved, publish in progress (or interrupted by a crash)
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    INTERRUPTED = "interrupted"  # a crash stopped the publish before the bundle was written


@dataclass(frozen=True)
class CommitInfo:
    """What the ledger records about a commit, besides the outcome."""

    commit: str
    parent: str | None  # the first parent
    position: int  # on the first-parent chain, counted from the root commit (0)
    author: str  # "Name <email>"
    committed: _dt.datetime | None = None  # committer time
    approvers: tuple[str, ...] = ()


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    commit: str
    parent: str | None
    position: int
    result: Result
    findings: tuple[Finding, ...]
    version: int | None
    processed: _dt.datetime
    author: str
    committed: _dt.datetime | None
    approvers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "commit": self.commit,
            "parent": self.parent,
            "position": self.position,
            "result": str(self.result),
            "findings": [f.to_json() for f in self.findings],
            "version": self.version,
            "processed": format_time(self.processed),
            "author": self.author,
            "committed": format_time(self.committed) if self.committed else None,
            "approvers": list(self.approvers),
        }


@dataclass(frozen=True)
class Unsettled:
    """A publish a crash left `publishing`, and what the store holds of it."""

    entry: LedgerEntry
    bundle: SignedBundle | None  # the store's file of that version, for that commit; None: it was never written


@dataclass(frozen=True)
class Event:
    id: int
    time: _dt.datetime
    kind: str
    subject: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    actor: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "time": format_time(self.time), "kind": self.kind, "subject": self.subject,
                "detail": dict(self.detail), "actor": self.actor}


class Ledger:
    """The state directory's ledger. Open with `Ledger.open`; use as a context manager."""

    def __init__(self, state_dir: Path, db: sqlite3.Connection, lock_fd: int | None) -> None:
        self.state_dir = state_dir
        self._db = db
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, state_dir: Path | statedir.StateView, *, readonly: bool = False) -> Ledger:
        """Open (creating if needed) the ledger of `state_dir` and take its lock.

        `readonly=True` (for status and ledger commands, which run beside the
        reconciler) takes no lock and never creates anything.
        """
        state = statedir.StateDir.of(state_dir)
        state_dir, path = state.root, state.ledger_db
        if readonly:
            if not path.is_file():
                raise StateError(f"no ledger at {path} (has a reconciler run with --state {state_dir}?)")
            try:
                db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
                _check_schema(db, path, create=False)
            except sqlite3.Error as e:
                raise StateError(f"cannot read the ledger {path}: {e}") from None
            db.row_factory = sqlite3.Row
            return cls(state_dir, db, None)
        try:
            state.create()
        except OSError as e:
            raise StateError(f"cannot create the state directory {state_dir}: {e.strerror}") from None
        lock_fd = _lock(state.lock)
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            # The ledger is the audit record: an accepted commit must survive power loss too.
            db.execute("PRAGMA synchronous=FULL")
            _check_schema(db, path, create=True)
        except sqlite3.Error as e:
            os.close(lock_fd)
            raise StateError(f"cannot open the ledger {path}: {e}") from None
        except BaseException:
            os.close(lock_fd)
            raise
        db.row_factory = sqlite3.Row
        return cls(state_dir, db, lock_fd)

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries --------------------------------------------------------------

    def entries(self, limit: int | None = None, *, after: int | None = None) -> list[LedgerEntry]:
        """Processed commits, newest first; `after`: only rows with a higher id (a reader's cursor)."""
        return [_entry(r) for r in self._query(*sqlitedb.newest_first("commits", [("id > ?", after)], limit))]

    def last_accepted(self) -> LedgerEntry | None:
        return self._one("SELECT * FROM commits WHERE result = 'accepted' ORDER BY id DESC LIMIT 1")

    def last_rejected(self) -> LedgerEntry | None:
        return self._one("SELECT * FROM commits WHERE result = 'rejected' ORDER BY id DESC LIMIT 1")

    def entry(self, commit: str) -> LedgerEntry | None:
        """The newest accepted or rejected record of `commit`."""
        return self._one("SELECT * FROM commits WHERE commit_id = ? AND result IN ('accepted', 'rejected') "
                         "ORDER BY id DESC LIMIT 1", (commit,))

    def is_processed(self, commit: str) -> bool:
        """True once `commit` has been accepted or rejected (interrupted publishes do not count)."""
        return self.entry(commit) is not None

    def acceptances(self) -> Acceptances:
        """When each accepted commit was first accepted, by first-parent position (observation windows)."""
        first: dict[int, _dt.datetime] = {}
        for r in self._query("SELECT position, processed FROM commits WHERE result = 'accepted'"):
            when = parse_time(r["processed"])
            first[int(r["position"])] = min(when, first.get(int(r["position"]), when))
        return Acceptances(tuple(sorted(first.items())))

    def pending(self) -> LedgerEntry | None:
        return self._one("SELECT * FROM commits WHERE result = 'publishing'")

    def next_version(self, store: Store | None = None) -> int:
        """The version for the next bundle: above everything the ledger and the store ever held."""
        row = self._query("SELECT MAX(version) FROM commits")[0]
        highest = row[0] or 0
        if store is not None:
            highest = max(highest, store.latest_version())
        return int(highest) + 1

    def events(self, kind: str | None = None, limit: int | None = None, *, after: int | None = None) -> list[Event]:
        """Events, newest first, optionally of one kind; `after`: only rows with a higher id (a reader's cursor)."""
        query = sqlitedb.newest_first("events", [("kind = ?", kind), ("id > ?", after)], limit)
        return [_event(r) for r in self._query(*query)]

    # -- updates --------------------------------------------------------------

    def record_rejected(self, info: CommitInfo, findings: Iterable[Finding], *,
                        now: _dt.datetime | None = None) -> LedgerEntry:
        """Record a commit that failed validation, with every finding; nothing is published."""
        with self._transaction() as db:
            rowid = self._insert(db, info, Result.REJECTED, findings, None, now)
        return self._get(rowid)

    def record_accepted(self, info: CommitInfo, findings: Iterable[Finding], bundle: SignedBundle | bytes,
                        store: Store, *, stages: Mapping[str, int] | None = None, now: _dt.datetime | None = None,
                        expiry: _dt.timedelta | None = None) -> LedgerEntry:
        """Publish an accepted commit: reserve the bundle's version, write the bundle and the index to
        `store`, then mark the commit accepted.

        `bundle` is the signed bundle (its version from `next_version`, its commit
        `info.commit`); bare bytes, from a caller without the typed bundle, are
        read here and verified by the store. `stages` are the new index's pins
        (the rollout controller's `publish_pins`; None: every stage);
        `findings` are the warnings of an accepted commit; `expiry` is the
        index lifetime (palisade.yaml). See the module docstring for what a
        crash at each step leaves.
        """
        if isinstance(bundle, SignedBundle):
            parsed = bundle.bundle
        else:
            try:
                parsed = parse_bundle(bundle)
            except VerificationError as e:
                raise StateError(f"cannot record an unreadable bundle: {e}") from None
        if parsed.commit != info.commit:
            raise StateError(f"the bundle is for commit {parsed.commit}, not {info.commit}")
        if self.pending() is not None:
            raise StateError("a publish interrupted by a crash is not settled; call recover() first")
        floor = self.next_version(store)
        if parsed.version < floor:
            raise StateError(f"bundle version {parsed.version} was already used; the next free one is {floor}")
        with self._transaction() as db:
            rowid = self._insert(db, info, Result.PUBLISHING, findings, parsed.version, now)
        try:
            store.publish(bundle, now=now, expiry=expiry, stages=stages)
        except BaseException:
            # Settle the row now if the store allows it (e.g. nothing was written), so the next
            # commit is not blocked by a pending publish; a crash leaves that to recover().
            with suppress(Exception):  # the original error is the one to report
                self.recover(store, stages=stages)
            raise
        with self._transaction() as db:
            db.execute("UPDATE commits SET result = 'accepted' WHERE id = ?", (rowid,))
        return self._get(rowid)

    def unsettled(self, store: Store) -> Unsettled | None:
        """The publish a crash left `publishing`, if any, with the bundle the store holds for it."""
        row = self.pending()
        if row is None:
            return None
        assert row.version is not None
        found = store.read_bundle(row.version)
        return Unsettled(row, found if found is not None and found.bundle.commit == row.commit else None)

    def recover(self, store: Store, unsettled: Unsettled | None = None, *,
                stages: Mapping[str, int] | None = None) -> LedgerEntry | None:
        """Settle a publish a crash interrupted (see the module docstring); returns the settled entry.

        `unsettled` is what `unsettled(store)` returned (read again when not given); `stages` are the pins
        of the index if the publish is finished now (None: every stage)."""
        if unsettled is None:
            unsettled = self.unsettled(store)
            if unsettled is None:
                return None
        row, found = unsettled.entry, unsettled.bundle
        assert row.version is not None
        index = store.index()
        if found is not None and (index is None or index.version <= row.version):
            store.publish(found, stages=stages)  # a no-op when the index already names it
            result = Result.ACCEPTED
        else:
            result = Result.INTERRUPTED
        with self._transaction() as db:
            db.execute("UPDATE commits SET result = ? WHERE id = ?", (str(result), row.id))
            self._insert_event(db, "publish-recovered" if found is not None else "publish-interrupted",
                               row.commit, {"version": row.version, "result": str(result)}, None, None)
        return self._get(row.id)

    def record_event(self, kind: str, subject: str, detail: Mapping[str, Any] | None = None,
                     actor: str | None = None, *, now: _dt.datetime | None = None) -> Event:
        """Append an event (rollout promotion, halt, rewrite accepted, ...)."""
        with self._transaction() as db:
            rowid = self._insert_event(db, kind, subject, detail or {}, actor, now)
        return _event(self._query("SELECT * FROM events WHERE id = ?", (rowid,))[0])

    # -- internals --------------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        if self._lock_fd is None:
            raise StateError("the ledger was opened read-only")
        return sqlitedb.transaction(self._db, "ledger write failed")

    def _insert(self, db: sqlite3.Connection, info: CommitInfo, result: Result, findings: Iterable[Finding],
                version: int | None, now: _dt.datetime | None) -> int:
        cur = db.execute(
            "INSERT INTO commits (commit_id, parent, position, result, findings, version, processed, author,"
            " committed, approvers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.commit, info.parent, info.position, str(result),
                json.dumps([f.to_json() for f in sorted(findings)]), version, format_time(now or _utcnow()),
                info.author, format_time(info.committed) if info.committed else None,
                json.dumps(list(info.approvers)),
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _insert_event(self, db: sqlite3.Connection, kind: str, subject: str, detail: Mapping[str, Any],
                      actor: str | None, now: _dt.datetime | None) -> int:
        cur = db.execute(
            "INSERT INTO events (time, kind, subject, detail, actor) VALUES (?, ?, ?, ?, ?)",
            (format_time(now or _utcnow()), kind, subject, json.dumps(dict(detail), sort_keys=True), actor),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _query(self, query: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return sqlitedb.rows(self._db, query, args, "cannot read the ledger")

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> LedgerEntry | None:
        rows = self._query(sql, args)
        return _entry(rows[0]) if rows else None

    def _get(self, rowid: int) -> LedgerEntry:
        entry = self._one("SELECT * FROM commits WHERE id = ?", (rowid,))
        assert entry is not None
        return entry


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _lock(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StateError(f"cannot open the state lock {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise StateInUse(path, int(holder) if holder.isdigit() else None) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _check_schema(db: sqlite3.Connection, path: Path, *, create: bool) -> None:
    sqlitedb.ensure_schema(db, path, _SCHEMA, SCHEMA_VERSION, "ledger", create=create)


def _entry(r: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        id=r["id"],
        commit=r["commit_id"],
        parent=r["parent"],
        position=r["position"],
        result=Result(r["result"]),
        findings=tuple(Finding.from_json(f) for f in json.loads(r["findings"])),
        version=r["version"],
        processed=parse_time(r["processed"]),
        author=r["author"],
        committed=parse_time(r["committed"]) if r["committed"] else None,
        approvers=tuple(json.loads(r["approvers"])),
    )


def _event(r: sqlite3.Row) -> Event:
    return Event(r["id"], parse_time(r["time"]), r["kind"], r["subject"],
                 MappingProxyType(json.loads(r["detail"])), r["actor"])

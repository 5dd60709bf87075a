"""What the state directory's SQLite files (the ledger, rollout.db, notify.db) share: a write transaction and
a read, each turning SQLite's errors into `StateError` with the caller's words for what failed, and the
versioned schema of a database made in one transaction."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.errors import StateError


@contextmanager
def transaction(db: sqlite3.Connection, failed: str) -> Iterator[sqlite3.Connection]:
    """One write transaction on `db` (opened with isolation_level=None), rolled back if the block raises.

    BEGIN IMMEDIATE takes the write lock up front, so a second writer waits (busy timeout) instead of
    failing at its first write. An SQLite error becomes `StateError(f"{failed}: {error}")`.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.Error as e:
        raise StateError(f"{failed}: {e}") from None


def rows(db: sqlite3.Connection, sql: str, args: tuple[Any, ...], failed: str) -> list[sqlite3.Row]:
    """Every row of one query; an SQLite error becomes `StateError(f"{failed}: {error}")`."""
    try:
        return list(db.execute(sql, args).fetchall())
    except sqlite3.Error as e:
        raise StateError(f"{failed}: {e}") from None


def ensure_schema(db: sqlite3.Connection, path: Path, schema: str, version: int, what: str, *,
                  create: bool) -> None:
    """Create `schema` (with a `meta` table holding `schema_version`) in a new database, in one script and one
    transaction so a crash never leaves half a schema behind; refuse another version with a StateError.
    SQLite errors are the caller's to turn into its own message."""
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if not has_meta:
        if not create:
            raise StateError(f"{path} is not a palisade {what}")
        db.executescript(f"BEGIN IMMEDIATE; {schema}"
                         f"INSERT INTO meta VALUES ('schema_version', '{version}'); COMMIT;")
        return
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    found = int(row[0]) if row else 0
    if found != version:
        newer = "a newer" if found > version else "an unknown"
        raise StateError(f"{path} has {what} schema version {found}, written by {newer} palisade "
                         f"(this one reads version {version})")


def newest_first(table: str, where: Iterable[tuple[str, Any]] = (), limit: int | None = None
                 ) -> tuple[str, tuple[Any, ...]]:
    """The query of `table`'s rows, highest id first: `where` holds (condition with one `?`, value) pairs,
    and a None value leaves its condition out; `limit` None: every row."""
    sql, args = f"SELECT * FROM {table} WHERE 1 = 1", list[Any]()
    for condition, value in where:
        if value is not None:
            sql += f" AND {condition}"
            args.append(value)
    sql += " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, tuple(args)

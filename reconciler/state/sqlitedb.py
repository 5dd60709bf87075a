"""What the state directory's SQLite files (the ledger, rollout.db) share: a write transaction and a read,
each turning SQLite's errors into `StateError` with the caller's words for what failed."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
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

"""`GET /ui/live`: server-sent events telling open console pages that what they show changed.

    event: publish     the server serves a new index (data: {"version", "serial"}): a publish, a re-sign,
                       a rollout moving a stage pin
    event: heartbeat   the fleet table changed (data: {"agents": N} is not sent: only that it changed)

Nothing else is sent but a comment every `KEEPALIVE` seconds (so a proxy keeps the stream open and a gone
client is noticed). console.js answers either event by fetching its own URL with `?fragment=1` and swapping
`<main id="content">` (layout.py), so a page needs nothing to be live.

The fleet is watched cheaply: SQLite's `PRAGMA data_version` on a connection of this module's own, which
changes exactly when another connection (the server's heartbeat handler, a standby's) committed; one
check every `POLL` seconds is shared by every open stream (`FleetWatch`). Heartbeat events are sent at most
once per `HEARTBEAT_EVERY` seconds per stream: a thousand agents reporting every ten seconds must not make
every page reload a hundred times a second.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from reconciler.console.sources import ConsoleSources

__all__ = ["HEARTBEAT_EVERY", "FleetWatch", "live"]

POLL = 0.25
HEARTBEAT_EVERY = 2.0
KEEPALIVE = 15.0
#: Reconnect delay the browser is told (milliseconds).
RETRY_MS = 2000


class FleetWatch:
    """The fleet database's change counter, read at most once per `POLL` seconds whoever asks."""

    def __init__(self, sources: ConsoleSources) -> None:
        self._sources = sources
        self._db: sqlite3.Connection | None = None
        self._checked = 0.0
        self._value: int = 0
        self._changes = 0  # counts every change seen, across reopenings

    def changes(self) -> int:
        """A number that grows whenever the fleet table changed since the last call (cheap; event loop only)."""
        now = time.monotonic()
        if now - self._checked < POLL:
            return self._changes
        self._checked = now
        if self._db is None:
            if not self._sources.state.has_fleet():
                return self._changes
            try:
                self._db = sqlite3.connect(f"file:{self._sources.state.fleet_db}?mode=ro", uri=True,
                                           check_same_thread=False, timeout=0.05)
                self._value = self._version()
                self._changes += 1  # the database appeared: the first agent reported
            except sqlite3.Error:
                self._db = None
                return self._changes
        try:
            value = self._version()
        except sqlite3.Error:
            return self._changes
        if value != self._value:
            self._value = value
            self._changes += 1
        return self._changes

    def _version(self) -> int:
        assert self._db is not None
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _event(name: str, data: object) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _index_key(sources: ConsoleSources) -> tuple[int, int] | None:
    index = sources.index()
    return None if index is None else (index.version, index.serial)


async def _stream(sources: ConsoleSources, watch: FleetWatch) -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_MS}\n: palisade console live updates\n\n".encode()
    served = _index_key(sources)
    seen = watch.changes()
    sent_heartbeat = 0.0
    quiet_since = time.monotonic()
    while not sources.stopping():
        await asyncio.sleep(POLL)
        now = time.monotonic()
        current = _index_key(sources)
        if current != served:
            served = current
            quiet_since = now
            yield _event("publish", {"version": current[0], "serial": current[1]} if current else {})
        changes = watch.changes()
        if changes != seen and now - sent_heartbeat >= HEARTBEAT_EVERY:
            seen, sent_heartbeat, quiet_since = changes, now, now
            yield _event("heartbeat", {})
        if now - quiet_since >= KEEPALIVE:
            quiet_since = now
            yield b": keepalive\n\n"


def live(sources: ConsoleSources, watch: FleetWatch) -> StreamingResponse:
    """The event stream of one open page."""
    return StreamingResponse(_stream(sources, watch), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


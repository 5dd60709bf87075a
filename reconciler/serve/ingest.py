"""Heartbeat ingest with group commit: every heartbeat that arrives while one write is on disk goes
into the next write, one SQLite transaction for all of them.

A fleet's heartbeats come in bursts (every agent reports right after it applies a new version: ten
thousand agents polling a static server every 5 s send ~2,000 a second for a few seconds). One
transaction per heartbeat caps ingest at what one commit costs; here the commit is paid once per
batch, so the rate grows with the load instead of the queue. An agent is still answered 204 only
once its heartbeat is stored, and a write that fails fails every request of its batch (500, logged
by the server), never some silently.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from starlette.concurrency import run_in_threadpool

from wire.heartbeat import Heartbeat

__all__ = ["HeartbeatIngest"]

#: The most heartbeats in one transaction (each is a few hundred bytes to a few KiB of rows).
MAX_BATCH = 1000


class HeartbeatIngest:
    """`await submit(hb)` returns once `hb` is committed; one writer at a time, batching what waits."""

    def __init__(self, write: Callable[[Sequence[Heartbeat]], None]) -> None:
        self._write = write
        self._pending: list[tuple[Heartbeat, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, hb: Heartbeat) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((hb, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # shielded: a client that hangs up does not cancel the write it is part of
        await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await run_in_threadpool(self._write, [hb for hb, _ in batch])
            except Exception as e:  # every request of the batch learns it; the next batch tries again
                for _, done in batch:
                    if not done.done():
                        done.set_exception(e)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

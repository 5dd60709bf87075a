"""The published index in memory (`Publication`): bytes, ETag and the parsed index, swapped when the reconciler
publishes.

Agents poll the index far more often than anything changes, so a 304 never touches the disk. Long-pollers
wait on an `asyncio.Event` that the swap sets, so they return as soon as the new index is in place. The
publisher runs in another thread (or another process): `Publication.refresh()` is thread-safe, and a cheap
`stat()` of the index file every half second catches publishes by a process that cannot call it
(`palisade reconcile` next to `palisade serve`).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from reconciler.errors import VerificationError
from reconciler.state import statedir
from wire.bundle import MAX_OBJECT_BYTES, Index, parse_index, sha256_hex

#: The longest a client may hold `GET /v1/index?wait=` open.
MAX_WAIT_SECONDS = 300

log = logging.getLogger("palisade.server")


INDEX_FILE, BUNDLES_DIR, OBJECTS_DIR = statedir.INDEX_FILE, statedir.BUNDLES_DIR, statedir.OBJECTS_DIR


# ---------------------------------------------------------------------------
# The published index, in memory


@dataclass(frozen=True)
class Snapshot:
    """One published index as served."""

    data: bytes
    etag: str  # quoted sha256 hex of `data` (a strong validator)
    index: Index
    file_id: tuple[int, int, int, int]  # (device, inode, size, mtime_ns) of the file it was read from


class Publication:
    """The current index of a bundle store, and a way to wait for the next one.

    `refresh()` may be called from any thread; everything else runs on the
    event loop the server is bound to.
    """

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self._current: Snapshot | None = None
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._lock = threading.Lock()  # serialises disk reads from several threads
        self._bundles: _BundleCache = _BundleCache(self.store / BUNDLES_DIR)
        self._objects: _ObjectCache = _ObjectCache(self.store / OBJECTS_DIR)
        self._bad_file: tuple[int, int, int, int] | None = None  # an unreadable index already reported

    @property
    def current(self) -> Snapshot | None:
        return self._current

    def on_change(self, listener: Callable[[Snapshot], None]) -> None:
        """Call `listener(snapshot)` on the event loop whenever a new index is installed."""
        self._listeners.append(listener)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._closing = False

    def refresh(self) -> Snapshot | None:
        """Re-read the index file and install it if it changed (on the event loop, soon, when called
        from another thread). Thread-safe. Returns the new snapshot, or None if nothing changed."""
        with self._lock:
            snap = self._read(self._current)
        if snap is None:
            return None
        loop = self._loop
        if loop is None or loop.is_closed() or _on_loop(loop):
            self._install(snap)
        else:
            loop.call_soon_threadsafe(self._install, snap)
        return snap

    def close(self) -> None:
        """Release every long-poller now (server shutdown). Call on the event loop."""
        self._closing = True
        self._changed.set()

    async def wait_change(self, etag: str | None, timeout: float) -> Snapshot | None:
        """The current snapshot once its ETag differs from `etag`, or whatever is current after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            cur = self._current
            if (cur is not None and cur.etag != etag) or self._closing:
                return cur
            remaining = deadline - loop.time()
            if remaining <= 0:
                return cur
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def bundle(self, version: int) -> tuple[bytes, str] | None:
        """The bytes and ETag of bundle `version` if the current index lists it; None if it does not."""
        cur = self._current
        entry = cur.index.entry(version) if cur is not None else None
        if entry is None:
            return None
        return await self._bundles.get(version, entry.sha256, entry.size)

    async def object(self, sha256: str) -> bytes | None:
        """The bytes of the object named `sha256` (a valid digest), None if the store has no such object."""
        return await self._objects.get(sha256)

    # --- internals ---------------------------------------------------------------------

    def _read(self, current: Snapshot | None) -> Snapshot | None:
        path = self.store / INDEX_FILE
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                file_id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if current is not None and current.file_id == file_id:
                    return None
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.error("cannot read the index %s: %s", path, e.strerror)
            return None
        try:
            index = parse_index(data)
        except VerificationError as e:
            # The store publishes atomically, so this is damage from outside: keep serving the last good one.
            if file_id != self._bad_file:
                log.error("ignoring the index %s: %s", path, e)
                self._bad_file = file_id
            return None
        return Snapshot(data, f'"{sha256_hex(data)}"', index, file_id)

    def _install(self, snap: Snapshot) -> None:
        cur = self._current
        if cur is not None:
            if cur.etag == snap.etag:
                self._current = snap  # same bytes, new file: remember it so the stat check stays quiet
                return
            if snap.index.serial < cur.index.serial:
                # A read that raced a newer publish: never go backwards.
                return
        self._current = snap
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for listener in self._listeners:
            try:
                listener(snap)
            except Exception:
                log.exception("index listener failed")

    def _stat_changed(self) -> bool:
        try:
            st = os.stat(self.store / INDEX_FILE)
        except OSError:
            return False
        file_id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cur = self._current
        return file_id != self._bad_file and (cur is None or cur.file_id != file_id)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _BundleCache:
    """Recently served bundles, verified against the index digest once, kept in memory (bounded)."""

    def __init__(self, directory: Path, max_bytes: int = 256 * 1024 * 1024, max_items: int = 64) -> None:
        self._dir = directory
        self._max_bytes, self._max_items = max_bytes, max_items
        self._items: collections.OrderedDict[tuple[int, str], bytes] = collections.OrderedDict()
        self._size = 0

    async def get(self, version: int, sha256: str, size: int) -> tuple[bytes, str]:
        key = (version, sha256)
        data = self._items.get(key)
        if data is None:
            data = await run_in_threadpool(self._load, version, sha256, size)
            self._add(key, data)
        else:
            self._items.move_to_end(key)
        return data, f'"{sha256}"'

    def _load(self, version: int, sha256: str, size: int) -> bytes:
        # `version` is an int, so the name cannot leave the bundles directory.
        path = self._dir / f"v{version}.json"
        try:
            with open(path, "rb") as f:
                data = f.read(size + 1)
        except OSError as e:
            raise StoreDamaged(f"bundle v{version} is listed in the index but cannot be read: {e.strerror}") from None
        if len(data) != size or sha256_hex(data) != sha256:
            raise StoreDamaged(f"bundle v{version} on disk does not match the digest in the index")
        return data

    def _add(self, key: tuple[int, str], data: bytes) -> None:
        if len(data) > self._max_bytes:
            return
        self._items[key] = data
        self._size += len(data)
        while self._size > self._max_bytes or len(self._items) > self._max_items:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)


class _ObjectCache:
    """Recently served objects, verified against their name once, kept in memory (bounded)."""

    def __init__(self, directory: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._dir = directory
        self._max_bytes = max_bytes
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._size = 0

    async def get(self, sha256: str) -> bytes | None:
        data = self._items.get(sha256)
        if data is not None:
            self._items.move_to_end(sha256)
            return data
        data = await run_in_threadpool(self._load, sha256)
        if data is not None and len(data) <= self._max_bytes:
            self._items[sha256] = data
            self._size += len(data)
            while self._size > self._max_bytes:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)
        return data

    def _load(self, sha256: str) -> bytes | None:
        # `sha256` matched ^[0-9a-f]{64}$, so the name cannot leave the objects directory.
        try:
            with open(self._dir / sha256, "rb") as f:
                data = f.read(MAX_OBJECT_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreDamaged(f"object {sha256} cannot be read: {e.strerror}") from None
        if sha256_hex(data) != sha256:
            raise StoreDamaged(f"object {sha256} on disk does not match its name")
        return data


class StoreDamaged(Exception):
    """A file the index lists is missing or does not match its digest (the API answers 500)."""

    pass

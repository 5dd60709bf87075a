"""The HTTP API of `palisade serve` (Starlette on uvicorn).

    GET /v1/index                 the signed index, byte for byte as stored; strong ETag,
                                  If-None-Match → 304, `?wait=SECONDS` long-poll
    GET /v1/bundles/{version}     a bundle the index lists; immutable, cacheable
    GET /v1/objects/{sha256}      a CO-RE object bundles list, by the sha256 of its bytes; immutable
    GET /v1/status                reconcile status (JSON)
    GET /v1/agents                the fleet: every agent's last heartbeat
    GET /v1/observations          stored observations, summed; filters policy (repeatable),
                                  sensor, binary, workload, since, until (RFC 3339), limit
    GET /metrics                  Prometheus text format
    GET /openapi.json             this API, described

Agents poll the index far more often than anything changes, so the index is
kept in memory as a `Publication` (bytes + ETag + parsed index) and swapped
when the reconciler publishes: a 304 never touches the disk. Long-pollers wait
on an `asyncio.Event` that the swap sets, so they return as soon as the new
index is in place, not at the next tick of a sleep loop. The publisher runs in
another thread (or another process): `Publication.refresh()` is thread-safe,
and a cheap `stat()` of the index file every half second catches publishes by
a process that cannot call it (`palisade reconcile` next to `palisade serve`).

A bundle is served only if the current index lists it, and only if its bytes
match the digest the index gives: a file left behind by a crashed publish is
never handed out with an "immutable" cache header. Objects are content-addressed:
one is served only if its bytes hash to the name asked for (agents check them
against the digests their signed bundle lists anyway).

Every error is JSON `{"error": ..., "detail": ...}` with a 4xx code (or 500 for
a bug, which is logged); a malformed request that never reaches the
application (oversized headers, bad HTTP) gets the same shape from the
protocol layer.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as _dt
import json
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from wire.bundle import MAX_OBJECT_BYTES, Index, parse_index, sha256_hex

from . import statedir
from .errors import PalisadeError, UsageError, VerificationError
from .metrics import CONTENT_TYPE, Metrics

__all__ = [
    "INDEX_FILE",
    "MAX_WAIT_SECONDS",
    "BackgroundServer",
    "Publication",
    "Snapshot",
    "create_app",
    "parse_listen",
    "run",
]

log = logging.getLogger("palisade.server")

#: The store layout (shared with reconciler.store): `<store>/index.json`, `<store>/bundles/v<N>.json`.
INDEX_FILE, BUNDLES_DIR, OBJECTS_DIR = statedir.INDEX_FILE, statedir.BUNDLES_DIR, statedir.OBJECTS_DIR
MAX_WAIT_SECONDS = 300
#: Request heads larger than this get a 431 from the application; the protocol layer refuses
#: anything beyond `_H11_MAX_HEAD` before it is even parsed.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 100
_H11_MAX_HEAD = 64 * 1024

_VERSION = re.compile(r"^[0-9]{1,12}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WAIT = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3})?$")
_JSON = "application/json"
_INDEX_CACHE = "no-cache"
_BUNDLE_CACHE = "public, max-age=31536000, immutable"
_STORE_POLL_SECONDS = 0.5
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
            raise _StoreDamaged(f"bundle v{version} is listed in the index but cannot be read: {e.strerror}") from None
        if len(data) != size or sha256_hex(data) != sha256:
            raise _StoreDamaged(f"bundle v{version} on disk does not match the digest in the index")
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
            raise _StoreDamaged(f"object {sha256} cannot be read: {e.strerror}") from None
        if sha256_hex(data) != sha256:
            raise _StoreDamaged(f"object {sha256} on disk does not match its name")
        return data


class _StoreDamaged(Exception):
    pass


# ---------------------------------------------------------------------------
# Handlers


def _error(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps({"error": error, "detail": detail}).encode()
    return Response(body, status_code=status, media_type=_JSON, headers=dict(headers or {}))


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n"
    return Response(body, status_code=status, media_type=_JSON, headers=dict(headers or {}))


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 §13.1.2): `W/` is ignored, `*` matches."""
    if not header:
        return False
    bare = etag.removeprefix("W/")
    for candidate in header.split(","):
        c = candidate.strip()
        if c == "*" or c.removeprefix("W/") == bare:
            return True
    return False


def _parse_wait(text: str | None) -> float | None:
    if text is None:
        return None
    if not _WAIT.match(text) or not (0 < float(text) <= MAX_WAIT_SECONDS):
        raise _BadRequest("invalid wait", f"wait must be a number of seconds, more than 0 and at most "
                                          f"{MAX_WAIT_SECONDS} (got {text[:40]!r})")
    return float(text)


class _BadRequest(Exception):
    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error, self.detail = error, detail


class _Api:
    """The endpoints, bound to one publication, status source and metrics registry."""

    def __init__(self, publication: Publication, metrics: Metrics,
                 status: Callable[[], Mapping[str, Any]] | None, state: statedir.StateDir,
                 fleet: Any = None) -> None:
        self.pub, self.metrics, self.status_source = publication, metrics, status
        self.state = state
        self._fleet = fleet

    def fleet(self) -> Any:
        """The agents' reports (reconciler.fleet.Fleet), in the state directory's fleet database."""
        if self._fleet is None:
            from .fleet import Fleet

            self._fleet = Fleet.open(self.state)
        return self._fleet

    async def index(self, request: Request) -> Response:
        """The signed index, exactly as stored.

        A client that already has it sends its ETag in If-None-Match and gets 304;
        with `?wait=SECONDS` as well, the answer is held until a newer index is
        published (200) or the wait elapses (304).
        """
        try:
            wait = _parse_wait(request.query_params.get("wait"))
        except _BadRequest as e:
            return _error(400, e.error, e.detail)
        inm = request.headers.get("if-none-match")
        snap = self.pub.current
        if wait is not None and (snap is None or _etag_matches(inm, snap.etag)):
            snap = await _unless_disconnected(
                request, self.pub.wait_change(snap.etag if snap is not None else None, wait), snap)
        if snap is None:
            return _error(404, "no index", "nothing has been published yet")
        headers = {"ETag": snap.etag, "Cache-Control": _INDEX_CACHE}
        if _etag_matches(inm, snap.etag):
            return Response(status_code=304, headers=headers)
        return Response(snap.data, media_type=_JSON, headers=headers)

    async def bundle(self, request: Request) -> Response:
        """One bundle by version; immutable. 404 if the current index does not list it."""
        raw: str = request.path_params["version"]
        if not _VERSION.match(raw):
            return _error(400, "invalid version",
                          f"a bundle version is a positive integer such as 12 (got {raw[:40]!r})")
        version = int(raw)
        if version < 1:
            return _error(400, "invalid version", "bundle versions start at 1")
        try:
            found = await self.pub.bundle(version)
        except _StoreDamaged as e:
            log.error("%s", e)
            return _error(500, "store damaged", str(e))
        if found is None:
            cur = self.pub.current
            listed = "nothing is published yet" if cur is None else (
                f"the index lists v{cur.index.bundles[0].version}..v{cur.index.version}")
            return _error(404, "unknown version", f"bundle v{version} is not published ({listed})")
        data, etag = found
        headers = {"ETag": etag, "Cache-Control": _BUNDLE_CACHE}
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=_JSON, headers=headers)

    async def object(self, request: Request) -> Response:
        """One CO-RE object by the sha256 of its bytes; immutable."""
        raw: str = request.path_params["sha256"]
        if not _SHA256.match(raw):
            return _error(400, "invalid digest", f"an object is named by a sha256 hex digest (got {raw[:80]!r})")
        try:
            data = await self.pub.object(raw)
        except _StoreDamaged as e:
            log.error("%s", e)
            return _error(500, "store damaged", str(e))
        if data is None:
            return _error(404, "unknown object", f"no object {raw} in the store")
        etag = f'"{raw}"'
        headers = {"ETag": etag, "Cache-Control": _BUNDLE_CACHE}
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="application/octet-stream", headers=headers)

    async def status(self, request: Request) -> Response:
        """Reconcile status: last accepted and rejected commits with findings, versions, index."""
        doc: dict[str, Any] = {}
        if self.status_source is not None:
            doc.update(await run_in_threadpool(self.status_source))
        snap = self.pub.current
        doc["served"] = None if snap is None else {
            "version": snap.index.version,
            "serial": snap.index.serial,
            "issued": _iso(snap.index.issued),
            "expires": _iso(snap.index.expires),
            "etag": snap.etag,
        }
        return _json(doc, headers={"Cache-Control": "no-store"})

    async def heartbeat(self, request: Request) -> Response:
        """An agent's heartbeat (reconciler/fleet.py): stored in the fleet table, 204; 4xx on bad input."""
        from .fleet import MAX_HEARTBEAT_BYTES, parse_heartbeat

        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_HEARTBEAT_BYTES:
                return _error(413, "heartbeat too large", f"at most {MAX_HEARTBEAT_BYTES} bytes")
        try:
            hb = parse_heartbeat(request.path_params["id"], json.loads(body))
        except ValueError as e:  # includes malformed JSON
            return _error(400, "invalid heartbeat", str(e)[:500])
        await run_in_threadpool(self.fleet().record_heartbeat, hb)
        return Response(status_code=204)

    async def agents(self, request: Request) -> Response:
        """The fleet view: every agent's last heartbeat (reconciler/fleet.py)."""
        rows = await run_in_threadpool(self.fleet().agents)
        return _json({"agents": [a.to_json() for a in rows]}, headers={"Cache-Control": "no-store"})

    async def observations(self, request: Request) -> Response:
        """Stored observations summed per sensor, policy, binary, workload, parent and action."""
        q = request.query_params
        try:
            since, until = _parse_time_param(q.get("since"), "since"), _parse_time_param(q.get("until"), "until")
            limit = int(q.get("limit", "10000")) if _VERSION.match(q.get("limit", "1")) else -1
            if not 1 <= limit <= 100_000:
                raise _BadRequest("invalid limit", "limit must be an integer from 1 to 100000")
        except _BadRequest as e:
            return _error(400, e.error, e.detail)
        policies = tuple(q.getlist("policy")) or None
        rows = await run_in_threadpool(lambda: self.fleet().query(
            policies=policies, sensor=q.get("sensor"), binary=q.get("binary"), workload=q.get("workload"),
            since=since, until=until, limit=limit))
        return _json({"observations": [r.to_json() for r in rows]}, headers={"Cache-Control": "no-store"})

    async def prometheus(self, request: Request) -> Response:
        """Prometheus text exposition."""
        return Response(self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: Request) -> Response:
        """This API as OpenAPI 3.1."""
        return _json(OPENAPI)


async def _unless_disconnected(request: Request, waiting: Coroutine[Any, Any, Snapshot | None],
                               current: Snapshot | None) -> Snapshot | None:
    """Await `waiting`, but give up when the client goes away: an agent whose HTTP timeout is
    shorter than its `wait` reconnects, and the abandoned long-poll must not linger for minutes."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    waiter = asyncio.ensure_future(waiting)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((waiter, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not waiter.done():
            waiter.cancel()
    return waiter.result() if waiter.done() and not waiter.cancelled() else current


def _parse_time_param(text: str | None, name: str) -> _dt.datetime | None:
    if text is None:
        return None
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _BadRequest(f"invalid {name}", f"{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z "
                                             f"(got {text[:40]!r})") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=_dt.UTC)


def _iso(t: _dt.datetime) -> str:
    return t.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# Middleware: request limits and metrics (plain ASGI: the index path is hot)


class _Guard:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        headers = scope["headers"]
        try:
            if len(headers) > MAX_HEADER_COUNT or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
                await _error(431, "request headers too large",
                             f"at most {MAX_HEADER_COUNT} headers and {MAX_HEADER_BYTES} bytes")(
                    scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            route = scope.get("route")
            method = scope["method"] if scope["method"] in _METHODS else "other"  # bounded label values
            self.metrics.count_request(getattr(route, "path", "other"), method, status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(404, "not found", f"no such endpoint: {request.url.path[:200]}")
    if exc.status_code == 405:
        return _error(405, "method not allowed", f"{request.method} is not allowed on {request.url.path[:200]}",
                      headers=exc.headers)
    return _error(exc.status_code, "http error", str(exc.detail), headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal error", "the server failed to answer; see its log")


# ---------------------------------------------------------------------------
# The application


def create_app(
    store: Path,
    *,
    metrics: Metrics | None = None,
    status: Callable[[], Mapping[str, Any]] | None = None,
    publication: Publication | None = None,
    fleet: Any = None,
    state: statedir.StateDir | None = None,
) -> Starlette:
    """The ASGI application serving the bundle store at `store`.

    `state` is the state directory whose fleet database takes the agents' heartbeats
    (default: the one `store` sits in, by the layout of reconciler/statedir.py).
    `status` supplies the reconciler's part of `/v1/status` (it runs in a worker
    thread). `app.state.publication` is the in-memory index; `app.state.metrics`
    the registry.
    """
    metrics = metrics or Metrics()
    pub = publication or Publication(store)
    api = _Api(pub, metrics, status, state or statedir.StateDir.holding(store), fleet)

    def update_gauges(snap: Snapshot) -> None:
        metrics.set_index(version=snap.index.version, serial=snap.index.serial, expires=snap.index.expires)

    pub.on_change(update_gauges)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pub.bind(asyncio.get_running_loop())
        await run_in_threadpool(pub.refresh)
        watcher = asyncio.create_task(_watch_store(pub))
        try:
            yield
        finally:
            watcher.cancel()
            pub.close()

    routes = [
        Route("/v1/index", api.index, methods=["GET"], name="index"),
        Route("/v1/bundles/{version}", api.bundle, methods=["GET"], name="bundle"),
        Route("/v1/objects/{sha256}", api.object, methods=["GET"], name="object"),
        Route("/v1/status", api.status, methods=["GET"], name="status"),
        Route("/v1/agents/{id}/heartbeat", api.heartbeat, methods=["POST"], name="heartbeat"),
        Route("/v1/agents", api.agents, methods=["GET"], name="agents"),
        Route("/v1/observations", api.observations, methods=["GET"], name="observations"),
        Route("/metrics", api.prometheus, methods=["GET"], name="metrics"),
        Route("/openapi.json", api.openapi, methods=["GET"], name="openapi"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.add_middleware(_Guard, metrics=metrics)
    app.state.publication = pub
    app.state.metrics = metrics
    return app


async def _watch_store(pub: Publication) -> None:
    """Pick up an index published by another process (a cheap stat, twice a second)."""
    while True:
        await asyncio.sleep(_STORE_POLL_SECONDS)
        if pub._stat_changed():
            await run_in_threadpool(pub.refresh)


# ---------------------------------------------------------------------------
# Running it


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering requests it cannot parse with the API's JSON error shape."""

    def send_400_response(self, msg: str) -> None:
        import h11

        body = json.dumps({"error": "bad request",
                           "detail": "malformed HTTP request or request head too large"}).encode()
        headers = [(b"content-type", _JSON.encode()), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        for event in (h11.Response(status_code=400, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))  # type: ignore[arg-type]
        self.transport.close()


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` → (host, port). PalisadeError with the reason otherwise."""
    m = re.match(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})$", text.strip())
    if not m or int(m["port"]) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT such as 127.0.0.1:8740 or [::1]:8740")
    return m["v6"] or m["host"], int(m["port"])


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PalisadeError(f"cannot resolve listen address {host}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise PalisadeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _config(app: ASGIApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=_Protocol,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        h11_max_incomplete_event_size=_H11_MAX_HEAD,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
        backlog=2048,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, with signal handling that also releases long-pollers and never re-raises."""

    def __init__(self, config: uvicorn.Config, publication: Publication | None,
                 on_exit: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._publication = publication
        self._on_exit = on_exit

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        """Begin a graceful shutdown. Call on the server's event loop."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
        if self._publication is not None:
            self._publication.close()
        if self._on_exit is not None:
            self._on_exit()


def run(app: Starlette, host: str, port: int, *, on_listening: Callable[[str], None] | None = None,
        on_exit: Callable[[], None] | None = None) -> None:
    """Serve `app` until SIGINT/SIGTERM (in the main thread). Blocks."""
    sock = _bind(host, port)
    server = _Server(_config(app), app.state.publication, on_exit)
    if on_listening is not None:
        on_listening(_url(sock))
    asyncio.run(server.serve(sockets=[sock]))


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class BackgroundServer:
    """A server in a thread of this process, for tests and benchmarks::

        with BackgroundServer(create_app(store)) as srv:
            httpx.get(srv.url + "/v1/index")
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._sock = _bind(host, port)
        self.url = _url(self._sock)
        self._server = _Server(_config(app), app.state.publication)
        self._thread = threading.Thread(target=self._run, name="palisade-http", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def publication(self) -> Publication:
        pub: Publication = self.app.state.publication
        return pub

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve(sockets=[self._sock])

    def start(self) -> BackgroundServer:
        self._thread.start()
        for _ in range(1000):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self._server.started:
            raise RuntimeError("the HTTP server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._server.stop)
        self._thread.join(10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# OpenAPI description (hand-written: the API is small and its contract matters more than its code)

_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ERROR}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Palisade reconciler API",
        "version": "1",
        "description": "Signed policy bundles for node agents, reconcile status and metrics. "
                       "Bundles and the index are verified by agents with a pinned Ed25519 public key; "
                       "this API is only a transport.",
    },
    "paths": {
        "/v1/index": {"get": {
            "summary": "The signed bundle index",
            "description": "The index bytes exactly as stored. Send the ETag back in If-None-Match to get 304 "
                           "when nothing changed; add `wait` to long-poll until a newer index is published.",
            "parameters": [
                {"name": "wait", "in": "query", "required": False,
                 "description": f"Hold the request up to this many seconds (0 < wait <= {MAX_WAIT_SECONDS}) "
                                "while the If-None-Match ETag is current.",
                 "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT_SECONDS}},
                {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {"description": "The index (schemas/index.schema.json)",
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": {_JSON: {"schema": {"type": "object"}}}},
                "304": {"description": "The client's copy is current"},
                "400": _err("Invalid wait"),
                "404": _err("Nothing has been published yet"),
            },
        }},
        "/v1/bundles/{version}": {"get": {
            "summary": "One bundle, immutable",
            "parameters": [{"name": "version", "in": "path", "required": True,
                            "schema": {"type": "integer", "minimum": 1}}],
            "responses": {
                "200": {"description": "The bundle (schemas/bundle.schema.json); cacheable forever",
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": {_JSON: {"schema": {"type": "object"}}}},
                "304": {"description": "The client's copy is current"},
                "400": _err("The version is not a positive integer"),
                "404": _err("The current index does not list this version"),
            },
        }},
        "/v1/objects/{sha256}": {"get": {
            "summary": "One CO-RE object, by the sha256 of its bytes; immutable",
            "description": "The objects a bundle lists (its `objects` member: source digest, sha256, size); the "
                           "agent checks the bytes against the signed digest before loading them.",
            "parameters": [{"name": "sha256", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
            "responses": {
                "200": {"description": "The object (ELF); cacheable forever",
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "304": {"description": "The client's copy is current"},
                "400": _err("Not a sha256 hex digest"),
                "404": _err("The store holds no such object"),
            },
        }},
        "/v1/agents/{id}/heartbeat": {"post": {
            "summary": "An agent's heartbeat",
            "description": "Sensor id and labels, the bundle version it enforces and its stage, per-policy status, "
                           "drift, counters and the interval's observations (schemas/heartbeat.schema.json). "
                           "Stored in the fleet table of the state directory (reconciler/fleet.py).",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {_JSON: {"schema": {"type": "object"}}}},
            "responses": {
                "204": {"description": "Stored"},
                "400": _err("Malformed JSON, a sensor id that is not valid or does not match the body, "
                            "or a member of the wrong shape"),
                "413": _err("Larger than 1 MiB"),
            },
        }},
        "/v1/status": {"get": {
            "summary": "Reconcile status",
            "description": "Last accepted and last rejected commit (with findings), published versions, "
                           "the served index's serial and expiry, the last reconcile time and errors "
                           "such as a refused history rewrite.",
            "responses": {"200": {"description": "Status", "content": {_JSON: {"schema": {"type": "object"}}}}},
        }},
        "/v1/agents": {"get": {
            "summary": "The fleet: every agent's last heartbeat",
            "responses": {"200": {"description": "`{agents: [...]}`",
                                  "content": {_JSON: {"schema": {"type": "object"}}}}},
        }},
        "/v1/observations": {"get": {
            "summary": "Stored observations, summed per sensor, policy, binary, workload, parent and action",
            "parameters": [
                *({"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                  for n in ("policy", "sensor", "binary", "workload")),
                *({"name": n, "in": "query", "required": False, "description": "RFC 3339 time",
                   "schema": {"type": "string", "format": "date-time"}} for n in ("since", "until")),
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100000}},
            ],
            "responses": {"200": {"description": "`{observations: [...]}`",
                                  "content": {_JSON: {"schema": {"type": "object"}}}},
                          "400": _err("A malformed time or limit")},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "summary": "This description",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {"type": "object"}}}}},
        }},
    },
    "components": {"schemas": {"Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    }}},
}

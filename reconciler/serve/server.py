"""The HTTP API of `palisade serve` (Starlette on uvicorn).

    GET /v1/index                 the signed index, byte for byte as stored; strong ETag,
                                  If-None-Match → 304, `?wait=SECONDS` long-poll
    GET /v1/bundles/{version}     a bundle the index lists; immutable, cacheable
    GET /v1/objects/{sha256}      a CO-RE object bundles list, by the sha256 of its bytes; immutable
    GET /v1/status                reconcile status (JSON)
    GET /v1/agents                the fleet: every agent's last heartbeat
    GET /v1/observations          stored observations, summed; filters policy (repeatable),
                                  sensor, binary, workload, since, until (RFC 3339), limit
    POST /v1/hooks/{name}         a push webhook (GitHub, GitLab, generic HMAC; hooks.py): a verified push
                                  on the tracked branch wakes the reconcile loop at once (202)
    GET /metrics                  Prometheus text format
    GET /openapi.json             this API, described

The index is served from memory (`Publication`, publication.py): a 304 never touches the disk, and
long-pollers return as soon as a new index is swapped in.

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
import contextlib
import datetime as _dt
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.metrics import CONTENT_TYPE, Metrics
from reconciler.serve.ingest import HeartbeatIngest
from reconciler.serve.openapi import OPENAPI
from reconciler.serve.publication import (
    MAX_WAIT_SECONDS,
    Publication,
    Snapshot,
    StoreDamaged,
)
from reconciler.state import statedir

if TYPE_CHECKING:
    from reconciler.serve.hooks import Webhooks

__all__ = ["INDEX_FILE", "create_app"]

log = logging.getLogger("palisade.server")

#: The store layout (shared with reconciler.state.store): `<store>/index.json`, `<store>/bundles/v<N>.json`.
INDEX_FILE, BUNDLES_DIR, OBJECTS_DIR = statedir.INDEX_FILE, statedir.BUNDLES_DIR, statedir.OBJECTS_DIR
#: Request heads larger than this get a 431 from the application; the protocol layer refuses
#: anything beyond 64 KiB (listen.py) before it is even handed over.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 100

_VERSION = re.compile(r"^[0-9]{1,12}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WAIT = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3})?$")
_JSON = "application/json"
_INDEX_CACHE = "no-cache"
_BUNDLE_CACHE = "public, max-age=31536000, immutable"
_STORE_POLL_SECONDS = 0.5
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})










# ---------------------------------------------------------------------------
# Handlers


def _error(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps({"error": error, "detail": detail}).encode()
    return Response(body, status_code=status, media_type=_JSON, headers=dict(headers or {}))


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n"
    return Response(body, status_code=status, media_type=_JSON, headers=dict(headers or {}))


def _tagged(request: Request, data: bytes, etag: str, cache: str, media_type: str = _JSON) -> Response:
    """Stored bytes under their ETag: 304 when the client's If-None-Match already names it."""
    headers = {"ETag": etag, "Cache-Control": cache}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


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
                 fleet: Any = None, hooks: Webhooks | None = None, on_push: Callable[[], None] | None = None,
                 leading: Callable[[], bool] | None = None) -> None:
        self.pub, self.metrics, self.status_source = publication, metrics, status
        self.state = state
        self._fleet = fleet
        self.hooks, self.on_push, self.leading = hooks, on_push, leading
        self.ingest = HeartbeatIngest(lambda beats: self.fleet().record_heartbeats(beats))

    def fleet(self) -> Any:
        """The agents' reports (reconciler.state.fleet.Fleet), in the state directory's fleet database."""
        if self._fleet is None:
            from reconciler.state.fleet import Fleet

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
        return _tagged(request, snap.data, snap.etag, _INDEX_CACHE)

    async def bundle(self, request: Request) -> Response:
        """One bundle by version; immutable. 404 if the current index does not list it."""
        raw: str = request.path_params["version"]
        if not _VERSION.match(raw):
            return _error(400, "invalid version",
                          f"a bundle version is a positive integer such as 12 (got {raw[:40]!r})")
        version = int(raw)
        if version < 1:
            return _error(400, "invalid version", "bundle versions start at 1")
        found = await self.pub.bundle(version)  # StoreDamaged: 500 (_store_damaged)
        if found is None:
            cur = self.pub.current
            listed = "nothing is published yet" if cur is None else (
                f"the index lists v{cur.index.bundles[0].version}..v{cur.index.version}")
            return _error(404, "unknown version", f"bundle v{version} is not published ({listed})")
        data, etag = found
        return _tagged(request, data, etag, _BUNDLE_CACHE)

    async def object(self, request: Request) -> Response:
        """One CO-RE object by the sha256 of its bytes; immutable."""
        raw: str = request.path_params["sha256"]
        if not _SHA256.match(raw):
            return _error(400, "invalid digest", f"an object is named by a sha256 hex digest (got {raw[:80]!r})")
        data = await self.pub.object(raw)  # StoreDamaged: 500 (_store_damaged)
        if data is None:
            return _error(404, "unknown object", f"no object {raw} in the store")
        return _tagged(request, data, f'"{raw}"', _BUNDLE_CACHE, "application/octet-stream")

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
        """An agent's heartbeat (wire.heartbeat, parsed once here): stored in the fleet table, 204; 413 when
        too large, 400 for any other refusal."""
        from wire.errors import HeartbeatError, HeartbeatTooLarge
        from wire.heartbeat import MAX_HEARTBEAT_BYTES, loads

        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_HEARTBEAT_BYTES:
                return _error(413, "heartbeat too large", f"at most {MAX_HEARTBEAT_BYTES} bytes")
        try:
            hb = loads(bytes(body), request.path_params["id"])
        except HeartbeatTooLarge as e:
            return _error(413, "heartbeat too large", str(e)[:500])
        except HeartbeatError as e:
            return _error(400, "invalid heartbeat", str(e)[:500])
        await self.ingest.submit(hb)  # group commit with the heartbeats arriving meanwhile (ingest.py)
        return Response(status_code=204)

    async def hook(self, request: Request) -> Response:
        """A push webhook (reconciler/serve/hooks.py): 202 and a reconcile at once for a verified push on the
        tracked branch, 200 for a verified delivery that asks for nothing; every refusal counted and JSON."""
        from reconciler.serve.hooks import BodyTooLarge, HookRefused, Push, RateLimited, Standing, UnknownReceiver

        name: str = request.path_params["name"]
        try:
            if self.hooks is None:
                raise UnknownReceiver("", "this server has no webhook receivers (palisade serve --hooks FILE)")
            receiver = self.hooks.receiver(name)
            if self.leading is not None and not self.leading():  # before the delivery id is remembered
                raise Standing(receiver.name, "this server stands by and cannot make the leader reconcile; "
                                              "send webhooks to the leader (its /v1/status says role: leader)")
            cap = self.hooks.max_body
            too_large = BodyTooLarge(receiver.name, f"at most {cap} bytes")
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise too_large
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > cap:
                    raise too_large
            outcome = self.hooks.receive(receiver, request.headers, bytes(body))
        except HookRefused as e:
            self.metrics.count_hook_refusal(e.receiver, e.reason.value)
            retry = {"Retry-After": str(e.retry_after)} if isinstance(e, RateLimited) else None
            return _error(e.status, e.error, e.detail, headers=retry)
        if isinstance(outcome, Push):
            self.metrics.count_hook(outcome.receiver, "push")
            if self.on_push is not None:
                self.on_push()
            return _json({"receiver": outcome.receiver, "delivery": outcome.delivery, "ref": outcome.ref,
                          "after": outcome.after, "detail": "fetching and reconciling now"}, status=202)
        self.metrics.count_hook(outcome.receiver, "ignored")
        return _json({"receiver": outcome.receiver, "delivery": outcome.delivery, "ignored": str(outcome.reason),
                      "detail": outcome.detail})

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

    async def healthz(self, request: Request) -> Response:
        """Liveness and readiness for probes: 200 while the server answers (no token, and nothing else said)."""
        return _json({"status": "ok"}, headers={"Cache-Control": "no-store"})

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


async def _store_damaged(request: Request, exc: Exception) -> Response:
    log.error("%s", exc)
    return _error(500, "store damaged", str(exc))


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
    hooks: Webhooks | None = None,
    on_push: Callable[[], None] | None = None,
    leading: Callable[[], bool] | None = None,
    source: str | None = None,
    branch: str | None = None,
    token: str | None = None,
) -> Starlette:
    """The ASGI application serving the bundle store at `store`.

    `state` is the state directory whose fleet database takes the agents' heartbeats
    (default: the one `store` sits in, by the layout of reconciler/statedir.py).
    `status` supplies the reconciler's part of `/v1/status` (it runs in a worker
    thread). `app.state.publication` is the in-memory index; `app.state.metrics`
    the registry. `hooks` are the webhook receivers; `on_push` is called for each verified push on the tracked
    branch (it wakes the reconcile loop); `leading` says whether this server leads (a standby answers 503).
    The console (reconciler/console) is mounted at /ui (`/` redirects
    there), showing `source` and `branch`; with `token`, everything but the agents' endpoints and the
    webhooks needs it (reconciler/serve/auth.py).
    """
    metrics = metrics or Metrics()
    pub = publication or Publication(store)
    api = _Api(pub, metrics, status, state or statedir.StateDir.holding(store), fleet, hooks, on_push, leading)
    if hooks is not None:
        _export_hook_zeros(metrics, hooks)

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
        Route("/v1/hooks/{name}", api.hook, methods=["POST"], name="hook"),
        Route("/v1/observations", api.observations, methods=["GET"], name="observations"),
        Route("/healthz", api.healthz, methods=["GET"], name="healthz"),
        Route("/metrics", api.prometheus, methods=["GET"], name="metrics"),
        Route("/openapi.json", api.openapi, methods=["GET"], name="openapi"),
        *_console_routes(api, pub, status, source, branch),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, StoreDamaged: _store_damaged, Exception: _internal_error},
    )
    if token is not None:
        from reconciler.serve.auth import TokenGuard

        app.add_middleware(TokenGuard, token=token)  # inside _Guard: refusals are counted too
    app.add_middleware(_Guard, metrics=metrics)
    app.state.publication = pub
    app.state.metrics = metrics
    return app


def _console_routes(api: _Api, pub: Publication, status: Callable[[], Mapping[str, Any]] | None,
                    source: str | None, branch: str | None) -> list[BaseRoute]:
    """The console at /ui, and `/` sending a browser there."""
    from starlette.responses import RedirectResponse
    from starlette.routing import Mount

    from reconciler.console.app import MOUNT, create_console
    from reconciler.console.sources import ConsoleSources

    sources = ConsoleSources(
        state=api.state.view, index=lambda: None if (s := pub.current) is None else s.index,
        status=status or (lambda: {}), source=source, branch=branch, fleet_db=api.fleet,
        stopping=lambda: pub._closing)  # the server's shutdown also ends the console's live streams

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{MOUNT}/", status_code=302)

    return [Route("/", home, methods=["GET"], name="home"), Route(MOUNT, home, methods=["GET"], name="console-home"),
            Mount(MOUNT, create_console(sources), name="console")]


def _export_hook_zeros(metrics: Metrics, hooks: Webhooks) -> None:
    """Every receiver's series from the start, so rate() and alerts on refusals work from the first scrape."""
    from reconciler.serve.hooks import Refusal

    for r in hooks.config.receivers:
        for result in ("push", "ignored"):
            metrics.webhook_deliveries.labels(r.name, result)
        for reason in Refusal:
            if reason is not Refusal.UNKNOWN_RECEIVER:
                metrics.webhook_refusals.labels(r.name, reason.value)
    metrics.webhook_refusals.labels("", Refusal.UNKNOWN_RECEIVER.value)


async def _watch_store(pub: Publication) -> None:
    """Pick up an index published by another process (a cheap stat, twice a second)."""
    while True:
        await asyncio.sleep(_STORE_POLL_SECONDS)
        if pub._stat_changed():
            await run_in_threadpool(pub.refresh)

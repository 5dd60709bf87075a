"""The console: read-only HTML pages of what the reconciler knows, mounted by `palisade serve` at `/ui`.

Pages are listed in `PAGES`, one `Page(path, name, handler)` each:

    path     the full URL path (under /ui), e.g. "/ui/units"
    name     the navigation entry it belongs to (layout.NAV): "Fleet", "Units", "Rollouts", "Ledger", "Events"
    handler  `def handler(request: Request, sources: ConsoleSources) -> Response` — a plain (sync) function:
             it runs in a worker thread, so it may read SQLite, git and files directly. It returns
             `html_response(layout.page(title, name, body))` (or any Response: 404 pages, redirects).

Every page answers `?fragment=1` with only its `<main id="content">` element, cut from the page's document
here (layout.fragment_of): console.js fetches that on a live event and swaps it in, so a page is live with
nothing of its own to do. A page reads its filters from `request.query_params` (links and GET forms only:
console.js turns a `<form class="filter">` into a navigation, since the CSP forbids form submission).

Every answer carries the security headers (`SECURITY_HEADERS`: a strict Content-Security-Policy, nosniff,
no referrer, no framing, no caching). The console is read-only: only GET and HEAD are routed; anything
else is 405. /ui/live is the event stream (live.py); /ui/static/ the stylesheet and script (package data).
The token check for a server listening beyond loopback sits in front of all this (reconciler/serve/auth.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.console.events import events_page
from reconciler.console.fleet import fleet_page
from reconciler.console.html import el
from reconciler.console.layout import fragment_of, html_response, page
from reconciler.console.ledger import audit_handler, ledger_handler
from reconciler.console.live import FleetWatch, live
from reconciler.console.rollouts import rollouts_handler
from reconciler.console.sources import ConsoleSources
from reconciler.console.units import unit_handler, units_handler

__all__ = ["MOUNT", "PAGES", "SECURITY_HEADERS", "Page", "create_console", "html_response"]

Handler = Callable[[Request, ConsoleSources], Response]


@dataclass(frozen=True)
class Page:
    path: str  # full path, "/ui/..."
    name: str  # its navigation entry (layout.NAV)
    handler: Handler


#: Every page of the console. Add one by appending an entry (and importing its handler above).
PAGES: tuple[Page, ...] = (
    Page("/ui/", "Fleet", fleet_page),
    Page("/ui/events", "Events", events_page),
    Page("/ui/units", "Units", units_handler),
    Page("/ui/units/{id}", "Units", unit_handler),
    Page("/ui/rollouts", "Rollouts", rollouts_handler),
    Page("/ui/ledger", "Ledger", ledger_handler),
    Page("/ui/audit/{unit}", "Ledger", audit_handler),
)

MOUNT = "/ui"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}


class _Headers:
    """Adds SECURITY_HEADERS to every answer of the console, errors included (plain ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._raw = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in self._raw if h[0] not in have)]
            await send(message)

        await self.app(scope, receive, with_headers)


def _endpoint(p: Page, sources: ConsoleSources) -> Callable[[Request], object]:
    async def endpoint(request: Request) -> Response:
        resp = await run_in_threadpool(p.handler, request, sources)
        if (request.query_params.get("fragment") == "1" and resp.status_code == 200
                and resp.headers.get("content-type", "").startswith("text/html") and hasattr(resp, "body")):
            return html_response(fragment_of(bytes(resp.body)))
        return resp

    endpoint.__name__ = f"console_{p.name.lower()}_{p.path.strip('/').replace('/', '_')}"
    return endpoint


def _static_files() -> dict[str, bytes]:
    base = resources.files("reconciler.console") / "static"
    return {name: (base / name).read_bytes() for name in _STATIC}


def _error_page(status: int, title: str, text: str, headers: dict[str, str] | None = None) -> Response:
    body = el("p", {"class": "error"}, text)
    resp = html_response(page(title, "", body), status)
    resp.headers.update(headers or {})
    return resp


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _error_page(405, "Not allowed", f"The console is read-only: {request.method} is not allowed. "
                                                "Policy changes go through the git repository.",
                           {"Allow": "GET, HEAD"})
    if exc.status_code == 404:
        return _error_page(404, "Not found", f"No console page at {request.url.path[:200]}.")
    return _error_page(exc.status_code, "Error", str(exc.detail))


def create_console(sources: ConsoleSources) -> Starlette:
    """The console as an application to mount at `MOUNT` (its routes are relative to it)."""
    files = _static_files()
    watch = FleetWatch(sources)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return _error_page(404, "Not found", f"No static file {name[:80]}.")
        return Response(files[name], media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    async def live_stream(request: Request) -> Response:
        return live(sources, watch)

    routes = [Route(p.path.removeprefix(MOUNT) or "/", _endpoint(p, sources), methods=["GET"], name=p.name)
              for p in PAGES]
    routes += [
        Route("/live", live_stream, methods=["GET"], name="live"),
        Route("/static/{name}", static, methods=["GET"], name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.add_middleware(_Headers)
    app.state.sources = sources
    return app

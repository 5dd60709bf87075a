"""A real loopback HTTP server in front of a real reconciler API that can turn hostile.

By default it forwards every request upstream. Set `tamper` (or call one of the
ready-made behaviours) and it answers matching requests itself: tampered,
replayed, truncated, oversized, trickled a byte at a time, or `304 Not Modified`
forever. Every request is recorded with its arrival time, so a test can count
how often the agent asks.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

Handler = Callable[[BaseHTTPRequestHandler], bool]


def _path(req: BaseHTTPRequestHandler) -> str:
    return req.path.split("?")[0]


@dataclass
class Proxy:
    """Forwards to `upstream` unless `tamper` answers the request itself (returns True)."""

    upstream: str
    tamper: Handler | None = None
    requests: list[str] = field(default_factory=list)
    times: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, "GET /v1/index?...")
    url: str = ""
    flood_sent: int = 0
    closing: threading.Event = field(default_factory=threading.Event)  # set at teardown: tricklers stop

    def count(self, path: str, since: float, until: float | None = None) -> int:
        """Requests for `path` that arrived in [since, until)."""
        end = until if until is not None else float("inf")
        return sum(1 for t, r in self.times if since <= t < end and r.split()[1].split("?")[0] == path)

    # ready-made hostile behaviours -------------------------------------------------

    def serve(self, path: str, body: bytes, etag: str = '"hostile"') -> None:
        self.serve_many({path: body}, etag)

    def serve_many(self, bodies: dict[str, bytes], etag: str = '"hostile-many"') -> None:
        def h(req: BaseHTTPRequestHandler) -> bool:
            body = bodies.get(_path(req))
            if body is None:
                return False
            req.send_response(200)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(body)))
            req.send_header("ETag", etag)
            req.end_headers()
            req.wfile.write(body)
            return True
        self.tamper = h

    def truncate(self, path: str, body: bytes) -> None:
        """Announce the whole body, send half of it, close the connection."""
        def h(req: BaseHTTPRequestHandler) -> bool:
            if _path(req) != path:
                return False
            req.send_response(200)
            req.send_header("Content-Length", str(len(body)))
            req.send_header("Connection", "close")
            req.end_headers()
            req.wfile.write(body[: len(body) // 2])
            req.wfile.flush()
            req.close_connection = True
            return True
        self.tamper = h

    def flood(self, path: str, size: int, *, announce: bool) -> None:
        """`size` bytes of JSON-looking garbage, with or without a Content-Length saying so."""
        def h(req: BaseHTTPRequestHandler) -> bool:
            if _path(req) != path:
                return False
            req.send_response(200)
            if announce:
                req.send_header("Content-Length", str(size))
            req.send_header("Connection", "close")
            req.end_headers()
            chunk = b"[" + b"0," * 32767 + b"0"
            sent = 0
            try:
                while sent < size:
                    part = chunk[: size - sent]
                    req.wfile.write(part)
                    sent += len(part)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent hung up once it had seen enough: that is the point
            self.flood_sent = sent
            req.close_connection = True
            return True
        self.flood_sent = 0
        self.tamper = h

    def trickle(self, prefix: str, *, every: float, headers: bool = False) -> None:
        """Slow-loris: requests whose path starts with `prefix` get the genuine answer one byte every `every`
        seconds — the body only (`headers=False`, the status line and headers arrive at once) or the whole
        response from its first byte (`headers=True`)."""
        def h(req: BaseHTTPRequestHandler) -> bool:
            if not _path(req).startswith(prefix):
                return False
            r = httpx.get(self.upstream + req.path, timeout=30)
            head = f"HTTP/1.1 {r.status_code} OK\r\nContent-Type: application/json\r\n" \
                   f"Content-Length: {len(r.content)}\r\nETag: {r.headers.get('etag', '')}\r\n\r\n".encode()
            if not headers:
                req.wfile.write(head)
                req.wfile.flush()
            slow = head + r.content if headers else r.content
            try:
                for i in range(len(slow)):
                    if self.closing.wait(every):
                        break
                    req.wfile.write(slow[i:i + 1])
                    req.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent gave up on us: the deadline worked
            req.close_connection = True
            return True
        self.tamper = h

    def not_modified_forever(self) -> None:
        """`304 Not Modified` at once to every index request, with or without If-None-Match."""
        def h(req: BaseHTTPRequestHandler) -> bool:
            if _path(req) != "/v1/index":
                return False
            req.send_response(304)
            req.send_header("ETag", '"frozen"')
            req.end_headers()
            return True
        self.tamper = h


def _handler_class(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _forward(self, method: str) -> None:
            proxy.requests.append(f"{method} {self.path}")
            proxy.times.append((time.monotonic(), f"{method} {self.path}"))
            if proxy.tamper is not None and proxy.tamper(self):
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("if-none-match", "content-type")}
            try:
                r = httpx.request(method, proxy.upstream + self.path, headers=headers, content=body, timeout=400)
            except httpx.HTTPError:
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(r.status_code)
            for k in ("content-type", "etag", "cache-control"):
                if k in r.headers:
                    self.send_header(k, r.headers[k])
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        def do_GET(self) -> None:
            self._forward("GET")

        def do_POST(self) -> None:
            self._forward("POST")

    return H


@contextmanager
def running(upstream: str, port: int = 0) -> Iterator[Proxy]:
    """A Proxy listening on 127.0.0.1 (`port`, 0: any free one) for the duration of the block."""
    p = Proxy(upstream)
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_class(p))
    httpd.daemon_threads = True
    p.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield p
    finally:
        p.closing.set()
        httpd.shutdown()
        httpd.server_close()

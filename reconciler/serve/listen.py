"""Running the API on uvicorn: binding the socket, a protocol that answers unparseable requests with the API's
JSON error shape, and a background server for tests and `palisade serve`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from reconciler.errors import PalisadeError, UsageError
from reconciler.serve.publication import Publication

log = logging.getLogger("palisade.server")


MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 100
_MAX_HEAD = 64 * 1024  # bytes of request line and headers; the app answers 431 past MAX_HEADER_BYTES


_JSON = "application/json"


class _HeadTooLarge(Exception):
    """A request head past `_MAX_HEAD` bytes (raised in a parser callback, so the parser fails the request)."""


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools (llhttp) protocol — it parses a request for a third of h11's CPU, which is what a
    fleet's long-polls and heartbeats cost the server — with a cap on the request head, which llhttp
    does not have, and the API's JSON error shape for requests it cannot parse."""

    _head = 0

    def on_message_begin(self) -> None:
        self._head = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _grow(self, n: int) -> None:
        self._head += n
        if self._head > _MAX_HEAD:
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": "bad request",
                           "detail": "malformed HTTP request or request head too large"}).encode()
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: " + _JSON.encode()
                             + b"\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode()
                             + b"\r\n\r\n" + body)
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

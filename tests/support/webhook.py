"""A real webhook receiver on a loopback port, for notification tests: down, slow, failing or up.

    rx = Receiver()            # a port is reserved; nothing listens yet (down: connection refused)
    rx.slow(3.0)               # listening, every request sleeps 3 s before answering 200 (past a timeout)
    rx.up()                    # listening, every request is recorded and answered 200
    rx.wait_count(5, 10)
    rx.down()                  # the listener closed again

`received` holds what was answered 2xx while up, in arrival order; `late` what came while slow (the
sender gave up before the answer); `refused` what was answered `rx.failing(status)`.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers.get("x-palisade-event-id", "")


class Receiver:
    def __init__(self) -> None:
        with socket.socket() as s:  # a free port; the OS does not hand it out again at once
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[Request] = []
        self.late: list[Request] = []
        self.refused: list[Request] = []
        self._mode = "up"
        self._sleep = 0.0
        self._status = 500
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- modes --------------------------------------------------------------------

    def up(self) -> None:
        self._set("up")

    def slow(self, seconds: float) -> None:
        self._sleep = seconds
        self._set("slow")

    def failing(self, status: int = 500) -> None:
        self._status = status
        self._set("failing")

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(10)
            self._server = self._thread = None

    def close(self) -> None:
        self._closing.set()
        self.down()

    def _set(self, mode: str) -> None:
        self._mode = mode
        if self._server is None:
            self._listen()

    def _listen(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                req = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(n))
                mode = receiver._mode
                if mode == "slow":
                    with receiver._cond:
                        receiver.late.append(req)
                        receiver._cond.notify_all()
                    receiver._closing.wait(receiver._sleep)
                    status = 200
                elif mode == "failing":
                    with receiver._cond:
                        receiver.refused.append(req)
                        receiver._cond.notify_all()
                    status = receiver._status
                else:
                    with receiver._cond:
                        receiver.received.append(req)
                        receiver._cond.notify_all()
                    status = 200
                try:
                    self.send_response(status)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up (slow mode)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    # -- waiting ------------------------------------------------------------------

    def wait_count(self, n: int, timeout: float, *, which: str = "received") -> list[Request]:
        """Until `which` holds at least `n` requests; a copy of it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(getattr(self, which)) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{which}: {len(getattr(self, which))} of {n} requests in {timeout}s: "
                                         f"{[r.event_id for r in getattr(self, which)]}")
                self._cond.wait(left)
            return list(getattr(self, which))

    def ids(self) -> list[str]:
        with self._cond:
            return [r.event_id for r in self.received]


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Until `cond()` is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)

"""Helpers of the agent tests: a real reconciler on a real git repository served on a loopback
port, and a real HTTP proxy in front of it that can turn hostile (tampered, replayed, truncated
or oversized answers)."""
from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey, VerifyKey

from agent.apply import NullEnforcer
from agent.client import Client
from agent.config import AgentConfig, Intervals
from agent.runner import Agent
from reconciler import keys
from reconciler.reconcile import Reconciler
from reconciler.server import BackgroundServer, create_app
from reconciler.store import Store
from support.policyrepo import PolicyRepo

CANARY = "node-canary-1"


@dataclass
class Served:
    """A policy repository reconciled into a bundle store that a real HTTP server serves."""

    repo: PolicyRepo
    rec: Reconciler
    server: BackgroundServer
    key: SigningKey
    pub_path: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> Store:
        return self.rec.store

    @property
    def verify_key(self) -> VerifyKey:
        return self.key.verify_key

    def publish(self) -> int:
        """Reconcile; the new version, which the server picks up at once."""
        out = self.rec.run_once()
        assert out.published, out
        self.server.publication.refresh()
        return out.published[-1]

    def relax(self, n: int) -> int:
        """A new version from a change that needs no approval (back to observe / a description)."""
        self.repo.change(f"edit {n}", [("packs/web-lockdown/pack.yaml", "owners: [",
                                        f"owners: [rev{n}@example.com, ")])
        return self.publish()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    repo = PolicyRepo.create(tmp_path)
    pair = keys.generate(tmp_path / "reconciler-keys")
    key = keys.load_signing_key(pair.signing_key_path)
    rec = Reconciler(str(repo.path), tmp_path / "reconciler-state", key)
    rec.run_once()
    server = BackgroundServer(create_app(rec.store.root)).start()
    try:
        yield Served(repo, rec, server, key, pair.public_key_path)
    finally:
        server.stop()
        rec.close()


Handler = Callable[[BaseHTTPRequestHandler], bool]


@dataclass
class Proxy:
    """A real HTTP server that forwards to `upstream` unless `tamper` answers the request itself."""

    upstream: str
    tamper: Handler | None = None
    requests: list[str] = field(default_factory=list)
    url: str = ""

    # ready-made hostile behaviours -------------------------------------------------

    def serve(self, path: str, body: bytes, etag: str = '"hostile"') -> None:
        def h(req: BaseHTTPRequestHandler) -> bool:
            if req.path.split("?")[0] != path:
                return False
            req.send_response(200)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(body)))
            req.send_header("ETag", etag)
            req.end_headers()
            req.wfile.write(body)
            return True
        self.tamper = h

    def serve_many(self, bodies: dict[str, bytes]) -> None:
        def h(req: BaseHTTPRequestHandler) -> bool:
            body = bodies.get(req.path.split("?")[0])
            if body is None:
                return False
            req.send_response(200)
            req.send_header("Content-Length", str(len(body)))
            req.send_header("ETag", '"hostile-many"')
            req.end_headers()
            req.wfile.write(body)
            return True
        self.tamper = h

    def truncate(self, path: str, body: bytes) -> None:
        """Announce the whole body, send half of it, close the connection."""
        def h(req: BaseHTTPRequestHandler) -> bool:
            if req.path.split("?")[0] != path:
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
            if req.path.split("?")[0] != path:
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


def _handler_class(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _forward(self, method: str) -> None:
            proxy.requests.append(f"{method} {self.path}")
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


@pytest.fixture()
def proxy(served: Served) -> Iterator[Proxy]:
    p = Proxy(served.url)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(p))
    httpd.daemon_threads = True
    p.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield p
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_agent(server: str, served: Served, state: Path, *, sensor: str = CANARY,
               labels: tuple[tuple[str, str], ...] = (), persist: bool = True, attempts: int | None = 2,
               now: Callable[[], _dt.datetime] | None = None) -> Agent:
    cfg = AgentConfig(server=server, pubkeys=(served.pub_path,), sensor_id=sensor, state=state, labels=labels,
                      intervals=Intervals(wait=5, heartbeat=1, drift=1, retry_max=0.2), engine=False)
    client = Client(server, attempts=attempts, retry_initial=0.01, retry_max=0.05)
    return Agent(cfg, enforcer=NullEnforcer(), client=client, pubkeys=[keys.load_public_key(served.pub_path)],
                 persist=persist, clock=now)

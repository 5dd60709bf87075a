"""The HTTP API against a real bundle store, served by a real uvicorn on a loopback port."""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families

from reconciler.cli import main as cli_main
from reconciler.metrics import Metrics
from reconciler.serve.listen import BackgroundServer, parse_listen
from reconciler.serve.server import create_app
from reconciler.state.store import Store
from wire.bundle import Bundle, parse_index, sign_bundle

COMMIT = "c0ffee" * 6 + "abcd"


def _bundle(version: int, key: SigningKey) -> bytes:
    b = Bundle(version=version, commit=COMMIT, parent=None, author="Alice <alice@example.com>", approvers=(),
               created=_dt.datetime.now(_dt.UTC).replace(microsecond=0), policies=())
    return sign_bundle(b, key)


class _Published:
    """A bundle store with a few published versions, and a way to publish more."""

    def __init__(self, root: Path) -> None:
        self.key = SigningKey.generate()
        self.store = Store(root, self.key)
        self.version = 0

    def publish(self) -> int:
        self.version += 1
        self.store.publish(_bundle(self.version, self.key))
        return self.version


@pytest.fixture()
def published(tmp_path: Path) -> _Published:
    p = _Published(tmp_path / "store")
    p.publish()
    p.publish()
    return p


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [self.format(r) for r in self.records if r.exc_info or "Traceback" in r.getMessage()]


@pytest.fixture()
def server_log() -> Iterator[_LogCapture]:
    cap = _LogCapture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    yield cap
    root.removeHandler(cap)
    root.setLevel(old)


@pytest.fixture()
def server(published: _Published, server_log: _LogCapture) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(published.store.root)) as srv:
        yield srv


@pytest.fixture()
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


# ---------------------------------------------------------------------------
# index


def test_index_is_the_stored_bytes_with_a_strong_etag(client: httpx.Client, published: _Published) -> None:
    r = client.get("/v1/index")
    assert r.status_code == 200
    stored = (published.store.root / "index.json").read_bytes()
    assert r.content == stored
    assert r.headers["etag"] == f'"{hashlib.sha256(stored).hexdigest()}"'
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["content-type"].startswith("application/json")
    assert parse_index(r.content).version == 2


def test_if_none_match_gives_304_without_a_body(client: httpx.Client) -> None:
    etag = client.get("/v1/index").headers["etag"]
    r = client.get("/v1/index", headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    # A list containing it, and the weak form, also match (RFC 9110 weak comparison).
    assert client.get("/v1/index", headers={"If-None-Match": f'"nope", W/{etag}'}).status_code == 304
    assert client.get("/v1/index", headers={"If-None-Match": '"stale"'}).status_code == 200


def test_index_published_by_another_writer_is_served(client: httpx.Client, published: _Published) -> None:
    etag = client.get("/v1/index").headers["etag"]
    published.publish()  # no notification: the server must notice the file on its own
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        r = client.get("/v1/index", headers={"If-None-Match": etag})
        if r.status_code == 200:
            assert parse_index(r.content).version == 3
            return
        time.sleep(0.05)
    pytest.fail("the new index was not served within 3 s")


def test_long_poll_returns_within_a_second_of_a_publish(
    client: httpx.Client, server: BackgroundServer, published: _Published
) -> None:
    etag = client.get("/v1/index").headers["etag"]
    published_at: list[float] = []

    def publish_later() -> None:
        time.sleep(1.0)
        published.publish()
        published_at.append(time.monotonic())
        server.publication.refresh()  # what the reconcile loop does after a pass

    t = threading.Thread(target=publish_later)
    t0 = time.monotonic()
    t.start()
    r = client.get("/v1/index", params={"wait": "30"}, headers={"If-None-Match": etag})
    done = time.monotonic()
    t.join()
    assert r.status_code == 200
    assert parse_index(r.content).version == 3
    assert done - t0 >= 0.9, "the long-poll answered before anything was published"
    assert done - published_at[0] < 1.0


def test_long_poll_times_out_with_304(client: httpx.Client) -> None:
    etag = client.get("/v1/index").headers["etag"]
    t0 = time.monotonic()
    r = client.get("/v1/index", params={"wait": "0.5"}, headers={"If-None-Match": etag})
    elapsed = time.monotonic() - t0
    assert r.status_code == 304
    assert 0.45 <= elapsed < 2.0


def test_long_poll_with_a_stale_etag_answers_at_once(client: httpx.Client) -> None:
    t0 = time.monotonic()
    r = client.get("/v1/index", params={"wait": "30"}, headers={"If-None-Match": '"old"'})
    assert r.status_code == 200
    assert time.monotonic() - t0 < 1.0


def test_a_client_that_hangs_up_releases_its_long_poll(published: _Published) -> None:
    metrics = Metrics()
    with BackgroundServer(create_app(published.store.root, metrics=metrics)) as srv:
        etag = httpx.get(f"{srv.url}/v1/index").headers["etag"]
        with socket.create_connection(_addr(srv.url)) as s:
            s.sendall(f"GET /v1/index?wait=60 HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n".encode())
            time.sleep(0.3)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and _count(metrics, "304") < 1:
            time.sleep(0.05)
    assert _count(metrics, "304") == 1, "the abandoned long-poll is still waiting"


def _count(metrics: Metrics, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "palisade_http_requests_total", {"route": "/v1/index", "method": "GET", "code": code})
    return value or 0.0


def test_a_damaged_index_file_keeps_the_last_good_one_served(client: httpx.Client, published: _Published,
                                                             server_log: _LogCapture) -> None:
    good = client.get("/v1/index").content
    (published.store.root / "index.json").write_bytes(b'{"torn": ')
    time.sleep(1.2)  # two store checks
    assert client.get("/v1/index").content == good
    errors = [r for r in server_log.records if r.levelno >= logging.ERROR and "ignoring the index" in r.getMessage()]
    assert len(errors) == 1


@pytest.mark.parametrize("wait", ["0", "-1", "301", "abc", "1e3", "nan", "inf", "5s", "", "1" * 400, "0.0001"])
def test_invalid_wait_is_400(client: httpx.Client, server_log: _LogCapture, wait: str) -> None:
    r = client.get("/v1/index", params={"wait": wait})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid wait"
    assert "at most 300" in body["detail"]
    assert server_log.tracebacks() == []


def test_no_index_yet_is_404(tmp_path: Path, server_log: _LogCapture) -> None:
    with BackgroundServer(create_app(tmp_path / "empty")) as srv:
        r = httpx.get(f"{srv.url}/v1/index")
    assert r.status_code == 404
    assert r.json()["error"] == "no index"


def test_first_publish_releases_a_long_poll_that_had_nothing(tmp_path: Path) -> None:
    p = _Published(tmp_path / "store")
    with BackgroundServer(create_app(p.store.root)) as srv:
        def publish_later() -> None:
            time.sleep(0.5)
            p.publish()
            srv.publication.refresh()

        t = threading.Thread(target=publish_later)
        t.start()
        r = httpx.get(f"{srv.url}/v1/index", params={"wait": "20"}, timeout=30)
        t.join()
    assert r.status_code == 200
    assert parse_index(r.content).version == 1


# ---------------------------------------------------------------------------
# bundles


def test_bundle_is_immutable_and_cacheable(client: httpx.Client, published: _Published) -> None:
    r = client.get("/v1/bundles/2")
    assert r.status_code == 200
    stored = published.store.bundle_path(2).read_bytes()
    assert r.content == stored
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["etag"] == f'"{hashlib.sha256(stored).hexdigest()}"'
    assert client.get("/v1/bundles/2", headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def test_unknown_version_is_404(client: httpx.Client, server_log: _LogCapture) -> None:
    r = client.get("/v1/bundles/99")
    assert r.status_code == 404
    assert r.json()["error"] == "unknown version"
    assert "v99" in r.json()["detail"]
    assert server_log.tracebacks() == []


def test_a_bundle_file_no_index_names_is_not_served(client: httpx.Client, published: _Published) -> None:
    # What a crash between bundle and index leaves behind: never hand it out as immutable.
    published.store.bundle_path(3).write_bytes(_bundle(3, published.key))
    assert client.get("/v1/bundles/3").status_code == 404


def test_a_damaged_bundle_file_is_refused_not_served(client: httpx.Client, published: _Published,
                                                     server_log: _LogCapture) -> None:
    path = published.store.bundle_path(1)
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    r = client.get("/v1/bundles/1")
    assert r.status_code == 500
    assert r.json()["error"] == "store damaged"
    assert server_log.tracebacks() == []


@pytest.mark.parametrize("raw", [
    "abc", "-1", "0", "1.5", "1e3", "0x10", "9" * 13, "9" * 5000, "%00", "1%00", "v1", "%20", "1;rm",
])
def test_bad_versions_are_400(client: httpx.Client, server_log: _LogCapture, raw: str) -> None:
    r = client.get(f"/v1/bundles/{raw}")
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid version"
    assert server_log.tracebacks() == []


@pytest.mark.parametrize("path", [
    "/v1/bundles/..%2f..%2fetc%2fpasswd",
    "/v1/bundles/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/v1/bundles/%2e%2e%2f%2e%2e%2findex.json",
    "/v1/bundles/../../index.json",
    "/v1/bundles/..",
    "/v1/bundles/%2e%2e",
    "/v1/bundles/v1.json",
])
def test_path_traversal_never_leaves_the_store(server: BackgroundServer, server_log: _LogCapture,
                                               path: str) -> None:
    status, body = _raw_get(server.url, path)
    assert status in (400, 404), (status, body)
    assert b"root:" not in body
    assert b'"kind":"Index"' not in body
    assert json.loads(body)["error"]
    assert server_log.tracebacks() == []


# ---------------------------------------------------------------------------
# protocol-level abuse, routes and methods


def test_huge_headers_get_a_4xx_json_answer(server: BackgroundServer, server_log: _LogCapture) -> None:
    for size in (20_000, 200_000):
        status, body = _raw_request(server.url, b"GET /v1/index HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size
                                    + b"\r\n\r\n")
        assert status in (400, 431), (size, status)
        assert json.loads(body)["error"]
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    status, body = _raw_request(server.url, b"GET /v1/index HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status == 431
    assert server_log.tracebacks() == []


def test_garbage_request_gets_400_json(server: BackgroundServer, server_log: _LogCapture) -> None:
    status, body = _raw_request(server.url, b"\x16\x03\x01\x00\xa5 not http at all\r\n\r\n")
    assert status == 400
    assert json.loads(body)["error"] == "bad request"
    assert server_log.tracebacks() == []


def test_unknown_route_404_and_wrong_method_405(client: httpx.Client, server_log: _LogCapture) -> None:
    r = client.get("/v2/nothing")
    assert r.status_code == 404
    assert r.json()["error"] == "not found"
    r = client.post("/v1/index", content=b"{}")
    assert r.status_code == 405
    assert r.json()["error"] == "method not allowed"
    assert "GET" in r.headers["allow"]
    r = client.delete("/v1/bundles/1")
    assert r.status_code == 405
    assert server_log.tracebacks() == []


def test_openapi_describes_every_route(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/index", "/v1/bundles/{version}", "/v1/status", "/metrics"} <= set(doc["paths"])


# ---------------------------------------------------------------------------
# status and metrics


def test_status_names_the_served_index(client: httpx.Client, published: _Published) -> None:
    doc = client.get("/v1/status").json()
    assert doc["served"]["version"] == 2
    assert doc["served"]["serial"] == published.store.index().serial  # type: ignore[union-attr]


def test_status_includes_the_reconciler_document(published: _Published) -> None:
    app = create_app(published.store.root, status=lambda: {"refused": "history rewritten", "version": 2})
    with BackgroundServer(app) as srv:
        doc = httpx.get(f"{srv.url}/v1/status").json()
    assert doc["refused"] == "history rewritten"
    assert doc["served"]["version"] == 2


def test_metrics_expose_the_named_series(published: _Published) -> None:
    metrics = Metrics()
    with BackgroundServer(create_app(published.store.root, metrics=metrics)) as srv, \
            httpx.Client(base_url=srv.url) as c:
        etag = c.get("/v1/index").headers["etag"]
        c.get("/v1/index", headers={"If-None-Match": etag})
        c.get("/v1/bundles/1")
        c.get("/v1/bundles/abc")
        c.get("/nope")
        metrics.reconcile_duration.observe(0.2)
        metrics.count_commit("accepted")
        text = c.get("/metrics").text
    index = published.store.index()
    assert index is not None
    assert 'palisade_http_requests_total{code="200",method="GET",route="/v1/index"} 1.0' in text
    assert 'palisade_http_requests_total{code="304",method="GET",route="/v1/index"} 1.0' in text
    assert 'palisade_http_requests_total{code="200",method="GET",route="/v1/bundles/{version}"} 1.0' in text
    assert 'palisade_http_requests_total{code="400",method="GET",route="/v1/bundles/{version}"} 1.0' in text
    assert 'palisade_http_requests_total{code="404",method="GET",route="other"} 1.0' in text
    assert "palisade_reconcile_duration_seconds_count 1.0" in text
    assert 'palisade_commits_processed_total{result="accepted"} 1.0' in text
    assert 'palisade_commits_processed_total{result="rejected"} 0.0' in text
    assert "palisade_bundle_version 2.0" in text
    samples = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples["palisade_index_expiry_timestamp_seconds"] == index.expires.timestamp()
    assert samples["palisade_index_serial"] == index.serial


def test_two_servers_keep_separate_metrics(published: _Published) -> None:
    root = published.store.root
    with BackgroundServer(create_app(root)) as a, BackgroundServer(create_app(root)) as b:
        for _ in range(3):
            httpx.get(f"{a.url}/v1/index")
        text_b = httpx.get(f"{b.url}/metrics").text
    assert 'route="/v1/index"' not in text_b


# ---------------------------------------------------------------------------
# palisade status --server / --state, and --listen parsing


def test_status_command_against_the_server(server: BackgroundServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["status", "--server", server.url, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["served"]["version"] == 2


def test_status_command_when_the_server_is_down(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli_main(["status", "--server", f"http://127.0.0.1:{port}"]) == 2
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:8740", ("127.0.0.1", 8740)), ("[::1]:80", ("::1", 80)), ("localhost:0", ("localhost", 0)),
])
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["8740", "127.0.0.1", "127.0.0.1:99999", ":80", "[::1]", "a:b"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(Exception, match="expected HOST:PORT"):
        parse_listen(text)


# ---------------------------------------------------------------------------


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (httpx would normalise the path or refuse the headers) and read the answer."""
    with socket.create_connection(_addr(url), timeout=10) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(request)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if _complete(b"".join(chunks)):
                break
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _raw_get(url: str, path: str) -> tuple[int, bytes]:
    return _raw_request(url, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())

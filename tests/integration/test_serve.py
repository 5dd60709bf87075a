"""`palisade serve` end to end: a real git repository made from example-repo/, real keys,
the real command in a subprocess, real HTTP on a loopback port."""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.keys import generate, load_public_key
from support.policyrepo import PolicyRepo
from support.serve import Serve, running
from wire.bundle import Index, parse_bundle, verify_index

ROOT = Path(__file__).resolve().parents[2]
#: A commit must be published within this long (watch debounce + reconcile pass, with CI slack).
WATCH_LATENCY = 5.0

pytestmark = pytest.mark.slow


@pytest.fixture()
def policy(tmp_path: Path) -> PolicyRepo:
    # A short index lifetime so re-signing before expiry is observable in seconds.
    return PolicyRepo.create(tmp_path, bundle_expiry="4s")


@pytest.fixture()
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    kp = generate(tmp_path / "keys")
    return kp.signing_key_path, kp.public_key_path


@pytest.fixture()
def serve(policy: PolicyRepo, keypair: tuple[Path, Path], tmp_path: Path) -> Iterator[Serve]:
    with running(policy.path, tmp_path / "state", keypair[0]) as s:
        yield s


def _index(url: str, pub: Path) -> tuple[Index, str]:
    r = httpx.get(f"{url}/v1/index", timeout=10)
    assert r.status_code == 200, r.text
    return verify_index(r.content, [load_public_key(pub)]), r.headers["etag"]


def _wait_version(url: str, pub: Path, version: int, timeout: float) -> Index:
    """Long-poll the index until it names `version`."""
    deadline = time.monotonic() + timeout
    etag = None
    while time.monotonic() < deadline:
        wait = max(0.1, deadline - time.monotonic())
        r = httpx.get(f"{url}/v1/index", params={"wait": f"{min(wait, 300):.2f}"},
                      headers={"If-None-Match": etag} if etag else {}, timeout=wait + 10)
        if r.status_code == 200:
            index = verify_index(r.content, [load_public_key(pub)])
            if index.version >= version:
                return index
            etag = r.headers["etag"]
        elif r.status_code != 304 and r.status_code != 404:
            raise AssertionError(f"unexpected {r.status_code}: {r.text}")
    raise AssertionError(f"v{version} was not published within {timeout}s")


def _status(url: str) -> dict:  # type: ignore[type-arg]
    r = httpx.get(f"{url}/v1/status", timeout=10)
    assert r.status_code == 200
    doc: dict = r.json()  # type: ignore[type-arg]
    return doc


def test_commits_are_published_rejected_and_served(serve: Serve, policy: PolicyRepo,
                                                   keypair: tuple[Path, Path], tmp_path: Path) -> None:
    pub = keypair[1]
    first = _wait_version(serve.url, pub, 1, 30)
    assert first.version == 1

    # A good commit → the next version, within the watch latency; the long-poll sees it as it lands.
    _, etag = _index(serve.url, pub)
    result: dict[str, float | httpx.Response] = {}

    def long_poll() -> None:
        result["response"] = httpx.get(f"{serve.url}/v1/index", params={"wait": "30"},
                                       headers={"If-None-Match": etag}, timeout=40)
        result["at"] = time.monotonic()

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    good = policy.change("web back to observe", [("enforcement/web-lockdown.yaml",
                                                  "state: enforce_ready", "state: observe")])
    poller.join()
    resp = result["response"]
    assert isinstance(resp, httpx.Response)
    assert resp.status_code == 200
    index = verify_index(resp.content, [load_public_key(pub)])
    assert index.version == 2
    assert float(result["at"]) - t0 < WATCH_LATENCY
    b = httpx.get(f"{serve.url}/v1/bundles/2", timeout=10)
    assert b.status_code == 200
    assert b.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert parse_bundle(b.content).commit == good

    # A bad commit → rejected with its findings; the index still names the last good bundle.
    bad = policy.change("typo", [("enforcement/web-lockdown.yaml", "state: observe", "state: observ")])
    deadline = time.monotonic() + WATCH_LATENCY
    while time.monotonic() < deadline and (_status(serve.url).get("lastRejected") or {}).get("commit") != bad:
        time.sleep(0.1)
    status = _status(serve.url)
    assert status["lastRejected"]["commit"] == bad
    assert any(f["file"] == "enforcement/web-lockdown.yaml" for f in status["lastRejected"]["findings"])
    assert status["lastAccepted"]["commit"] == good
    assert _index(serve.url, pub)[0].version == 2
    assert httpx.get(f"{serve.url}/v1/bundles/3", timeout=10).status_code == 404

    # The operator's views: through the server and from the state directory.
    out = _cli("status", "--server", serve.url, "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["lastRejected"]["commit"] == bad and doc["version"] == 2
    out = _cli("status", "--state", str(tmp_path / "state"), "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["lastRejected"]["commit"] == bad and doc["lastAccepted"]["commit"] == good
    text = _cli("status", "--state", str(tmp_path / "state")).stdout
    assert "last rejected" in text and bad[:12] in text and "enforcement/web-lockdown.yaml" in text

    metrics = httpx.get(f"{serve.url}/metrics", timeout=10).text
    assert 'palisade_commits_processed_total{result="accepted"} 2.0' in metrics
    assert 'palisade_commits_processed_total{result="rejected"} 1.0' in metrics
    assert "palisade_bundle_version 2.0" in metrics


def test_index_is_resigned_before_it_expires(serve: Serve, keypair: tuple[Path, Path]) -> None:
    pub = keypair[1]
    first = _wait_version(serve.url, pub, 1, 30)
    assert first.expires - first.issued == _dt.timedelta(seconds=4)
    # Over three lifetimes nothing changes in the repository, yet the served index never lapses.
    deadline = time.monotonic() + 12
    serials = set()
    while time.monotonic() < deadline:
        index, _ = _index(serve.url, pub)  # verify_index refuses an expired index
        assert index.version == 1
        serials.add(index.serial)
        time.sleep(0.25)
    assert max(serials) - first.serial >= 3


def test_force_push_is_refused_and_reported(serve: Serve, policy: PolicyRepo,
                                            keypair: tuple[Path, Path]) -> None:
    pub = keypair[1]
    _wait_version(serve.url, pub, 1, 30)
    policy.change("web back to observe", [("enforcement/web-lockdown.yaml",
                                           "state: enforce_ready", "state: observe")])
    _wait_version(serve.url, pub, 2, WATCH_LATENCY)

    # Rewrite history: drop the accepted merge and commit something else in its place. The new commit
    # is made on a detached HEAD and the branch moved to it in one step, as a force push moves it (a
    # `reset --hard HEAD~1` first would show the server the intermediate commit, refused in its turn).
    branch = policy.git.git("rev-parse", "--abbrev-ref", "HEAD").strip()
    policy.git.git("checkout", "-q", "--detach", "HEAD~1")
    policy.git.write("README.md", "rewritten\n")
    rewritten = policy.git.commit("rewritten history")
    policy.git.git("branch", "-q", "-f", branch, rewritten)
    policy.git.git("checkout", "-q", branch)
    deadline = time.monotonic() + WATCH_LATENCY
    while time.monotonic() < deadline and not _status(serve.url).get("refused"):
        time.sleep(0.1)
    status = _status(serve.url)
    assert status["refused"], status
    assert rewritten[:12] in status["refused"]
    assert "--accept-rewrite" in status["refused"]
    index, _ = _index(serve.url, pub)
    assert index.version == 2  # the last accepted bundle keeps serving
    out = _cli("status", "--server", serve.url)
    assert out.returncode == 1
    assert "REFUSED" in out.stdout
    assert 'palisade_commits_processed_total{result="refused"} 1.0' in httpx.get(f"{serve.url}/metrics").text


def test_a_second_server_on_the_same_state_fails_clearly(serve: Serve, policy: PolicyRepo,
                                                         keypair: tuple[Path, Path], tmp_path: Path) -> None:
    proc = _cli("serve", "--repo", str(policy.path), "--state", str(tmp_path / "state"),
                "--key", str(keypair[0]), "--listen", "127.0.0.1:0", timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "state" in proc.stderr.lower() or "lock" in proc.stderr.lower()
    assert f"pid {serve.proc.pid}" in proc.stderr and "--leader-elect" in proc.stderr

    # With --leader-elect (alias --standby) it waits instead: it listens, stands by, and serves the reads.
    _wait_version(serve.url, keypair[1], 1, 30)
    with running(policy.path, tmp_path / "state", keypair[0], "--standby") as standby:
        assert "standing by" in standby.log
        doc = _status(standby.url)
        assert doc["role"] == "standby" and doc["leader"] == {"pid": serve.proc.pid}
        assert _status(serve.url)["role"] == "leader"
        # The same index as the leader's (this repository's is re-signed every 2 s: the standby follows it
        # within a moment of each write).
        deadline = time.monotonic() + 10
        while _index(standby.url, keypair[1])[1] != _index(serve.url, keypair[1])[1]:
            assert time.monotonic() < deadline, "the standby does not serve the leader's index"
            time.sleep(0.05)


def test_bad_arguments_exit_2_without_a_traceback(policy: PolicyRepo, keypair: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    base = ["serve", "--repo", str(policy.path), "--state", str(tmp_path / "s"), "--key", str(keypair[0])]
    for extra, message in ((["--listen", "nope"], "HOST:PORT"), (["--poll-interval", "soon"], "poll-interval")):
        proc = _cli(*base, *extra, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
    proc = _cli("serve", "--repo", str(policy.path), "--state", str(tmp_path / "s"),
                "--key", str(tmp_path / "missing.key"), timeout=30)
    assert proc.returncode == 2 and "missing.key" in proc.stderr and "Traceback" not in proc.stderr


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_url_is_polled_at_the_poll_interval(policy: PolicyRepo, keypair: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    # A URL cannot be watched: the server fetches it every --poll-interval.
    s = Serve(f"file://{policy.path}", tmp_path / "state", keypair[0], "--poll-interval", "1s")
    try:
        assert "polling every 1s" in s.log
        _wait_version(s.url, keypair[1], 1, 30)
        policy.change("web back to observe", [("enforcement/web-lockdown.yaml",
                                               "state: enforce_ready", "state: observe")])
        t0 = time.monotonic()
        _wait_version(s.url, keypair[1], 2, 10)
        assert time.monotonic() - t0 < 1.0 + WATCH_LATENCY
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log

"""Push webhooks end to end: the real `palisade serve` in a subprocess, on a real git repository it must fetch,
signed deliveries over real HTTP.

The server tracks the repository by a `file://` URL with `--poll-interval 1h`: a URL is not watched
(reconciler/serve/watch.py local_git_dir), so nothing but a webhook makes it fetch a new commit in the
time a test runs (the loop's own timer wakes it at most once a minute, long after these tests end).
One server serves the whole module; every test makes its own commit.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.keys import generate
from reconciler.serve.hooks import generic_signature
from support.policyrepo import ALICE, PolicyRepo
from support.serve import Serve, running

pytestmark = pytest.mark.slow

SECRET = b"webhook-test-secret-7f3a9c0e5b2d"
#: What the issue asks of a signed push: the new commit published within a second.
PUBLISH_WITHIN = 1.0
#: For the other kinds, with slack for a busy CI machine (the path is the same).
SLACK = 5.0
MAX_BODY = 65536

HOOKS = f"""\
apiVersion: palisade.dev/v1
kind: Receivers
spec:
  maxBodyBytes: {MAX_BODY}
  receivers:
    - {{name: github, kind: github, secretFile: hook.secret}}
    - {{name: gitlab, kind: gitlab, secretFile: hook.secret}}
    - {{name: ci, kind: generic, secretFile: hook.secret, maxSkew: 2m}}
    - {{name: flood, kind: github, secretFile: hook.secret, rateLimit: {{burst: 2, perMinute: 1}}}}
"""


class _Env:
    def __init__(self, policy: PolicyRepo, url: str, log: Any, serve_args: tuple[str, ...]) -> None:
        self.policy, self.url, self._log = policy, url, log
        self.serve_args = serve_args  # repository, state, key and options: a second server on the same state
        self.client = httpx.Client(base_url=url, timeout=30)
        self.commits = 0

    @property
    def log(self) -> str:
        return str(self._log())

    def commit(self) -> str:
        """One accepted commit on main (a pack's description), not yet known to the server."""
        self.commits += 1
        self.policy.edit("packs/baseline-observe/pack.yaml", "description: ",
                         f"description: (webhook test {self.commits}) ")
        self.policy.git.git("add", "-A")
        return self.policy.git.commit(f"webhook test {self.commits}", author=ALICE)

    def index(self) -> tuple[int, str]:
        r = self.client.get("/v1/index")
        assert r.status_code == 200, r.text
        return int(r.json()["version"]), r.headers["etag"]

    def bundle_commit(self, version: int) -> str:
        r = self.client.get(f"/v1/bundles/{version}")
        assert r.status_code == 200, r.text
        return str(r.json()["commit"])

    def changed_within(self, etag: str, seconds: float) -> int | None:
        """Long-poll the index: the new version if one is published within `seconds`, else None."""
        with httpx.Client(base_url=self.url, timeout=seconds + 30) as c:
            r = c.get("/v1/index", params={"wait": f"{seconds:.2f}"}, headers={"If-None-Match": etag})
        if r.status_code == 304:
            return None
        assert r.status_code == 200, r.text
        return int(r.json()["version"])

    def counter(self, name: str, **labels: str) -> float:
        text = self.client.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    def refusals(self, receiver: str, reason: str) -> float:
        return self.counter("palisade_webhook_refusals_total", receiver=receiver, reason=reason)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Env]:
    tmp = tmp_path_factory.mktemp("webhooks")
    policy = PolicyRepo.create(tmp)
    keys = generate(tmp / "keys")
    (tmp / "hook.secret").write_bytes(SECRET + b"\n")
    (tmp / "hook.secret").chmod(0o600)
    (tmp / "hooks.yaml").write_text(HOOKS)
    args = (f"file://{policy.path}", str(tmp / "state"), str(keys.signing_key_path),
            "--poll-interval", "1h", "--hooks", str(tmp / "hooks.yaml"))
    with running(args[0], Path(args[1]), Path(args[2]), *args[3:]) as s:
        assert "polling every 1h" in s.log  # not watched: only a webhook makes it fetch now
        assert f"{s.url}/v1/hooks/github (github)" in s.log
        e = _Env(policy, s.url, lambda: s.log, args)
        deadline = time.monotonic() + 60
        while e.client.get("/v1/index").status_code != 200:  # the first commit, published at start
            assert time.monotonic() < deadline, s.log
            time.sleep(0.05)
        yield e
        e.client.close()


def _github_push(sha: str, ref: str = "refs/heads/main", before: str = "0" * 40) -> bytes:
    """A push event as GitHub sends it (the members a receiver reads, and the usual others)."""
    repo = {"id": 1296269, "name": "policy", "full_name": "acme/policy", "default_branch": "main",
            "clone_url": "https://github.com/acme/policy.git", "private": True}
    commit = {"id": sha, "tree_id": "4b825dc642cb6eb9a060e54bf8d69288fbee4904", "distinct": True,
              "message": "webhook test", "timestamp": "2026-12-02T00:00:00Z",
              "author": {"name": "Alice Reviewer", "email": "alice@example.com"}, "added": [], "removed": [],
              "modified": ["packs/baseline-observe/pack.yaml"]}
    return json.dumps({
        "ref": ref, "before": before, "after": sha, "created": False, "deleted": False, "forced": False,
        "base_ref": None, "compare": f"https://github.com/acme/policy/compare/{before[:12]}...{sha[:12]}",
        "commits": [commit], "head_commit": commit, "repository": repo,
        "pusher": {"name": "alice", "email": "alice@example.com"}, "sender": {"login": "alice", "id": 1},
    }).encode()


def _github_headers(body: bytes, event: str = "push", secret: bytes = SECRET,
                    delivery: str | None = None) -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-GitHub-Hook-ID": "42", "User-Agent": "GitHub-Hookshot/abc123", "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()}


def _push_and_time(env: _Env, sha: str, post: Any) -> tuple[httpx.Response, int | None, float]:
    """Long-poll the index from before `post()` is sent until it names a bundle of commit `sha`: (the POST's
    answer, that version or None after 10 s, seconds from the POST to that index being served)."""
    _, etag = env.index()
    got: dict[str, Any] = {"version": None, "at": time.perf_counter()}

    def poll() -> None:
        tag, deadline = etag, time.monotonic() + 10
        with httpx.Client(base_url=env.url, timeout=30) as c:
            while time.monotonic() < deadline:
                r = c.get("/v1/index", params={"wait": "5"}, headers={"If-None-Match": tag})
                if r.status_code == 200:
                    tag, version = r.headers["etag"], int(r.json()["version"])
                    if env.bundle_commit(version) == sha:  # a commit left before may be published first
                        got.update(version=version, at=time.perf_counter())
                        return

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.05)  # the long-poll is waiting before the POST goes out
    t0 = time.perf_counter()
    r = post()
    poller.join()
    return r, got["version"], got["at"] - t0


# --- refusals first: the server has not fetched anything since it started ---------------------


def test_a_wrong_signature_changes_nothing_and_is_counted(env: _Env) -> None:
    version, etag = env.index()
    sha = env.commit()
    body = _github_push(sha)
    before = env.refusals("github", "bad_signature"), env.refusals("github", "missing_signature")
    r = env.client.post("/v1/hooks/github", content=body,
                        headers=_github_headers(body, secret=b"not-the-secret-0123456789abcdef"))
    assert r.status_code == 401
    assert r.json() == {"error": "bad signature", "detail": r.json()["detail"]}
    headers = _github_headers(body)
    del headers["X-Hub-Signature-256"]
    r = env.client.post("/v1/hooks/github", content=body, headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "missing signature"
    tampered = body.replace(b'"forced": false', b'"forced": true ')
    r = env.client.post("/v1/hooks/github", content=tampered, headers=_github_headers(body))
    assert r.status_code == 401
    assert env.changed_within(etag, 2.0) is None  # the commit is there, but nothing fetched it
    assert env.index()[0] == version
    assert env.refusals("github", "bad_signature") == before[0] + 2
    assert env.refusals("github", "missing_signature") == before[1] + 1
    assert env.counter("palisade_webhook_deliveries_total", receiver="github", result="push") == 0


def test_a_signed_github_push_publishes_the_commit_within_a_second(env: _Env) -> None:
    version, _ = env.index()
    sha = env.commit()
    body = _github_push(sha)
    r, new, elapsed = _push_and_time(env, sha, lambda: env.client.post(
        "/v1/hooks/github", content=body, headers=_github_headers(body, delivery="gh-1")))
    assert r.status_code == 202, r.text
    assert r.json()["delivery"] == "gh-1" and r.json()["after"] == sha
    assert new is not None and new > version, env.log  # (the commit the bad deliveries left is published too)
    assert elapsed < PUBLISH_WITHIN, f"published {elapsed:.3f}s after the POST"
    assert env.counter("palisade_webhook_deliveries_total", receiver="github", result="push") == 1


def test_a_replayed_delivery_is_409(env: _Env) -> None:
    before = env.refusals("github", "replayed")
    body = b'{"zen": "Design for failure.", "hook_id": 42}'
    headers = _github_headers(body, event="ping", delivery="ping-1")
    assert env.client.post("/v1/hooks/github", content=body, headers=headers).status_code == 200
    again = env.client.post("/v1/hooks/github", content=body, headers=headers)
    assert again.status_code == 409 and again.json()["error"] == "replayed delivery"
    # The id GitHub's signature does not cover, changed: the same body is still a replay.
    renamed = env.client.post("/v1/hooks/github", content=body, headers=_github_headers(body, event="ping"))
    assert renamed.status_code == 409 and "same body" in renamed.json()["detail"]
    assert env.refusals("github", "replayed") == before + 2


def test_a_flood_is_429_with_retry_after(env: _Env) -> None:
    codes = []
    for i in range(4):
        body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": i}).encode()
        r = env.client.post("/v1/hooks/flood", content=body, headers=_github_headers(body, event="ping"))
        codes.append(r.status_code)
    assert codes == [200, 200, 429, 429]
    assert r.json()["error"] == "too many deliveries"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert env.refusals("flood", "rate_limited") == 2
    assert env.refusals("github", "rate_limited") == 0  # each receiver has its own bucket


def test_a_gitlab_push_publishes_the_commit(env: _Env) -> None:
    version, _ = env.index()
    sha = env.commit()
    body = json.dumps({
        "object_kind": "push", "event_name": "push", "before": "0" * 40, "after": sha, "ref": "refs/heads/main",
        "ref_protected": True, "checkout_sha": sha, "user_username": "alice", "project_id": 15,
        "project": {"id": 15, "name": "policy", "path_with_namespace": "acme/policy", "default_branch": "main"},
        "commits": [{"id": sha, "message": "webhook test", "author": {"name": "Alice", "email": "alice@example.com"}}],
        "total_commits_count": 1, "repository": {"name": "policy"},
    }).encode()
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Instance": "https://gitlab.example.com",
               "X-Gitlab-Event-UUID": str(uuid.uuid4()), "Idempotency-Key": str(uuid.uuid4()),
               "Content-Type": "application/json", "User-Agent": "GitLab/17.5.0"}
    wrong = env.client.post("/v1/hooks/gitlab", content=body, headers={**headers, "X-Gitlab-Token": "nope"})
    assert wrong.status_code == 401 and env.refusals("gitlab", "bad_signature") == 1
    r, new, elapsed = _push_and_time(env, sha, lambda: env.client.post(
        "/v1/hooks/gitlab", content=body, headers={**headers, "X-Gitlab-Token": SECRET.decode()}))
    assert r.status_code == 202, r.text
    assert new == version + 1 and elapsed < SLACK, (new, elapsed)


def test_a_generic_push_publishes_the_commit_and_old_timestamps_are_refused(env: _Env) -> None:
    version, _ = env.index()
    sha = env.commit()
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()

    def headers(stamp: int, delivery: str) -> dict[str, str]:
        return {"X-Palisade-Event": "push", "X-Palisade-Delivery": delivery, "X-Palisade-Timestamp": str(stamp),
                "X-Palisade-Signature": generic_signature(SECRET, str(stamp), delivery, body)}

    old = env.client.post("/v1/hooks/ci", content=body, headers=headers(int(time.time()) - 600, "ci-old"))
    assert old.status_code == 409 and old.json()["error"] == "stale timestamp"
    assert env.refusals("ci", "stale_timestamp") == 1
    r, new, elapsed = _push_and_time(env, sha, lambda: env.client.post(
        "/v1/hooks/ci", content=body, headers=headers(int(time.time()), "ci-1")))
    assert r.status_code == 202, r.text
    assert new == version + 1 and elapsed < SLACK, (new, elapsed)


def test_deliveries_that_ask_for_nothing_are_answered_and_change_nothing(env: _Env) -> None:
    version, etag = env.index()
    sha = env.commit()  # there is something to fetch: only a push on main may make the server fetch it
    other = _github_push(sha, ref="refs/heads/feature")
    r = env.client.post("/v1/hooks/github", content=other, headers=_github_headers(other))
    assert r.status_code == 200 and r.json()["ignored"] == "other_ref", r.text
    tag = _github_push(sha, ref="refs/tags/v1.0")
    r = env.client.post("/v1/hooks/github", content=tag, headers=_github_headers(tag))
    assert r.status_code == 200 and r.json()["ignored"] == "other_ref"
    ping = b'{"zen": "Approachable is better than simple.", "hook_id": 7}'
    r = env.client.post("/v1/hooks/github", content=ping, headers=_github_headers(ping, event="ping"))
    assert r.status_code == 200 and r.json()["ignored"] == "not_a_push"
    assert env.changed_within(etag, 1.5) is None
    assert env.index()[0] == version
    assert env.counter("palisade_webhook_deliveries_total", receiver="github", result="ignored") >= 3


def test_unknown_receiver_too_large_and_wrong_method(env: _Env) -> None:
    r = env.client.post("/v1/hooks/nope", content=b"{}", headers={"X-GitHub-Event": "push"})
    assert r.status_code == 404 and r.json()["error"] == "unknown receiver"
    assert env.refusals("", "unknown_receiver") == 1
    big = b"x" * (MAX_BODY + 1)
    r = env.client.post("/v1/hooks/github", content=big, headers=_github_headers(big))
    assert r.status_code == 413 and r.json()["error"] == "delivery too large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is on the bytes read
        for _ in range(MAX_BODY // 8192 + 2):
            yield b"y" * 8192

    r = env.client.post("/v1/hooks/github", content=chunks(), headers={"X-GitHub-Event": "push"})
    assert r.status_code == 413
    assert env.refusals("github", "too_large") == 2
    r = env.client.get("/v1/hooks/github")
    assert r.status_code == 405 and set(r.json()) == {"error", "detail"}
    assert "Traceback" not in env.log


def test_openapi_describes_the_endpoint(env: _Env) -> None:
    doc = env.client.get("/openapi.json").json()
    responses = doc["paths"]["/v1/hooks/{name}"]["post"]["responses"]
    assert {"200", "202", "400", "401", "404", "409", "413", "429"} <= set(responses)
    assert "Retry-After" in responses["429"]["headers"]


def test_a_standby_answers_503_and_remembers_nothing(env: _Env) -> None:
    # A second server on the same state directory stands by: it cannot wake the leader's loop.
    repo, state, key, *extra = env.serve_args
    standby = Serve(repo, Path(state), Path(key), *extra, "--leader-elect")
    try:
        assert "standing by" in standby.log
        body = b'{"zen": "Mind your words, they are important.", "hook_id": 9}'
        headers = _github_headers(body, event="ping", delivery="to-the-standby")
        r = httpx.post(f"{standby.url}/v1/hooks/github", content=body, headers=headers, timeout=10)
        assert r.status_code == 503 and r.json()["error"] == "standing by", r.text
        metrics = httpx.get(f"{standby.url}/metrics", timeout=10).text
        assert 'palisade_webhook_refusals_total{reason="standby",receiver="github"} 1.0' in metrics
        # Sent to the leader instead, the same delivery goes through: the standby did not remember it.
        assert env.client.post("/v1/hooks/github", content=body, headers=headers).status_code == 200
    finally:
        assert standby.stop() == 0
    assert "Traceback" not in standby.log

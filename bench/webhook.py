"""Benchmark: signed GitHub push webhook → new version served by /v1/index.

The real `palisade serve` (subprocess, loopback) tracks a generated policy repository by a `file://` URL
with `--poll-interval 1h`, so nothing but the webhook makes it fetch. For each of N pushes: one commit,
then a GitHub-shaped push delivery signed with X-Hub-Signature-256 is POSTed to /v1/hooks/github while a
long-poll (`/v1/index?wait=` with the current ETag) waits. The latency of a push is the time from sending
the POST to the long-poll answering with the index that names the new version: verification, the wake-up
of the reconcile loop, git fetch, validation with history, rendering, signing, publishing and the HTTP
hand-off. Prints the median and p99, and the POST's own answer time (the 202).

Target: median < 1 s (issue 16). Writes bench/results/webhook.json.

    .venv/bin/python bench/webhook.py [--pushes 30] [--policies 10]
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _genrepo import generate, git
from reconcile import _change, _pass_stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.serve import Serve  # noqa: E402 (the tests' server launcher: the same command line)

TARGET_MS = 1000.0
SECRET = os.urandom(32).hex().encode()


def _payload(sha: str, before: str) -> bytes:
    commit = {"id": sha, "message": "bench", "timestamp": "2026-12-02T00:00:00Z",
              "author": {"name": "Bench", "email": "bench@example.com"}, "modified": ["packs/gen-pack-000"]}
    return json.dumps({"ref": "refs/heads/main", "before": before, "after": sha, "created": False,
                       "deleted": False, "forced": False, "commits": [commit], "head_commit": commit,
                       "repository": {"name": "policy", "full_name": "bench/policy", "default_branch": "main"},
                       "pusher": {"name": "bench"}, "sender": {"login": "bench"}}).encode()


def _headers(body: bytes) -> dict[str, str]:
    return {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()), "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()}


def _one(client: httpx.Client, url: str, repo: Path, step: int, etag: str, version: int) -> tuple[float, float, str]:
    """One push: (seconds POST → new index served, seconds POST → 202, the new ETag)."""
    before = git(repo, "rev-parse", "HEAD")
    _change(repo, step)
    body = _payload(git(repo, "rev-parse", "HEAD"), before)
    got: dict[str, Any] = {}
    ready = threading.Event()

    def poll() -> None:
        tag = etag
        with httpx.Client(timeout=60) as c:
            while True:
                ready.set()
                r = c.get(f"{url}/v1/index", params={"wait": "30"}, headers={"If-None-Match": tag})
                if r.status_code == 200:
                    tag = r.headers["etag"]
                    if int(r.json()["version"]) > version:
                        got.update(at=time.perf_counter(), etag=tag)
                        return

    poller = threading.Thread(target=poll)
    poller.start()
    ready.wait()
    time.sleep(0.02)  # the long-poll request is on the server before the POST goes out
    t0 = time.perf_counter()
    r = client.post(f"{url}/v1/hooks/github", content=body, headers=_headers(body))
    answered = time.perf_counter() - t0
    if r.status_code != 202:
        raise RuntimeError(f"the push was refused: {r.status_code} {r.text}")
    poller.join(60)
    if "at" not in got:
        raise RuntimeError("the push was not published within 60 s")
    return got["at"] - t0, answered, str(got["etag"])


def bench(pushes: int, policies: int, work: Path) -> dict[str, Any]:
    from reconciler.keys import generate as keygen

    repo = work / "repo"
    generate(repo, policies)
    keys = keygen(work / "keys")
    secret = work / "github.secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    hooks = work / "hooks.yaml"
    hooks.write_text("apiVersion: palisade.dev/v1\nkind: Receivers\nspec:\n  receivers:\n"
                     "    - {name: github, kind: github, secretFile: github.secret, "
                     "rateLimit: {burst: 100, perMinute: 6000}}\n")
    srv = Serve(f"file://{repo}", work / "state", keys.signing_key_path, "--poll-interval", "1h",
                "--hooks", str(hooks), start_timeout=120)
    latency: list[float] = []
    answer: list[float] = []
    try:
        with httpx.Client(timeout=60) as client:
            deadline = time.monotonic() + 120
            while (r := client.get(f"{srv.url}/v1/index")).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("nothing published at start:\n" + srv.log)
                time.sleep(0.05)
            etag, version = r.headers["etag"], int(r.json()["version"])
            for step in range(pushes):
                seconds, answered, etag = _one(client, srv.url, repo, step, etag, version)
                version += 1
                latency.append(seconds)
                answer.append(answered)
            passes = _pass_stats(client, srv.url)
    finally:
        srv.stop()
        if "Traceback" in srv.log:
            print(srv.log, file=sys.stderr)
    latency.sort()
    answer.sort()

    def p99(xs: list[float]) -> float:
        return xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]

    return {"policies": policies, "pushes": len(latency),
            "median_ms": round(statistics.median(latency) * 1000, 1), "p99_ms": round(p99(latency) * 1000, 1),
            "max_ms": round(latency[-1] * 1000, 1),
            "post_answer_median_ms": round(statistics.median(answer) * 1000, 2),
            "post_answer_p99_ms": round(p99(answer) * 1000, 2),
            "reconcile_passes": passes[0], "reconcile_pass_mean_ms": round(passes[1] * 1000, 1),
            "target_median_ms": TARGET_MS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=30, help="pushes (default 30)")
    ap.add_argument("--policies", type=int, default=10, help="TracingPolicies in the generated repository (default 10)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="palisade-bench-webhook-") as tmp:
        r = bench(args.pushes, args.policies, Path(tmp))
    print(f"signed GitHub push → new version served, {r['policies']} policies: median {r['median_ms']:.0f} ms, "
          f"p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms over {r['pushes']} pushes "
          f"(target median < {TARGET_MS:.0f} ms: {'met' if r['median_ms'] < TARGET_MS else 'MISSED'}); "
          f"the POST answered 202 in {r['post_answer_median_ms']:.1f} ms (median); "
          f"mean reconcile pass {r['reconcile_pass_mean_ms']:.0f} ms", flush=True)
    out = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "webhook": r}
    path = ROOT / "bench" / "results" / "webhook.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: commit → published bundle latency, and the index request rate of `palisade serve`.

1. For generated policy repositories of 10, 100 and 1,000 TracingPolicies, run the
   real `palisade serve` (subprocess, loopback) on the repository and make up to
   50 commits, one at a time. The latency of a commit is the time from `git
   commit` returning to the server answering a long-poll (`/v1/index?wait=`, with
   the previous ETag) with the index that names the new bundle: watch debounce,
   fetch, validation with history, rendering, signing, publishing and the HTTP
   hand-off, all included. Prints the median and p99 per size.
2. With 200 concurrent keep-alive clients in separate processes, each sending
   `GET /v1/index` with the current ETag (so every answer is a 304), measure
   the server's request rate over a fixed duration.

Targets: median < 300 ms at 100 policies, < 2 s at 1,000; >= 2,000 index requests/s.
Everything is bounded: each size stops after --commits commits or --budget
seconds, whichever comes first. Loopback only. Writes bench/results/reconcile.json.

    .venv/bin/python bench/reconcile.py [--sizes 10,100,1000] [--commits 50] [--budget 180]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _genrepo import generate, git

ROOT = Path(__file__).resolve().parent.parent
TARGETS_MS = {100: 300.0, 1000: 2000.0}
TARGET_RPS = 2000.0

# ---------------------------------------------------------------------------
# A generated repository (bench/_genrepo.py)


def _change(root: Path, step: int) -> None:
    """One small policy edit per commit, as a team's pull request would make (state stays observe)."""
    path = root / "packs" / "gen-pack-000" / "policy-00.yaml"
    text = re.sub(r'values: \["[0-9]+"\]', f'values: ["{100000 + step}"]', path.read_text(), count=1)
    path.write_text(text)
    git(root, "add", "-A")
    git(root, "-c", "commit.gpgsign=false", "commit", "-q", "-m", f"change {step}")


# ---------------------------------------------------------------------------
# The server


class _Serve:
    def __init__(self, repo: Path, state: Path, key: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "serve", "--repo", str(repo), "--state", str(state),
             "--key", str(key), "--listen", "127.0.0.1:0", "--poll-interval", "60s"],
            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        self.url = ""
        while not self.url and time.monotonic() < deadline and self.proc.poll() is None:
            for line in list(self.lines):
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
            time.sleep(0.05)
        if not self.url:
            self.stop()
            raise RuntimeError("palisade serve did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _wait_new(client: httpx.Client, url: str, etag: str | None, timeout: float) -> tuple[str, int]:
    """Long-poll until the index's ETag differs from `etag`; (new etag, version)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wait = min(300.0, max(0.5, deadline - time.monotonic()))
        r = client.get(f"{url}/v1/index", params={"wait": f"{wait:.1f}"},
                       headers={"If-None-Match": etag} if etag else {}, timeout=wait + 30)
        if r.status_code == 200:
            return r.headers["etag"], int(json.loads(r.content)["version"])
    raise TimeoutError(f"nothing new was published within {timeout:.0f} s")


def latency(size: int, commits: int, budget: float, work: Path) -> dict[str, Any]:
    repo, state = work / f"repo-{size}", work / f"state-{size}"
    generate(repo, size)
    key = work / "keys" / "palisade.key"
    srv = _Serve(repo, state, key)
    samples: list[float] = []
    try:
        with httpx.Client() as client:
            t0 = time.monotonic()
            etag, version = _wait_new(client, srv.url, None, 600)
            first = time.monotonic() - t0
            started = time.monotonic()
            for step in range(commits):
                if time.monotonic() - started > budget:
                    break
                _change(repo, step)
                c0 = time.perf_counter()
                new_etag, new_version = _wait_new(client, srv.url, etag, 120)
                # A re-sign can also change the ETag; only a new version is a publish.
                while new_version == version:
                    etag = new_etag
                    new_etag, new_version = _wait_new(client, srv.url, etag, 120)
                samples.append(time.perf_counter() - c0)
                etag, version = new_etag, new_version
            passes = _pass_stats(client, srv.url)
    finally:
        srv.stop()
        if any("Traceback" in line for line in srv.lines):
            print("".join(srv.lines), file=sys.stderr)
    samples.sort()
    med = statistics.median(samples) * 1000
    p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))] * 1000
    return {"policies": size, "commits": len(samples), "first_publish_s": round(first, 3),
            "median_ms": round(med, 1), "p99_ms": round(p99, 1), "max_ms": round(samples[-1] * 1000, 1),
            "reconcile_passes": passes[0], "reconcile_pass_mean_ms": round(passes[1] * 1000, 1),
            "target_median_ms": TARGETS_MS.get(size)}


def _pass_stats(client: httpx.Client, url: str) -> tuple[int, float]:
    """(count, mean seconds) of the server's reconcile passes, from its /metrics: how much of the latency
    is the pass itself (validate, render, sign, publish) rather than watching and serving."""
    text = client.get(f"{url}/metrics").text
    count = float(re.search(r"^palisade_reconcile_duration_seconds_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"^palisade_reconcile_duration_seconds_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return int(count), total / count if count else 0.0


# ---------------------------------------------------------------------------
# Index request rate


async def _client_conns(host: str, port: int, etag: str, conns: int, duration: float) -> tuple[int, int, int]:
    """`conns` keep-alive connections, each sending GET /v1/index with If-None-Match in a loop."""
    request = (f"GET /v1/index HTTP/1.1\r\nHost: {host}:{port}\r\nIf-None-Match: {etag}\r\n\r\n").encode()
    ok = other = errors = 0
    stop_at = time.monotonic() + duration

    async def one() -> None:
        nonlocal ok, other, errors
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors += 1
            return
        try:
            while time.monotonic() < stop_at:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                m = re.search(rb"(?i)content-length: *([0-9]+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                if status == 304:
                    ok += 1
                else:
                    other += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return ok, other, errors


def _client_process(args: tuple[str, int, str, int, float]) -> tuple[int, int, int]:
    return asyncio.run(_client_conns(*args))


def request_rate(work: Path, clients: int, duration: float, processes: int) -> dict[str, Any]:
    repo, state = work / "repo-rate", work / "state-rate"
    generate(repo, 10)
    srv = _Serve(repo, state, work / "keys" / "palisade.key")
    try:
        with httpx.Client() as client:
            etag, _ = _wait_new(client, srv.url, None, 120)
        host, port = srv.url.removeprefix("http://").rsplit(":", 1)
        per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes) as pool:
            t0 = time.perf_counter()
            results = pool.map(_client_process, [(host, int(port), etag, n, duration) for n in per])
            elapsed = time.perf_counter() - t0
    finally:
        srv.stop()
    ok = sum(r[0] for r in results)
    other = sum(r[1] for r in results)
    errors = sum(r[2] for r in results)
    rps = ok / duration
    return {"clients": clients, "client_processes": processes, "duration_s": duration,
            "wall_s": round(elapsed, 2), "responses_304": ok, "other_responses": other, "errors": errors,
            "requests_per_s": round(rps, 1), "target_requests_per_s": TARGET_RPS}


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000", help="policy counts (comma-separated)")
    ap.add_argument("--commits", type=int, default=50, help="commits per size (default 50)")
    ap.add_argument("--budget", type=float, default=180.0, help="seconds of commits per size at most (default 180)")
    ap.add_argument("--clients", type=int, default=200, help="concurrent index clients (default 200)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of index requests (default 10)")
    ap.add_argument("--client-processes", type=int, default=2, help="processes the clients run in (default 2)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-rate", action="store_true")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from reconciler.keys import generate as keygen

    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with tempfile.TemporaryDirectory(prefix="palisade-bench-") as tmp:
        work = Path(tmp)
        keygen(work / "keys")
        if not args.skip_latency:
            out["latency"] = []
            for size in (int(s) for s in args.sizes.split(",")):
                r = latency(size, args.commits, args.budget, work)
                out["latency"].append(r)
                target = r["target_median_ms"]
                verdict = "" if target is None else (
                    f" (target < {target:.0f} ms: {'met' if r['median_ms'] < target else 'MISSED'})")
                print(f"commit → published bundle, {size:>5} policies: median {r['median_ms']:.0f} ms, "
                      f"p99 {r['p99_ms']:.0f} ms over {r['commits']} commits{verdict}; "
                      f"mean reconcile pass {r['reconcile_pass_mean_ms']:.0f} ms; "
                      f"first publish {r['first_publish_s']:.1f} s", flush=True)
        if not args.skip_rate:
            r = request_rate(work, args.clients, args.duration, args.client_processes)
            out["index_rate"] = r
            print(f"index requests with If-None-Match (304), {r['clients']} clients: "
                  f"{r['requests_per_s']:.0f} req/s (target >= {TARGET_RPS:.0f}: "
                  f"{'met' if r['requests_per_s'] >= TARGET_RPS else 'MISSED'}); "
                  f"{r['other_responses']} non-304, {r['errors']} connection errors", flush=True)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / "reconcile.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(out)  # --skip-* keeps the other half of an earlier run
    path.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: load time of every console page (`reconciler.console.app.PAGES`) with 1,000 sensors and 200 units.

The state: a generated policy repository (bench/_genrepo.py: example-repo/ plus 50 packs of 20
TracingPolicies and 150 rules, so 200 generated units besides example-repo's own) reconciled by the real
`palisade serve` (subprocess, loopback); 1,000 sensors' heartbeats written into its fleet database with the
fleet table's own API (labels spread over the repository's groups, a few refused policies, some stale
sensors and observations with kills), then one more commit so the ledger holds history.

Measured over real HTTP (one keep-alive client) while the fleet keeps reporting (`--heartbeat-rate`
heartbeats a second posted to the server, 100 by default: a thousand agents every ten seconds): each
page's full document, `--requests` times after a warm-up, median and p99 in milliseconds, and the same
for its `?fragment=1` (what a live update fetches).
A page whose path has parameters (`/ui/units/{name}`) is measured at the first link to it found on the
other pages. Target: every page's median < 300 ms. Writes bench/results/console.json.

    .venv/bin/python bench/console.py [--sensors 1000] [--requests 30]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _genrepo import PER_PACK, generate, git  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "console.json"
TARGET_MS = 300.0
PACKS, RULES = 50, 150


def _beat(i: int, version: int) -> Any:
    """Sensor i's heartbeat, as its agent would send it."""
    from wire.heartbeat import Heartbeat, LoadStatus, Observation, PolicyReport

    role = ("web", "db", "canary", "batch")[i % 4]
    policies = tuple(PolicyReport(f"gen-policy-{(i + k) % (PACKS * PER_PACK):04d}", LoadStatus.LOADED)
                     for k in range(3))
    if i % 97 == 0:
        policies += (PolicyReport("web-exec-allowlist", LoadStatus.REFUSED, reason="verifier rejected"),)
    obs = tuple(Observation(f"gen-policy-{i % (PACKS * PER_PACK):04d}", f"/usr/bin/tool{i % 40}", 1 + i % 7,
                            workload=f"shop/{role}", action="KPROBE_ACTION_SIGKILL", acted=i % 3 == 0)
                for _ in range(1 if i % 5 else 2))
    return Heartbeat(f"node-{i:04d}", {"role": role, "zone": f"z{i % 3}"}, version, "fleet", policies=policies,
                     observations=obs)


def _fill_fleet(state: Path, sensors: int, version: int) -> None:
    """`sensors` heartbeats, as agents would have sent them, through the fleet table's API."""
    from reconciler.state.fleet import Fleet

    now = _dt.datetime.now(_dt.UTC)
    fleet = Fleet.open(state)
    try:
        for i in range(sensors):
            seen = now - _dt.timedelta(minutes=10 if i % 50 == 0 else 0, seconds=i % 20)
            fleet.record_heartbeat(_beat(i, version), now=seen)
    finally:
        fleet.close()


class _Heartbeats(threading.Thread):
    """The fleet reporting while pages load: `rate` heartbeats a second over the live sensors, as a thousand
    agents heartbeating every ten seconds do (through the server's HTTP endpoint, as agents send them)."""

    def __init__(self, url: str, sensors: int, version: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.sensors, self.version, self.rate = url, sensors, version, rate
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        from wire.heartbeat import encode

        if self.rate <= 0:
            return
        with httpx.Client(timeout=30) as c:
            i, t0 = 0, time.monotonic()
            while not self.stop.is_set():
                if i % 50 == 0:
                    i += 1  # the stale ones stay stale
                    continue
                beat = _beat(i % self.sensors, self.version)
                c.post(f"{self.url}/v1/agents/{beat.sensor}/heartbeat", json=encode(beat))
                self.sent += 1
                i += 1
                ahead = t0 + self.sent / self.rate - time.monotonic()
                if ahead > 0:
                    self.stop.wait(ahead)


def _measure(client: httpx.Client, url: str, n: int) -> dict[str, Any]:
    times = []
    size = 0
    for i in range(n + 2):
        t0 = time.perf_counter()
        r = client.get(url)
        dt = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
        size = len(r.content)
        if i >= 2:  # two warm-up loads (first bundle parse, caches)
            times.append(dt)
    times.sort()
    return {"median_ms": round(statistics.median(times), 1),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
            "max_ms": round(times[-1], 1), "bytes": size}


def _concrete(path: str, client: httpx.Client, base: str, plain: list[str]) -> str | None:
    """A URL for a page path with parameters: the first link to it on the parameterless pages."""
    pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/?#]+", re.escape(path)) + "$")
    for p in plain:
        for href in re.findall(r'href="([^"]+)"', client.get(base + p).text):
            bare = href.split("?")[0].split("#")[0]
            if pattern.match(bare):
                return href.replace("&amp;", "&")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--heartbeat-rate", type=float, default=100.0,
                    help="heartbeats per second arriving while pages load (default 100: 1,000 agents every 10 s)")
    args = ap.parse_args()

    from reconciler.console.app import PAGES
    from reconciler.keys import generate as keygen
    from support.serve import Serve

    with tempfile.TemporaryDirectory(prefix="palisade-bench-console-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        generate(repo, PACKS * PER_PACK, RULES)
        keys = keygen(work / "keys")
        t0 = time.perf_counter()
        srv = Serve(f"file://{repo}", work / "state", keys.signing_key_path, "--poll-interval", "2s",
                    start_timeout=300)
        try:
            with httpx.Client(timeout=120) as client:
                deadline = time.monotonic() + 300
                while client.get(f"{srv.url}/v1/index").status_code != 200:
                    if time.monotonic() > deadline:
                        raise RuntimeError("nothing published:\n" + srv.log)
                    time.sleep(0.1)
                first_publish = time.perf_counter() - t0
                # a second accepted commit, so the ledger and the rollout have a history
                (repo / "rules" / "gen-rule-000.yaml").write_text(
                    (repo / "rules" / "gen-rule-000.yaml").read_text().replace("reason: generated", "reason: bench"))
                git(repo, "-c", "commit.gpgsign=false", "commit", "-qam", "bench: a second commit")
                while int(client.get(f"{srv.url}/v1/index").json()["version"]) < 2:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the second commit was not published:\n" + srv.log)
                    time.sleep(0.2)
                _fill_fleet(work / "state", args.sensors, 2)
                beats = _Heartbeats(srv.url, args.sensors, 2, args.heartbeat_rate)
                beats.start()
                t_measure = time.monotonic()
                plain = [p.path for p in PAGES if "{" not in p.path]
                pages: list[dict[str, Any]] = []
                for p in PAGES:
                    url = p.path if "{" not in p.path else _concrete(p.path, client, srv.url, plain)
                    if url is None:
                        pages.append({"path": p.path, "name": p.name, "skipped": "no link to it on any page"})
                        continue
                    full = _measure(client, srv.url + url, args.requests)
                    sep = "&" if "?" in url else "?"
                    frag = _measure(client, srv.url + url + sep + "fragment=1", args.requests)
                    pages.append({"path": p.path, "url": url, "name": p.name, **full,
                                  "fragment_median_ms": frag["median_ms"], "fragment_p99_ms": frag["p99_ms"]})
                    print(f"{url:40s} median {full['median_ms']:7.1f} ms  p99 {full['p99_ms']:7.1f} ms  "
                          f"({full['bytes'] / 1024:.0f} KiB; fragment median {frag['median_ms']:.1f} ms)",
                          flush=True)
                beats.stop.set()
                beats.join(30)
                measured_rate = beats.sent / (time.monotonic() - t_measure)
        finally:
            srv.stop()
    measured = [p for p in pages if "median_ms" in p]
    worst = max((p["median_ms"] for p in measured), default=0.0)
    doc = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
           "sensors": args.sensors, "generated_units": PACKS + RULES, "policies": PACKS * PER_PACK,
           "requests_per_page": args.requests, "first_publish_s": round(first_publish, 2),
           "heartbeats_per_s_during": round(measured_rate, 1),
           "target_median_ms": TARGET_MS, "worst_median_ms": worst, "met": worst < TARGET_MS, "pages": pages}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"worst median {worst:.1f} ms (target < {TARGET_MS:.0f} ms): {'met' if doc['met'] else 'NOT met'}; "
          f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if doc["met"] else 1


if __name__ == "__main__":
    sys.exit(main())

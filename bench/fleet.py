"""Benchmark: 1,000 simulated agents long-polling one server; time for all to hold a new version.

Every simulated agent is the real agent code — `agent.runner.Agent` with its
HTTP client, index and bundle verification (Ed25519, digests, anti-replay),
selection and apply — with the engine off (`NullEnforcer`) and its state kept in
memory. Many agents share one process and one event loop (and one HTTP
connection pool); the agents run in `--procs` worker processes, the server in a
process of its own so its CPU time can be read from /proc. Real HTTP on
loopback, a real reconciler on a real git repository.

Measured: time from the publish (the moment the server starts serving the new
index) until every agent has applied the new version, the server's CPU seconds during
that window and while the fleet only waits on its long-polls, the spread of
when agents got the new index and when they had applied it, and the count of
agents whose heartbeats the server stored. Writes bench/results/fleet.json.

    .venv/bin/python bench/fleet.py [--agents 1000] [--procs 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

RESULTS = ROOT / "bench" / "results" / "fleet.json"
DEADLINE = 120.0  # seconds for one round before the benchmark gives up


# ---------------------------------------------------------------- the server process


def serve(store: str, port: int) -> None:
    """The reconciler's HTTP API over `store`; SIGUSR1 makes it re-read the index at once."""
    from reconciler.serve.listen import run
    from reconciler.serve.server import create_app

    app = create_app(Path(store))
    signal.signal(signal.SIGUSR1, lambda *_: app.state.publication.refresh())
    # tell the benchmark when each index starts being served: the reference time of a publish
    app.state.publication.on_change(lambda snap: print(f"serving {snap.index.version} {time.time()}", flush=True))
    run(app, "127.0.0.1", port)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the agents


def worker(first: int, count: int, url: str, pubkey: str, q: Any) -> None:
    if os.environ.get("FLEET_PROFILE"):
        import cProfile

        cProfile.runctx("asyncio.run(_agents(first, count, url, pubkey, q))", globals(), locals(),
                        f"/tmp/fleet-{first}.prof")
        return
    asyncio.run(_agents(first, count, url, pubkey, q))


async def _agents(first: int, count: int, url: str, pubkey: str, q: Any) -> None:
    import httpx

    from agent.apply import NullEnforcer
    from agent.client import Client
    from agent.config import AgentConfig, Intervals
    from agent.runner import Agent
    from reconciler.keys import load_public_key

    class TimedClient(Client):
        """Remembers when the last index answer arrived (splits server wake-up from agent work)."""

        got_index = 0.0

        async def index(self, etag: str | None = None, wait: float | None = None) -> Any:
            reply = await super().index(etag, wait)
            self.got_index = time.time()
            return reply

    key = load_public_key(Path(pubkey))
    # One HTTP client per agent, as on real nodes (httpcore's pool scans every connection on each
    # request, so one shared pool of a thousand connections would measure the pool, not the agents);
    # they share one TLS context, which is what costs memory and time to build.
    tls = ssl.create_default_context()
    clients: list[httpx.AsyncClient] = []
    stop = asyncio.Event()

    async def one(i: int) -> None:
        labels = (("role", "web"),) if i % 3 == 0 else (("role", "db"),) if i % 3 == 1 else ()
        cfg = AgentConfig(server=url, pubkeys=(), sensor_id=f"sim-{i:05d}", state=Path("/nonexistent"),
                          labels=labels, intervals=Intervals(wait=60, retry_max=2), engine=False)
        http = httpx.AsyncClient(verify=tls, timeout=httpx.Timeout(90.0, connect=20.0),
                                 limits=httpx.Limits(max_connections=2))
        clients.append(http)
        client = TimedClient(url, http=http, retry_max=2)
        agent = Agent(cfg, enforcer=NullEnforcer(), client=client, pubkeys=[key], persist=False)
        await asyncio.sleep(i * 0.002)  # a fleet does not start in the same millisecond
        while not stop.is_set():
            try:
                result = await agent.sync_once(cfg.intervals.wait)
            except Exception as e:
                q.put(("error", i, repr(e)[:200], time.time()))
                await asyncio.sleep(0.5)
                continue
            if result.outcome == "applied":
                q.put(("applied", i, result.version, time.time()))
                q.put(("index", i, result.version, client.got_index))
                await agent.send_heartbeat()
            elif result.outcome == "refused":
                q.put(("error", i, result.reason, time.time()))
                await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(one(first + i)) for i in range(count)]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for http in clients:
        await http.aclose()


# ---------------------------------------------------------------- the run


_TIMES: list[float] = []
_INDEX_TIMES: list[float] = []


def _collect(q: Any, agents: int, version: int, deadline: float) -> tuple[float | None, list[str]]:
    """Seconds-since-epoch when the last agent applied `version`, and the errors seen meanwhile."""
    have: set[int] = set()
    last = None
    errors: list[str] = []
    while len(have) < agents and time.time() < deadline:
        try:
            kind, i, value, t = q.get(timeout=1)
        except Exception:
            continue
        if kind == "applied" and value == version:
            have.add(i)
            last = t
            _TIMES.append(t)
        elif kind == "index" and value == version:
            _INDEX_TIMES.append(t)
        elif kind == "error":
            errors.append(f"sim-{i:05d}: {value}")
    return (last if len(have) == agents else None), errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from reconciler import keys
    from reconciler.publish.reconcile import Reconciler
    from reconciler.state.fleet import Fleet
    from support.policyrepo import PolicyRepo

    tmp = Path(tempfile.mkdtemp(prefix="palisade-fleet-"))
    repo = PolicyRepo.create(tmp)
    pair = keys.generate(tmp / "keys")
    rec = Reconciler(str(repo.path), tmp / "state", keys.load_signing_key(pair.signing_key_path))
    rec.run_once()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(rec.store.root), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    served: dict[int, float] = {}

    def read_served() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            if line.startswith("serving "):
                _, v, t = line.split()
                served.setdefault(int(v), float(t))

    threading.Thread(target=read_served, daemon=True).start()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = []
    try:
        import httpx

        for _ in range(100):
            try:
                httpx.get(url + "/v1/index", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        per = -(-args.agents // args.procs)
        for p in range(args.procs):
            first, count = p * per, min(per, args.agents - p * per)
            proc = ctx.Process(target=worker, args=(first, count, url, str(pair.public_key_path), q))
            proc.start()
            procs.append(proc)
        t0 = time.time()
        done, errors = _collect(q, args.agents, 1, t0 + DEADLINE)
        if done is None:
            print(f"not every agent got v1 within {DEADLINE}s; errors: {errors[:5]}", file=sys.stderr)
            return 1
        start_s = done - t0
        time.sleep(3)  # heartbeats land; the fleet settles into its long-polls
        idle_cpu0, idle_t0 = cpu_seconds(server.pid), time.time()
        time.sleep(5)
        idle_cpu = (cpu_seconds(server.pid) - idle_cpu0) / (time.time() - idle_t0)

        rounds = []
        for r in range(args.rounds):
            repo.change(f"round {r}", [("packs/web-lockdown/pack.yaml", "owners: [",
                                        f"owners: [round{r}@example.com, ")])
            t_rec = time.time()
            cpu0 = cpu_seconds(server.pid)
            out = rec.run_once()
            assert out.published, out
            version = out.published[-1]
            reconcile_s = time.time() - t_rec
            os.kill(server.pid, signal.SIGUSR1)  # `palisade serve` refreshes at the end of a pass, too
            # the publish: the moment the server starts serving the new index (it may have seen the
            # file before the pass returned: it watches the store)
            while version not in served and time.time() < t_rec + DEADLINE:
                time.sleep(0.01)
            t_pub = served[version]
            done, errors = _collect(q, args.agents, version, t_pub + DEADLINE)
            if done is None:
                print(f"round {r}: not every agent got v{version} within {DEADLINE}s; {errors[:5]}",
                      file=sys.stderr)
                return 1
            ts = sorted(x - t_pub for x in _TIMES[-args.agents:])
            spread = {f"p{int(f * 100)}": round(ts[max(0, int(len(ts) * f) - 1)], 3) for f in (0.1, 0.5, 0.9, 1.0)}
            time.sleep(0.5)  # the last "index" notes
            ti = sorted(x - t_pub for x in _INDEX_TIMES[-args.agents:])
            index_spread = {f"p{int(f * 100)}": round(ti[max(0, int(len(ti) * f) - 1)], 3)
                            for f in (0.1, 0.5, 0.9, 1.0)}
            print("index answered", index_spread, "applied", spread)
            time.sleep(1)
            rounds.append({"version": version, "seconds": done - t_pub,
                           "server_cpu_seconds": cpu_seconds(server.pid) - cpu0, "errors": len(errors),
                           "reconcile_pass_seconds": round(reconcile_s, 3),
                           "per_agent_seconds": spread, "index_answered_seconds": index_spread})
            print(f"round {r}: {args.agents} agents hold v{version} {done - t_pub:.2f} s after the publish; "
                  f"server CPU {rounds[-1]['server_cpu_seconds']:.2f} s")
        stored = len(Fleet.open(tmp / "state").agents())
    finally:
        for proc in procs:
            if proc.pid:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(10)
        server.terminate()
        server.wait(10)
        rec.close()

    secs = [r["seconds"] for r in rounds]
    result: dict[str, Any] = {
        "agents": args.agents,
        "worker_processes": args.procs,
        "initial_sync_seconds": round(start_s, 3),
        "publish_to_all_applied_seconds": {"median": round(statistics.median(secs), 3), "max": round(max(secs), 3)},
        "server_cpu_seconds_per_publish": round(statistics.median(r["server_cpu_seconds"] for r in rounds), 3),
        "server_cpu_idle_fraction": round(idle_cpu, 4),
        "agents_in_fleet_table": stored,
        "rounds": rounds,
    }
    print(f"{args.agents} agents: all hold a new version {result['publish_to_all_applied_seconds']['median']} s "
          f"(median of {args.rounds}) after the publish; server CPU {result['server_cpu_seconds_per_publish']} s "
          f"per publish, {idle_cpu * 100:.1f}% of a core while {args.agents} long-polls wait; "
          f"{stored} agents in the fleet table")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())

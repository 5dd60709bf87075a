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

`--static`: the agents take index and bundles from Debian's nginx serving a `palisade publish`
mirror (no long-poll: each polls every `--poll` seconds, jittered, and gets 304s on its ETag) and
send a heartbeat every 15 s to the reconciler, through the agent's own `pull_loop` and
`heartbeat_loop`. Measured: the heartbeats per second the reconciler accepts (and the failures),
the reconciler's and nginx's CPU while the fleet runs, the simulation's own CPU (on a small machine
it is the agents that saturate it), and the time from the mirror's new index to every agent holding
it. Writes bench/results/fleet_static.json.

    .venv/bin/python bench/fleet.py [--agents 1000] [--procs 2] [--rounds 3]
    .venv/bin/python bench/fleet.py --static [--agents 10000] [--procs 10] [--poll 5]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Callable
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class Static:
    """The static bundle source of `--static`: its base URL, the poll and heartbeat intervals."""

    url: str
    poll: float
    heartbeat: float = 15.0


def worker(first: int, count: int, url: str, pubkey: str, q: Any, static: Static | None = None) -> None:
    import logging

    logging.disable(logging.WARNING)  # a loaded fleet's retries are counted (errors, heartbeats), not printed
    if os.environ.get("FLEET_PROFILE"):
        import cProfile

        cProfile.runctx("asyncio.run(_agents(first, count, url, pubkey, q, static))", globals(), locals(),
                        f"/tmp/fleet-{first}.prof")
        return
    asyncio.run(_agents(first, count, url, pubkey, q, static))


async def _agents(first: int, count: int, url: str, pubkey: str, q: Any, static: Static | None) -> None:
    import httpx

    from agent.apply import NullEnforcer
    from agent.client import Client
    from agent.config import AgentConfig, BundleSource, Intervals
    from agent.runner import Agent
    from reconciler.keys import load_public_key

    class TimedClient(Client):
        """Remembers when the last index answer arrived (splits server wake-up from agent work)."""

        got_index = 0.0

        async def index(self, etag: str | None = None, wait: float | None = None,
                        last_modified: str | None = None) -> Any:
            reply = await super().index(etag, wait, last_modified)
            self.got_index = time.time()
            return reply

    beats = {"ok": 0, "failed": 0}

    class SimAgent(Agent):
        """Reports each apply (and refusal) to the benchmark and counts its heartbeats."""

        n = 0

        async def sync_once(self, wait: float | None = None) -> Any:
            try:
                result = await super().sync_once(wait)
            except Exception as e:
                q.put(("error", self.n, repr(e)[:200], time.time()))
                raise
            if result.outcome == "applied":
                q.put(("applied", self.n, result.version, time.time()))
                assert isinstance(self.client, TimedClient)
                q.put(("index", self.n, result.version, self.client.got_index))
            elif result.outcome == "refused":
                q.put(("error", self.n, result.reason, time.time()))
            return result

        async def send_heartbeat(self) -> bool:
            ok = await super().send_heartbeat()
            beats["ok" if ok else "failed"] += 1
            return ok

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
        if static is not None:
            cfg = replace(cfg, bundles=BundleSource(url=static.url, poll=static.poll),
                          intervals=replace(cfg.intervals, heartbeat=static.heartbeat))
        client = TimedClient(url, http=http, retry_max=2, source=cfg.source_url, long_poll=cfg.long_poll)
        agent = SimAgent(cfg, enforcer=NullEnforcer(), client=client, pubkeys=[key], persist=False)
        agent.n = i
        if static is not None:
            # spread over one heartbeat interval, as a fleet's nodes boot at different times; then the
            # agent's own loops: polling with jitter and heartbeats every interval (and after an apply)
            await asyncio.sleep((i - first) * static.heartbeat / count)
            await asyncio.gather(agent.pull_loop(stop), agent.heartbeat_loop(stop))
            return
        await asyncio.sleep(i * 0.002)  # a fleet does not start in the same millisecond
        while not stop.is_set():
            try:
                result = await agent.sync_once(cfg.intervals.wait)
            except Exception:
                await asyncio.sleep(0.5)
                continue
            if result.outcome == "applied":
                await agent.send_heartbeat()
            elif result.outcome == "refused":
                await asyncio.sleep(0.5)

    async def report() -> None:
        """The heartbeat counts every second (per message, 700 heartbeats a second would flood the queue)."""
        while True:
            await asyncio.sleep(1)
            q.put(("beats", first, (beats["ok"], beats["failed"]), time.time()))

    tasks = [asyncio.create_task(one(first + i)) for i in range(count)] + [asyncio.create_task(report())]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for http in clients:
        await http.aclose()


class _Conn:
    """One keep-alive HTTP/1.1 connection of a lite agent (asyncio streams: no client library to pay for)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):  # a keep-alive connection the server closed meanwhile: once more on a new one
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                for k, v in (headers or {}).items():
                    head += f"{k}: {v}\r\n"
                if body or method == "POST":
                    head += f"Content-Length: {len(body)}\r\n"
                self.writer.write(head.encode() + b"\r\n" + body)
                raw = await self.reader.readuntil(b"\r\n\r\n")
                lines = raw.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                data = await self.reader.readexactly(int(hdrs.get("content-length", "0")))
                if hdrs.get("connection", "").lower() == "close":
                    self.close()
                return status, hdrs, data
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def lite_worker(first: int, count: int, url: str, pubkey: str, q: Any, static: Static) -> None:
    asyncio.run(_lite_agents(first, count, url, pubkey, q, static))


async def _lite_agents(first: int, count: int, url: str, pubkey: str, q: Any, static: Static) -> None:
    """`--lite`: agents that do over real HTTP what a node does against a static source — poll the index
    with If-None-Match every `poll` s (jittered), fetch the bundle the new index pins, heartbeat every
    15 s and right after an apply — with a raw keep-alive connection each instead of the agent's client.
    The bytes every agent gets are verified with the real code (index and bundle signatures, digests),
    once per process for identical bytes: ten thousand agents in two processes measure the servers,
    not ten thousand signature checks of the same bytes."""
    import hashlib
    import random
    from urllib.parse import urlsplit

    from agent.select import select, stage_of
    from reconciler.keys import load_public_key
    from wire.bundle import verify_bundle, verify_index
    from wire.heartbeat import LoadStatus, PolicyReport, encode_policy

    key = load_public_key(Path(pubkey))
    src, rec = urlsplit(static.url), urlsplit(url)
    base = src.path.rstrip("/")
    verified: dict[str, Any] = {}  # sha256 of bytes → what verifying them gave

    def once(data: bytes, check: Callable[[bytes], Any]) -> Any:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in verified:
            verified[digest] = check(data)
        return verified[digest]

    def holding(bundle: Any, sensor: str, labels: dict[str, str]) -> dict[str, Any]:
        """What a node reports once it holds `bundle`: its stage, commit and a report per selected policy."""
        reports = [encode_policy(PolicyReport(d.name, LoadStatus.LOADED, d.state, None, d.origin, d.version))
                   for d in select(bundle, sensor, labels)]
        return {"stage": stage_of(bundle, sensor, labels), "commit": bundle.commit, "policies": reports}

    beats = {"ok": 0, "failed": 0}
    stop = asyncio.Event()

    async def one(i: int) -> None:
        web, api = _Conn(src.hostname or "127.0.0.1", src.port or 80), _Conn(rec.hostname or "127.0.0.1",
                                                                             rec.port or 80)
        sensor = f"sim-{i:05d}"
        labels = {"role": "web"} if i % 3 == 0 else {"role": "db"} if i % 3 == 1 else {}
        etag: str | None = None
        version = 0
        held: dict[str, Any] = {"stage": None, "commit": None, "policies": []}
        rng = random.Random(i)

        async def heartbeat() -> None:
            doc = {"sensor": sensor, "labels": labels, "version": version or None, **held,
                   "drift": {"detected": 0, "healed": 0, "unhealed": 0, "findings": []},
                   "counters": {"applies": 1 if version else 0, "refusals": 0}}
            body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
            try:
                st, _, _ = await api.request("POST", f"/v1/agents/{sensor}/heartbeat",
                                             {"Content-Type": "application/json"}, body)
                beats["ok" if st == 204 else "failed"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                beats["failed"] += 1

        await asyncio.sleep((i - first) * static.heartbeat / count)  # nodes boot at different times
        applied = asyncio.Event()

        async def pull() -> None:
            """The agent's pull loop: a jittered poll; a new index's pinned bundle fetched and verified."""
            nonlocal etag, version, held
            while not stop.is_set():
                try:
                    st, hdrs, data = await web.request("GET", f"{base}/v1/index",
                                                       {"If-None-Match": etag} if etag else None)
                    if st == 200:
                        index = once(data, lambda b: verify_index(b, [key], min_serial=0, min_version=0))
                        pins = set(index.stages.values())
                        want = pins.pop() if len(pins) == 1 else index.version
                        if want != version:
                            got_index = time.time()
                            bst, _, bdata = await web.request("GET", f"{base}/v1/bundles/{want}")
                            entry = index.entry(want)
                            if bst != 200 or entry is None:
                                raise ValueError(f"bundle v{want}: HTTP {bst}")
                            bundle = once(bdata, lambda b, e=entry: verify_bundle(
                                b, [key], expected_sha256=e.sha256, expected_size=e.size))
                            held = holding(bundle, sensor, labels)
                            version = want
                            q.put(("applied", i, version, time.time()))
                            q.put(("index", i, version, got_index))
                            applied.set()  # report the new version at once, as agents do
                        etag = hdrs.get("etag")
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    q.put(("error", i, repr(e)[:200], time.time()))
                await asyncio.sleep(static.poll * (0.8 + 0.4 * rng.random()))

        async def beat() -> None:
            """The heartbeat loop: every interval, and right after an apply."""
            while not stop.is_set():
                await heartbeat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(applied.wait(), static.heartbeat)
                applied.clear()

        await asyncio.gather(pull(), beat())
        web.close()
        api.close()

    async def report() -> None:
        while True:
            await asyncio.sleep(1)
            q.put(("beats", first, (beats["ok"], beats["failed"]), time.time()))

    tasks = [asyncio.create_task(one(first + i)) for i in range(count)] + [asyncio.create_task(report())]
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- the run


_TIMES: list[float] = []
_INDEX_TIMES: list[float] = []
_BEATS: dict[int, tuple[int, int]] = {}  # worker's first agent → (heartbeats accepted, failed) so far


def _note(q: Any, timeout: float) -> tuple[str, int, Any, float] | None:
    try:
        kind, i, value, t = q.get(timeout=timeout)
    except Exception:
        return None
    if kind == "beats":
        _BEATS[i] = value
    return kind, i, value, t


def _collect(q: Any, agents: int, version: int, deadline: float) -> tuple[float | None, list[str]]:
    """Seconds-since-epoch when the last agent applied `version`, and the errors seen meanwhile."""
    have: set[int] = set()
    last = None
    errors: list[str] = []
    while len(have) < agents and time.time() < deadline:
        note = _note(q, 1)
        if note is None:
            continue
        kind, i, value, t = note
        if kind == "applied" and value == version:
            have.add(i)
            last = t
            _TIMES.append(t)
        elif kind == "index" and value == version:
            _INDEX_TIMES.append(t)
        elif kind == "error":
            errors.append(f"sim-{i:05d}: {value}")
    return (last if len(have) == agents else None), errors


def _drain(q: Any, seconds: float) -> None:
    """Keep reading the agents' notes (heartbeat counts among them) for `seconds`."""
    until = time.time() + seconds
    while time.time() < until:
        _note(q, max(0.01, min(1.0, until - time.time())))


def _beats() -> tuple[int, int]:
    return sum(ok for ok, _ in _BEATS.values()), sum(bad for _, bad in _BEATS.values())


def _spread(times: list[float], t0: float) -> dict[str, float]:
    ts = sorted(x - t0 for x in times)
    return {f"p{int(f * 100)}": round(ts[max(0, int(len(ts) * f) - 1)], 3) for f in (0.1, 0.5, 0.9, 1.0)}


def _tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its children (nginx's master and worker)."""
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += cpu_seconds(int(child))
    return total


@dataclass(frozen=True)
class World:
    """What both modes run against: a policy repository, its reconciler, `palisade serve`, the agents."""

    tmp: Path
    repo: Any
    rec: Any
    pubkey: Path
    server: subprocess.Popen[str]
    url: str
    served: dict[int, float]
    q: Any
    procs: list[Any]

    def start_agents(self, agents: int, nprocs: int, static: Static | None, lite: bool = False) -> None:
        ctx = mp.get_context("spawn")
        per = -(-agents // nprocs)
        for p in range(nprocs):
            first, count = p * per, min(per, agents - p * per)
            proc = ctx.Process(target=lite_worker if lite else worker,
                               args=(first, count, self.url, str(self.pubkey), self.q, static))
            proc.start()
            self.procs.append(proc)

    def stop_agents(self) -> None:
        for proc in self.procs:
            if proc.pid and proc.exitcode is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            proc.join(10)

    def agents_cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def publish(self, r: int) -> tuple[int, float]:
        """A change to the policy repository, reconciled: the new version and how long the pass took."""
        self.repo.change(f"round {r}", [("packs/web-lockdown/pack.yaml", "owners: [",
                                         f"owners: [round{r}@example.com, ")])
        t_rec = time.time()
        out = self.rec.run_once()
        assert out.published, out
        return out.published[-1], time.time() - t_rec


def _open_world() -> World:
    from reconciler import keys
    from reconciler.publish.reconcile import Reconciler
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
    import httpx

    for _ in range(100):
        try:
            httpx.get(url + "/v1/index", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return World(tmp, repo, rec, pair.public_key_path, server, url, served, mp.get_context("spawn").Queue(), [])


def _close_world(w: World) -> None:
    w.stop_agents()
    w.server.terminate()
    w.server.wait(10)
    w.rec.close()


def long_poll(w: World, args: argparse.Namespace) -> dict[str, Any] | None:
    """The fleet long-polling `palisade serve` for index and bundles."""
    from reconciler.state.fleet import Fleet

    w.start_agents(args.agents, args.procs, None)
    t0 = time.time()
    done, errors = _collect(w.q, args.agents, 1, t0 + DEADLINE)
    if done is None:
        print(f"not every agent got v1 within {DEADLINE}s; errors: {errors[:5]}", file=sys.stderr)
        return None
    start_s = done - t0
    _drain(w.q, 3)  # heartbeats land; the fleet settles into its long-polls
    idle_cpu0, idle_t0 = cpu_seconds(w.server.pid), time.time()
    _drain(w.q, 5)
    idle_cpu = (cpu_seconds(w.server.pid) - idle_cpu0) / (time.time() - idle_t0)

    rounds = []
    for r in range(args.rounds):
        cpu0 = cpu_seconds(w.server.pid)
        version, reconcile_s = w.publish(r)
        os.kill(w.server.pid, signal.SIGUSR1)  # `palisade serve` refreshes at the end of a pass, too
        # the publish: the moment the server starts serving the new index (it may have seen the
        # file before the pass returned: it watches the store)
        t_wait = time.time()
        while version not in w.served and time.time() < t_wait + DEADLINE:
            time.sleep(0.01)
        t_pub = w.served[version]
        done, errors = _collect(w.q, args.agents, version, t_pub + DEADLINE)
        if done is None:
            print(f"round {r}: not every agent got v{version} within {DEADLINE}s; {errors[:5]}", file=sys.stderr)
            return None
        spread = _spread(_TIMES[-args.agents:], t_pub)
        _drain(w.q, 0.5)  # the last "index" notes
        index_spread = _spread(_INDEX_TIMES[-args.agents:], t_pub)
        print("index answered", index_spread, "applied", spread)
        _drain(w.q, 1)
        rounds.append({"version": version, "seconds": done - t_pub,
                       "server_cpu_seconds": cpu_seconds(w.server.pid) - cpu0, "errors": len(errors),
                       "reconcile_pass_seconds": round(reconcile_s, 3),
                       "per_agent_seconds": spread, "index_answered_seconds": index_spread})
        print(f"round {r}: {args.agents} agents hold v{version} {done - t_pub:.2f} s after the publish; "
              f"server CPU {rounds[-1]['server_cpu_seconds']:.2f} s")
    stored = len(Fleet.open(w.tmp / "state").agents())
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
    return result


def _reported(w: World, agents: int, version: int, deadline: float) -> float | None:
    """When the reconciler's fleet table first had every agent at `version` (what its rollout gates read)."""
    from reconciler.state.fleet import Fleet

    fleet = Fleet.open(w.tmp / "state")
    try:
        while time.time() < deadline:
            _drain(w.q, 0.2)  # keep reading the agents' notes meanwhile
            if sum(1 for a in fleet.agents() if a.version == version) >= agents:
                return time.time()
        return None
    finally:
        fleet.close()


def _nginx(root: Path, prefix: Path, agents: int) -> Any:
    import support.nginx as ngx

    # the tests' nginx takes 256 connections; a fleet keeps one open per agent (within the fd limit)
    ngx._CONF = ngx._CONF.replace("worker_connections 256;", f"worker_connections {agents + 1024};").replace(
        "worker_processes 1;", "worker_processes 1;\nworker_rlimit_nofile 20000;")
    return ngx.Nginx(root, prefix)


def static(w: World, args: argparse.Namespace) -> dict[str, Any] | None:
    """The fleet polling nginx (a `palisade publish` mirror) and sending heartbeats to `palisade serve`."""
    from reconciler.state.fleet import Fleet
    from reconciler.state.mirror import mirror

    site = w.tmp / "mirror"
    mirror(w.rec.store.root, site)
    web = _nginx(site, w.tmp / "nginx", args.agents)
    try:
        w.start_agents(args.agents, args.procs, Static(web.url, args.poll), lite=args.lite)
        t0 = time.time()
        first_deadline = max(DEADLINE, args.agents / 50)  # the starts alone are spread over 15 s
        done, errors = _collect(w.q, args.agents, 1, t0 + first_deadline)
        if done is None:
            print(f"not every agent got v1 within {first_deadline:.0f}s; errors: {errors[:5]}", file=sys.stderr)
            return None
        start_s = done - t0
        _drain(w.q, 20)  # past one heartbeat interval: every agent is in its steady pace
        window = args.window
        ok0, bad0 = _beats()
        rcpu0, ncpu0, acpu0, tw0 = cpu_seconds(w.server.pid), _tree_cpu(web.proc.pid), w.agents_cpu(), time.time()
        _drain(w.q, window)
        ok1, bad1 = _beats()
        span = time.time() - tw0
        steady = {"seconds": round(span, 1), "heartbeats_accepted_per_second": round((ok1 - ok0) / span, 1),
                  "heartbeats_failed": bad1 - bad0,
                  "reconciler_cpu_fraction": round((cpu_seconds(w.server.pid) - rcpu0) / span, 4),
                  "nginx_cpu_fraction": round((_tree_cpu(web.proc.pid) - ncpu0) / span, 4),
                  "agents_cpu_fraction": round((w.agents_cpu() - acpu0) / span, 3),
                  "load_average_1m": os.getloadavg()[0]}
        rec_cpu, agents_cpu = steady["reconciler_cpu_fraction"], steady["agents_cpu_fraction"]
        print(f"steady {span:.0f} s: {steady['heartbeats_accepted_per_second']} heartbeats/s accepted, "
              f"{steady['heartbeats_failed']} failed; reconciler CPU {rec_cpu * 60:.1f} s/min "
              f"({rec_cpu * 100:.1f}% of a core), nginx {steady['nginx_cpu_fraction'] * 100:.1f}%, "
              f"the simulated agents {agents_cpu:.2f} cores (of {os.cpu_count()})")

        rounds = []
        for r in range(args.rounds):
            rcpu0, ncpu0, (ok0, bad0) = cpu_seconds(w.server.pid), _tree_cpu(web.proc.pid), _beats()
            version, reconcile_s = w.publish(r)
            mirror(w.rec.store.root, site)  # what `palisade publish --to` does; the index goes last
            t_pub = (site / "v1" / "index").stat().st_mtime
            done, errors = _collect(w.q, args.agents, version, t_pub + DEADLINE)
            if done is None:
                print(f"round {r}: not every agent got v{version} within {DEADLINE}s; {errors[:5]}",
                      file=sys.stderr)
                return None
            spread = _spread(_TIMES[-args.agents:], t_pub)
            reported = _reported(w, args.agents, version, t_pub + DEADLINE)
            _drain(w.q, 1)
            index_spread = _spread(_INDEX_TIMES[-args.agents:], t_pub)
            ok1, bad1 = _beats()
            rounds.append({"version": version, "seconds": round(done - t_pub, 3), "errors": len(errors),
                           "reconcile_pass_seconds": round(reconcile_s, 3),
                           "reconciler_cpu_seconds": round(cpu_seconds(w.server.pid) - rcpu0, 2),
                           "nginx_cpu_seconds": round(_tree_cpu(web.proc.pid) - ncpu0, 2),
                           "heartbeats_accepted": ok1 - ok0, "heartbeats_failed": bad1 - bad0,
                           "reconciler_knows_all_seconds": None if reported is None else round(reported - t_pub, 3),
                           "per_agent_seconds": spread, "index_answered_seconds": index_spread})
            knows = "never" if reported is None else f"{reported - t_pub:.2f} s"
            print(f"round {r}: {args.agents} agents hold v{version} {done - t_pub:.2f} s after the mirror's "
                  f"new index (the reconciler's fleet table says so after {knows}); index got {index_spread}, "
                  f"applied {spread}")
        log = web.access_log()
        statuses = {code: sum(1 for line in log if line.split()[2:3] == [code]) for code in ("200", "304", "404")}
    finally:
        w.stop_agents()  # before nginx, so that they do not report it gone
        web.stop()
    stored = len(Fleet.open(w.tmp / "state").agents())
    secs = [r["seconds"] for r in rounds]
    result: dict[str, Any] = {
        "agents": args.agents, "worker_processes": args.procs, "poll_seconds": args.poll, "heartbeat_seconds": 15,
        "initial_sync_seconds": round(start_s, 3),
        "publish_to_all_applied_seconds": {"median": round(statistics.median(secs), 3), "max": round(max(secs), 3)},
        "steady": steady, "nginx_requests_by_status": statuses, "agents_in_fleet_table": stored, "rounds": rounds,
    }
    # what the simulation itself costs: on a small machine the agents, not the reconciler, are the limit
    per_agent = steady["agents_cpu_fraction"] / args.agents
    result["simulation_cores_per_1000_agents"] = round(per_agent * 1000, 3)
    if args.agents < 10000:
        print(f"why not 10,000: the simulated agents cost {per_agent * 1000:.2f} cores per 1,000 at "
              f"poll={args.poll:g} s "
              f"(their HTTP and verification in Python); 10,000 would need ~{per_agent * 10000:.1f} of this "
              f"machine's {os.cpu_count()} cores besides the reconciler and nginx")
    print(f"{args.agents} agents ({args.procs} processes) polling nginx every {args.poll:g} s: all hold a new "
          f"version {result['publish_to_all_applied_seconds']['median']} s after the publish (median of "
          f"{args.rounds}); {steady['heartbeats_accepted_per_second']} heartbeats/s accepted "
          f"({steady['heartbeats_failed']} failed), reconciler CPU {steady['reconciler_cpu_fraction'] * 60:.1f} s/min, "
          f"nginx {steady['nginx_cpu_fraction'] * 100:.1f}% of a core; nginx answered {statuses}; "
          f"{stored} agents in the fleet table")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--static", action="store_true", help="bundles from nginx, heartbeats to the reconciler")
    ap.add_argument("--agents", type=int, default=None, help="default 1000, with --static 10000")
    ap.add_argument("--procs", type=int, default=None, help="default 2, with --static 10")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--poll", type=float, default=5.0, help="--static: seconds between index polls")
    ap.add_argument("--window", type=float, default=30.0, help="--static: seconds of steady-state measurement")
    ap.add_argument("--lite", action="store_true",
                    help="--static: raw-HTTP agents that verify identical bytes once per process (10,000 fit)")
    args = ap.parse_args()
    if args.lite and not args.static:
        ap.error("--lite goes with --static")
    args.agents = args.agents or (10000 if args.static else 1000)
    args.procs = args.procs or (2 if args.lite else 10 if args.static else 2)
    w = _open_world()
    try:
        result = static(w, args) if args.static else long_poll(w, args)
    finally:
        _close_world(w)
    if result is None:
        return 1
    out = RESULTS.with_name("fleet_static.json") if args.static else RESULTS
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())

"""`palisade-agent run`, with its default deadlines and pacing, behind a server that tries to freeze it:
an index trickled one byte every 3 s (the slow-loris of issue 10), then `304 Not Modified` to everything.
The real reconciler serves behind the hostile loopback server of `support.hostile`.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from agentproc import ROOT, AgentProc, free_port
from reconciled import Reconciled, reconciled

from agent.client import DEADLINE_MARGIN, MIN_POLL
from reconciler.state.fleet import Fleet
from support import hostile
from support.hostile import Proxy

pytestmark = pytest.mark.slow
MAIN = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"
WAIT = 1.0  # the long-poll wait of the test's configuration: the index deadline is WAIT + DEADLINE_MARGIN


@dataclass
class Rig:
    up: Reconciled
    proxy: Proxy
    state: Path
    config: Path

    def agent(self, *extra: str) -> AgentProc:
        return AgentProc(self.proxy.url, self.up.pub, self.state, "web-1", "--no-engine", *extra, labels="role=web",
                         config=self.config)

    def status_text(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", MAIN, "status", "--state", str(self.state)],
                              capture_output=True, text=True, cwd=ROOT)


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"intervals": {"wait": WAIT, "heartbeat": 2, "retryMax": 2}}))
    with reconciled(tmp_path) as up, hostile.running(up.server.url) as proxy:
        yield Rig(up, proxy, tmp_path / "agent", config)


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def _problems(st: dict) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(p["kind"], p["reason"]) for p in st["health"]["problems"]]


def test_slow_loris_on_the_index_is_cut_at_the_deadline_retried_and_reported(rig: Rig) -> None:
    mport = free_port()
    agent = rig.agent("--metrics", f"127.0.0.1:{mport}")
    try:
        agent.wait(lambda s: s["version"] == 1, 20, "v1 applied")
        rig.proxy.trickle("/v1/index", every=3.0)  # one byte every 3 s: no read ever times out
        t0 = time.monotonic()
        # a long-poll already in flight was answered honestly: publish once one goes through the trickle
        _wait_for(lambda: rig.proxy.count("/v1/index", t0) >= 1, WAIT + 5, "an index request after the trickle")
        v = rig.up.publish_observe()
        # cut at WAIT + DEADLINE_MARGIN, not held for minutes (on main: nothing, for as long as it trickles)
        st = agent.wait(lambda s: ("transfer", "stalled") in _problems(s), WAIT + DEADLINE_MARGIN + 8,
                        "the stall reported")
        assert time.monotonic() - t0 < WAIT + DEADLINE_MARGIN + 8
        assert st["version"] == 1 and st["health"]["state"] == "degraded"
        out = rig.status_text()
        assert out.returncode == 1 and "transfer (stalled)" in out.stdout, out.stdout
        assert _metric(mport, 'palisade_agent_transfer_stalls_total{what="index"}') >= 1
        # the heartbeat (which the hostile server passes on) tells the reconciler
        fleet = Fleet.open(rig.up.state_dir)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (fleet.agents() and fleet.agents()[0].health
                                                   and fleet.agents()[0].health.state == "degraded"):
            time.sleep(0.2)
        (rec,) = fleet.agents()
        assert rec.condition(rec.last_seen) == "degraded"
        assert ("transfer", "stalled") in [(p.kind, p.reason) for p in rec.health.problems]  # type: ignore[union-attr]

        # retried with backoff, and the next honest answer gets through
        rig.proxy.tamper = None
        st = agent.wait(lambda s: s["version"] == v and s["health"]["state"] == "ok", 60, f"v{v} after the stall")
        assert rig.proxy.count("/v1/index", t0) >= 2
        assert agent.stop() == 0
        assert "Traceback" not in agent.log
    finally:
        agent.stop(signal.SIGKILL)


def test_304_forever_is_polled_at_a_bounded_rate(rig: Rig) -> None:
    agent = rig.agent()
    try:
        agent.wait(lambda s: s["version"] == 1, 20, "v1 applied")
        rig.proxy.not_modified_forever()
        t0 = time.monotonic()
        time.sleep(6)
        window = time.monotonic() - t0
        n = rig.proxy.count("/v1/index", t0)
        # at most one request per MIN_POLL (on main: about 400 a second)
        assert n <= window / MIN_POLL + 1, (n, window)
        assert agent.status()["version"] == 1  # type: ignore[index]
        rig.proxy.tamper = None
        v = rig.up.publish_observe()
        agent.wait(lambda s: s["version"] == v, 40, f"v{v} once the server answers")
        assert agent.stop() == 0
    finally:
        agent.stop(signal.SIGKILL)

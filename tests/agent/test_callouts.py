"""GetUrl and DnsLookup: the agent sends the request a matching selector names, in enforced mode only,
off the event reader's thread, rate-limited per target.

A real HTTP server and a real DNS responder listen on loopback; the kernel tests run a policy in the
engine and a process that matches it, and read the events through the agent.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.callouts import Callouts, CalloutSettings
from agent.client import Client
from agent.config import AgentConfig
from agent.enforcer import EngineEnforcer
from agent.errors import ConfigError
from agent.events import EventLog, read_all
from agent.runner import Agent
from agent.select import Desired
from wire.bundle import Origin, sha256_hex
from wire.values import Scope, State


class HttpCanary:
    """A loopback HTTP server counting the GETs of each path; `hold` makes it keep requests waiting."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.hold = threading.Event()
        self.hold.set()
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                canary.hold.wait(30)
                canary.hits[self.path] = canary.hits.get(self.path, 0) + 1
                self.send_response(404 if self.path == "/missing" else 200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class DnsCanary:
    """A loopback UDP DNS responder: records each question's name and answers it with 127.0.0.1, unless
    `silent`."""

    def __init__(self, silent: bool = False) -> None:
        self.names: list[str] = []
        self.silent = silent
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            qid, _flags, qd = struct.unpack_from("!HHH", data)
            labels, at = [], 12
            while data[at]:
                labels.append(data[at + 1:at + 1 + data[at]].decode())
                at += 1 + data[at]
            question = data[12:at + 5]
            self.names.append(".".join(labels))
            if self.silent:
                continue
            answer = struct.pack("!HHHLH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
            self.sock.sendto(struct.pack("!HHHHHH", qid, 0x8180, qd, 1, 0, 0) + question + answer, peer)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture()
def http() -> Iterator[HttpCanary]:
    c = HttpCanary()
    yield c
    c.close()


@pytest.fixture()
def dns() -> Iterator[DnsCanary]:
    c = DnsCanary()
    yield c
    c.close()


@pytest.fixture()
def make_callouts() -> Iterator[Callable[..., Callouts]]:
    made: list[Callouts] = []

    def make(**kw: Any) -> Callouts:
        c = Callouts(CalloutSettings(**kw))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def event(mode: str, *callouts: dict[str, str]) -> dict[str, Any]:
    """An event as bpf.events renders one of a selector with callouts."""
    return {"process_tracepoint": {"action": "KPROBE_ACTION_GETURL"},
            "palisade": {"mode": mode, "policy_key": "canary", "callouts": [dict(c) for c in callouts]}}


def get(url: str) -> dict[str, str]:
    return {"action": "GetUrl", "argUrl": url}


def lookup(name: str) -> dict[str, str]:
    return {"action": "DnsLookup", "argFqdn": name}


def statuses(ev: dict[str, Any]) -> list[str]:
    return [c["status"] for c in ev["palisade"]["callouts"]]


def test_get_url_is_sent_once_per_enforced_event(http: HttpCanary, make_callouts: Callable[..., Callouts]) -> None:
    c = make_callouts()
    events = [event("enforced", get(http.url("/canary"))) for _ in range(3)]
    for ev in events:
        c.submit(ev)
    assert [statuses(ev) for ev in events] == [["queued"]] * 3
    assert until(lambda: c.stats.sent == 3)
    assert http.hits == {"/canary": 3}
    c.submit(event("enforced", get(http.url("/missing"))))  # an error status is still an answer
    assert until(lambda: c.stats.sent == 4) and c.stats.failed == 0


def test_nothing_is_sent_in_observe_or_enforce_ready(http: HttpCanary, dns: DnsCanary,
                                                      make_callouts: Callable[..., Callouts]) -> None:
    c = make_callouts(dns_resolver=dns.address)
    dry = [event(mode, get(http.url("/canary")), lookup("canary.example")) for mode in ("observe", "enforce_ready")]
    for ev in dry:
        c.submit(ev)
    assert [statuses(ev) for ev in dry] == [["would_have_sent"] * 2] * 2
    assert c.idle() and c.stats.would_have_sent == 4
    c.submit(event("enforced", get(http.url("/marker"))))  # what was queued before it went first
    assert until(lambda: c.stats.sent == 1)
    assert http.hits == {"/marker": 1} and dns.names == []


def test_dns_lookup_asks_the_configured_resolver(dns: DnsCanary, make_callouts: Callable[..., Callouts]) -> None:
    c = make_callouts(dns_resolver=dns.address)
    c.submit(event("enforced", lookup("abc.canarytokens.example")))
    c.submit(event("enforced", lookup("abc.canarytokens.example.")))
    assert until(lambda: c.stats.sent == 2)
    assert dns.names == ["abc.canarytokens.example"] * 2


def test_a_resolver_that_never_answers_fails_after_the_timeout(make_callouts: Callable[..., Callouts]) -> None:
    mute = DnsCanary(silent=True)
    try:
        c = make_callouts(dns_resolver=mute.address, timeout=0.3)
        started = time.monotonic()
        c.submit(event("enforced", lookup("slow.example")))
        assert until(lambda: c.stats.failed == 1)
        assert 0.25 < time.monotonic() - started < 5
        assert mute.names == ["slow.example"] and c.stats.sent == 0
    finally:
        mute.close()


def test_one_target_is_rate_limited(http: HttpCanary, make_callouts: Callable[..., Callouts]) -> None:
    c = make_callouts(rate=0.001, burst=2)
    events = [event("enforced", get(http.url("/storm"))) for _ in range(5)]
    for ev in events:
        c.submit(ev)
    assert [statuses(ev)[0] for ev in events] == ["queued"] * 2 + ["rate_limited"] * 3
    c.submit(event("enforced", get(http.url("/other"))))  # another target has its own budget
    assert until(lambda: c.stats.sent == 3)
    assert http.hits == {"/storm": 2, "/other": 1} and c.stats.rate_limited == 3


def test_submit_never_waits_for_a_slow_target(http: HttpCanary, make_callouts: Callable[..., Callouts]) -> None:
    http.hold.clear()  # the server takes requests and does not answer until released
    c = make_callouts(workers=1, queue=2, timeout=20)
    events = [event("enforced", get(http.url(f"/t{k}"))) for k in range(20)]
    started = time.monotonic()
    for ev in events:
        c.submit(ev)
    assert time.monotonic() - started < 0.5
    marks = [statuses(ev)[0] for ev in events]
    assert marks.count("queued") <= 3 and "dropped" in marks and c.stats.dropped == marks.count("dropped")
    http.hold.set()
    assert until(lambda: c.idle())
    assert c.stats.sent == marks.count("queued")


def test_agent_config_callouts(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    base = "server: http://127.0.0.1:1\npubkeys: [k.pub]\nsensorId: n\nstate: st\n"
    f.write_text(base + "callouts: {dnsResolver: '127.0.0.1:5353', timeout: 2, ratePerSecond: 0.5, burst: 3}\n")
    cfg = config.load(f, {})
    assert cfg.callouts == CalloutSettings(dns_resolver=("127.0.0.1", 5353), timeout=2.0, rate=0.5, burst=3)
    f.write_text(base)
    assert config.load(f, {}).callouts.dns_resolver == ("1.1.1.1", 53)  # Tetragon's
    f.write_text(base + "callouts: {dnsResolver: dns.google}\n")
    with pytest.raises(ConfigError, match=r"callouts\.dnsResolver 'dns\.google'"):
        config.load(f, {})


# ---------------------------------------------------------------------- through the engine and the agent

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: canary
spec:
  podSelector:
    matchLabels: {app: web}
  tracepoints:
    - subsystem: syscalls
      event: sys_enter_getppid
      selectors:
        - matchActions:
            - action: GetUrl
              argUrl: %(url)s
            - action: DnsLookup
              argFqdn: canary.palisade.test
"""


def _run_in(cgroup: Path, calls: int) -> None:
    """A process in `cgroup` that calls getppid `calls` times."""
    code = f"import os\nfor _ in range({calls}): os.getppid()"
    subprocess.run([sys.executable, "-c", code], timeout=30, check=True,
                   preexec_fn=lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid())))


@pytest.mark.kernel
def test_the_agent_sends_a_matching_selectors_requests_in_enforced_mode_only(
        enforcer: EngineEnforcer, cgroup: Path, http: HttpCanary, dns: DnsCanary, tmp_path: Path) -> None:
    text = POLICY % {"url": http.url("/canary")}
    desired = Desired("canary", Origin("rule", "canary"), Scope(), State.ENFORCED, text, sha256_hex(text.encode()),
                      1, "c" * 40)
    loaded = enforcer.load(desired)
    callouts = Callouts(CalloutSettings(dns_resolver=dns.address))
    log = EventLog(tmp_path)
    cfg = AgentConfig(server="http://127.0.0.1:9", pubkeys=(), sensor_id="t", state=tmp_path / "state")
    agent = Agent(cfg, enforcer=enforcer, client=Client(cfg.server), pubkeys=[], events=log, persist=False,
                  callouts=callouts)
    try:
        def policy_events() -> list[dict[str, Any]]:
            return [ev for ev in read_all(tmp_path) if ev.get("process_tracepoint", {}).get("policy_name") == "canary"]

        _run_in(cgroup, 3)
        assert until(lambda: agent.pump_events(0.05) >= 0 and len(policy_events()) >= 3)
        assert until(callouts.idle)
        got = policy_events()
        assert len(got) == 3
        assert http.hits == {"/canary": 3} and dns.names == ["canary.palisade.test"] * 3  # once per event
        for ev in got:
            # the selector's last action names the event, as in Tetragon
            assert ev["process_tracepoint"]["action"] == "KPROBE_ACTION_DNSLOOKUP"
            assert ev["palisade"]["callouts"] == [
                {"action": "GetUrl", "argUrl": http.url("/canary"), "status": "queued"},
                {"action": "DnsLookup", "argFqdn": "canary.palisade.test", "status": "queued"}]

        enforcer.set_mode(loaded.handle, State.OBSERVE)
        _run_in(cgroup, 1)
        assert until(lambda: agent.pump_events(0.05) >= 0 and len(policy_events()) >= 4)
        dry = policy_events()[3]
        assert dry["palisade"]["mode"] == "observe"
        assert [c["status"] for c in dry["palisade"]["callouts"]] == ["would_have_sent"] * 2
        assert callouts.idle() and http.hits == {"/canary": 3} and len(dns.names) == 3  # nothing was queued
    finally:
        callouts.close()
        log.close()

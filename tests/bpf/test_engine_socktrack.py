"""Socket tracking: a kretprobe's returned `sock` (returnArg, printed as Tetragon's sock_arg under `return`),
TrackSock/UntrackSock (returnArgAction and matchActions), and the events of later hooks on a tracked socket
naming the process that tracked it, as Tetragon's do, wherever the kernel runs them (softirq runs whichever
task it interrupted).

They need kprobes and kretprobes: marked `stock_kernel`, run in the kernel matrix's Debian 6.1 guest
(`make vm-test VM_TESTS=tests/bpf/test_engine_socktrack.py`). The server runs in the workload cgroup the
policy is limited to; the client runs outside it, so its own sockets are neither tracked nor reported. The
server waits on its stdin while the client connects or sends: what the kernel does for the server's sockets
then (the handshake, the queueing of a datagram) runs in the client's context, and the events must still name
the server.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_support import Workload, policy

from bpf import syscall
from bpf.engine import Engine
from bpf.policy import parse

pytestmark = [pytest.mark.kernel, pytest.mark.stock_kernel]

PY = sys.executable
CORPUS_POLICIES = ("policylibrary/sshd.yaml", "tracingpolicy/tcp-accept.yaml", "tracingpolicy/tcp-listen.yaml",
                   "tracingpolicy/datagram-with-sock-tracking.yaml", "tracingpolicy/datagram_518.yaml")

#: sk_alloc's return tracked for AF_INET sockets (tcp-accept.yaml's first hook), untracked when freed.
_TRACK = [
    {"call": "sk_alloc", "syscall": False, "return": True,
     "args": [{"index": 1, "type": "int", "label": "Family"}],
     "returnArg": {"index": 0, "type": "sock"}, "returnArgAction": "TrackSock",
     "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["2"]}]}]},
    {"call": "sk_free", "syscall": False, "args": [{"index": 0, "type": "sock"}],
     "selectors": [{"matchActions": [{"action": "UntrackSock", "argSock": 0}, {"action": "NoPost"}]}]},
]


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _collect(engine: Engine, got: list[dict[str, Any]], done: Callable[[list[dict[str, Any]]], bool],
             timeout: float = 20.0) -> list[dict[str, Any]]:
    """The process_kprobe bodies polled into `got` until `done(got)` (or the timeout)."""
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        got += [ev["process_kprobe"] for ev in engine.poll_events(0.2) if "process_kprobe" in ev]
    return got


def _of(events: list[dict[str, Any]], call: str, pid: int | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["function_name"] == call and (pid is None or e["process"]["pid"] == pid)]


def _tracked_socks(engine: Engine, key: str) -> set[int]:
    """The sock addresses in the policy's `pl_socks` map, found through its programs."""
    map_ids: set[int] = set()
    for _, prog_id in engine.loaded()[key].prog_ids:
        fd = syscall.prog_get_fd_by_id(prog_id)
        try:
            map_ids |= set(syscall.prog_info(fd).map_ids)
        finally:
            os.close(fd)
    for mid in sorted(map_ids):
        mfd = syscall.map_get_fd_by_id(mid)
        try:
            if syscall.map_info(mfd).name != "pl_socks":
                continue
            out, k = set(), None
            while (k := syscall.map_get_next_key(mfd, k, 8)) is not None:
                out.add(int.from_bytes(k, "little"))
            return out
        finally:
            os.close(mfd)
    raise AssertionError("no pl_socks map among the policy's maps")


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def server(workload: Workload) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Starts a Python server in the workload; killed and reaped at the end of the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(code: str) -> subprocess.Popen[str]:
        p = workload.popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        procs.append(p)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


_TCP_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', {port}))
s.listen()
print('ready', flush=True)
sys.stdin.readline()  # the client connects, sends and leaves while this process waits here
c, peer = s.accept()
print(peer[1], c.recv(16).decode(), flush=True)
c.close()
s.close()
"""


def test_tcp_accept_tracks_the_listener_and_its_connections(engine: Engine, workload: Workload,
                                                            server: Callable[[str], subprocess.Popen[str]]) -> None:
    # tracingpolicy/tcp-accept.yaml and tcp-listen.yaml, narrowed to one port
    port = _free_port(socket.SOCK_STREAM)
    doc = policy("tcp-accept", {"kprobes": [
        *_TRACK,
        {"call": "inet_csk_listen_start", "syscall": False, "args": [{"index": 0, "type": "sock"}],
         "selectors": [{"matchArgs": [{"index": 0, "operator": "SPort", "values": [str(port)]}]}]},
        {"call": "tcp_create_openreq_child", "syscall": False, "return": True,
         "args": [{"index": 0, "type": "sock"}],
         "returnArg": {"index": 0, "type": "sock"}, "returnArgAction": "TrackSock"},
        {"call": "tcp_set_state", "syscall": False,
         "args": [{"index": 0, "type": "sock"}, {"index": 1, "type": "int", "label": "state"}],
         "selectors": [{"matchArgs": [{"index": 0, "operator": "State", "values": ["TCP_SYN_RECV"]},
                                      {"index": 1, "operator": "Equal", "values": ["1"]}]}]},
        {"call": "tcp_close", "syscall": False, "args": [{"index": 0, "type": "sock"}],
         "selectors": [{"matchArgs": [{"index": 0, "operator": "SPort", "values": [str(port)]}]}]},
    ]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    srv = server(_TCP_SERVER.format(port=port))
    client = subprocess.run(
        [PY, "-c", f"import socket; c = socket.create_connection(('127.0.0.1', {port})); c.sendall(b'hi'); "
                   "print(c.getsockname()[1]); c.close()"], capture_output=True, text=True, timeout=30)
    assert client.returncode == 0, client.stderr
    cport = int(client.stdout)

    # the handshake ran while the server waited on its stdin: the events still name the server
    events = _collect(engine, [], lambda evs: bool(_of(evs, "tcp_set_state")))
    alloc = _of(events, "sk_alloc", srv.pid)
    listen = _of(events, "inet_csk_listen_start")
    child = _of(events, "tcp_create_openreq_child")
    state = _of(events, "tcp_set_state")
    assert listen and child and state, [e["function_name"] for e in events]
    lsk = listen[0]["args"][0]["sock_arg"]
    assert listen[0]["process"]["pid"] == srv.pid
    cookie = lsk["cookie"]
    assert {k: lsk[k] for k in ("family", "type", "protocol", "saddr", "sport", "dport", "state")} == {
        "family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP", "saddr": "127.0.0.1",
        "sport": port, "dport": 0, "state": "TCP_CLOSE"}  # listen() sets TCP_LISTEN inside the call
    # the listener is the socket sk_alloc returned and tracked: the same address (Tetragon's cookie)
    mine = [e for e in alloc if e["return"]["sock_arg"]["cookie"] == cookie]
    assert mine, alloc
    assert mine[0]["args"] == [{"int_arg": 2, "label": "Family"}]
    ret = mine[0]["return"]["sock_arg"]
    # sk_alloc sets only the family; inet_create fills in the rest once it returns
    assert (ret["family"], ret["type"], ret["protocol"], "state" in ret) == ("AF_INET", "0", "IPPROTO_IP", False)
    # the new connection's socket, cloned from the listener in the kernel's receive path
    assert child[0]["process"]["pid"] == srv.pid
    assert child[0]["process"]["binary"] == os.path.realpath(PY)
    listener = child[0]["args"][0]["sock_arg"]
    assert listener["cookie"] == cookie and listener["state"] == "TCP_LISTEN"
    csk = child[0]["return"]["sock_arg"]
    # (its peer's address is set by the caller, tcp_v4_syn_recv_sock, once this returns; its port is here)
    assert {k: csk[k] for k in ("family", "type", "protocol", "saddr", "daddr", "sport", "dport", "state")} == {
        "family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP", "saddr": "127.0.0.1",
        "daddr": "0.0.0.0", "sport": port, "dport": cport, "state": "TCP_SYN_RECV"}
    # ... tracked at that return as its listener's: established in the client's context, it names the server
    st = state[0]
    assert st["process"]["pid"] == srv.pid
    assert st["process"]["binary"] == os.path.realpath(PY)
    ssk = st["args"][0]["sock_arg"]
    assert {k: ssk[k] for k in ("family", "type", "protocol", "saddr", "daddr", "sport", "dport", "state",
                                "cookie")} == {
        "family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP", "saddr": "127.0.0.1",
        "daddr": "127.0.0.1", "sport": port, "dport": cport, "state": "TCP_SYN_RECV", "cookie": csk["cookie"]}
    assert st["args"][1] == {"int_arg": 1, "label": "state"}  # TCP_ESTABLISHED
    # the client's own sockets are outside the workload and never tracked: nothing names the client
    assert {e["process"]["pid"] for e in events} == {srv.pid}, events
    tracked = _tracked_socks(engine, res.key)
    assert {int(cookie), int(csk["cookie"])} <= tracked

    out, _ = srv.communicate("go\n", timeout=30)
    assert out.split() == [str(cport), "hi"]
    closes = _collect(engine, [], lambda evs: len(_of(evs, "tcp_close", srv.pid)) >= 2)
    assert {e["args"][0]["sock_arg"]["cookie"] for e in _of(closes, "tcp_close", srv.pid)} == {
        cookie, csk["cookie"]}
    # freed, both are untracked (sk_free's UntrackSock)
    assert _wait(lambda: not {int(cookie), int(csk["cookie"])} & _tracked_socks(engine, res.key))


def test_tracksock_action_tracks_a_socket_where_the_policy_sees_it(
        engine: Engine, workload: Workload, server: Callable[[str], subprocess.Popen[str]]) -> None:
    # no sk_alloc: the listener is tracked by a TrackSock action when it starts listening
    port = _free_port(socket.SOCK_STREAM)
    doc = policy("listen-track", {"kprobes": [
        {"call": "inet_csk_listen_start", "syscall": False, "args": [{"index": 0, "type": "sock"}],
         "selectors": [{"matchArgs": [{"index": 0, "operator": "SPort", "values": [str(port)]}],
                        "matchActions": [{"action": "TrackSock", "argSock": 0}, {"action": "NoPost"}]}]},
        {"call": "inet_csk_listen_stop", "syscall": False, "args": [{"index": 0, "type": "sock"}],
         "selectors": [{"matchActions": [{"action": "UntrackSock"}]}]},
        {"call": "tcp_v4_syn_recv_sock", "syscall": False, "args": [{"index": 0, "type": "sock"}]},
    ]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    srv = server(_TCP_SERVER.format(port=port))
    client = subprocess.run([PY, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port})).send(b'hi')"],
                            capture_output=True, text=True, timeout=30)
    assert client.returncode == 0, client.stderr
    events = _collect(engine, [], lambda evs: bool(_of(evs, "tcp_v4_syn_recv_sock")))
    recv = _of(events, "tcp_v4_syn_recv_sock")
    assert recv, [e["function_name"] for e in events]
    assert recv[0]["process"]["pid"] == srv.pid
    assert recv[0]["process"]["binary"] == os.path.realpath(PY)
    sk = recv[0]["args"][0]["sock_arg"]
    assert (sk["state"], sk["sport"]) == ("TCP_LISTEN", port)
    assert _of(events, "inet_csk_listen_start") == []  # NoPost
    assert int(sk["cookie"]) in _tracked_socks(engine, res.key)
    srv.communicate("go\n", timeout=30)
    stops = _collect(engine, [], lambda evs: bool(_of(evs, "inet_csk_listen_stop")))
    assert [e["args"][0]["sock_arg"]["cookie"] for e in _of(stops, "inet_csk_listen_stop", srv.pid)] == [sk["cookie"]]
    assert int(sk["cookie"]) not in _tracked_socks(engine, res.key)


_UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', {port}))
print('ready', flush=True)
sys.stdin.readline()  # the client's datagram is queued while this process waits here
data, peer = s.recvfrom(64)
print(peer[1], data.decode(), flush=True)
s.close()
"""


def test_datagram_to_a_tracked_socket_names_its_process(engine: Engine, workload: Workload,
                                                        server: Callable[[str], subprocess.Popen[str]]) -> None:
    # tracingpolicy/datagram_518.yaml, narrowed to one port
    port = _free_port(socket.SOCK_DGRAM)
    to_port = [{"index": 2, "operator": "DPort", "values": [str(port)]}]
    doc = policy("datagram", {"kprobes": [
        *_TRACK,
        {"call": "sk_filter_trim_cap", "syscall": False,
         "args": [{"index": 0, "type": "sock"}, {"index": 1, "type": "skb", "label": "datagram"}],
         "selectors": [{"matchArgs": [{"index": 1, "operator": "Protocol", "values": ["IPPROTO_UDP"]},
                                      {"index": 1, "operator": "DAddr", "values": ["127.0.0.1/32"]},
                                      {"index": 1, "operator": "DPort", "values": [str(port)]}]}]},
        {"call": "ip_output", "syscall": False,
         "args": [{"index": 1, "type": "sock", "label": "sock"}, {"index": 2, "type": "skb", "label": "datagram"}],
         "selectors": [{"matchArgs": to_port}]},
    ]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    srv = server(_UDP_SERVER.format(port=port))
    client = subprocess.run(
        [PY, "-c", "import socket; c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                   f"c.sendto(b'hello', ('127.0.0.1', {port})); print(c.getsockname()[1])"],
        capture_output=True, text=True, timeout=30)
    assert client.returncode == 0, client.stderr
    cport = int(client.stdout)

    events = _collect(engine, [], lambda evs: bool(_of(evs, "sk_filter_trim_cap")))
    filt = _of(events, "sk_filter_trim_cap")
    assert filt, [e["function_name"] for e in events]
    e = filt[0]
    # queued to the server's socket by the client's send: the event names the server, which tracked it
    assert e["process"]["pid"] == srv.pid
    assert e["process"]["binary"] == os.path.realpath(PY)
    sk = e["args"][0]["sock_arg"]
    assert {k: sk[k] for k in ("family", "type", "protocol", "saddr", "daddr", "sport", "dport", "state")} == {
        "family": "AF_INET", "type": "SOCK_DGRAM", "protocol": "IPPROTO_UDP", "saddr": "127.0.0.1",
        "daddr": "0.0.0.0", "sport": port, "dport": 0, "state": "TCP_CLOSE"}
    skb = e["args"][1]
    assert skb["label"] == "datagram"
    assert {k: skb["skb_arg"].get(k) for k in ("family", "protocol", "saddr", "daddr", "sport", "dport")} == {
        "family": "AF_INET", "protocol": "IPPROTO_UDP", "saddr": "127.0.0.1", "daddr": "127.0.0.1",
        "sport": cport, "dport": port}
    alloc = [a for a in _of(events, "sk_alloc", srv.pid) if a["return"]["sock_arg"]["cookie"] == sk["cookie"]]
    assert alloc, "the server's socket was not reported by sk_alloc"
    # the client's send went through ip_output on its own socket, untracked and outside the workload
    assert _of(events, "ip_output") == []
    assert int(sk["cookie"]) in _tracked_socks(engine, res.key)

    out, _ = srv.communicate("go\n", timeout=30)
    assert out.split() == [str(cport), "hello"]
    assert _wait(lambda: int(sk["cookie"]) not in _tracked_socks(engine, res.key))


@pytest.mark.parametrize("name", CORPUS_POLICIES)
def test_corpus_socket_tracking_policies_load(engine: Engine, corpus: Path, name: str) -> None:
    doc = parse(yaml.safe_load((corpus / "examples" / name).read_text()))
    res = engine.load(doc, "observe")
    assert res.loaded, res.reasons
    kinds = {label.split("_")[-1] for label, _ in res.prog_ids}
    assert "kr" in kinds  # the kretprobes whose returned sock is tracked
    engine.unload(res.key)


def test_corpus_tcp_listen_reports_a_service_on_1337(engine: Engine, corpus: Path, workload: Workload,
                                                     server: Callable[[str], subprocess.Popen[str]]) -> None:
    # tracingpolicy/tcp-listen.yaml as it is, on the whole node
    doc = parse(yaml.safe_load((corpus / "examples/tracingpolicy/tcp-listen.yaml").read_text()))
    res = engine.load(doc, "observe")
    assert res.loaded, res.reasons
    srv = server(_TCP_SERVER.format(port=1337))
    events = _collect(engine, [], lambda evs: bool(_of(evs, "inet_csk_listen_start")))
    [listen] = _of(events, "inet_csk_listen_start")
    assert listen["process"]["pid"] == srv.pid
    assert listen["policy_name"] == "tcp-listen"
    sk = listen["args"][0]["sock_arg"]
    assert (sk["family"], sk["type"], sk["saddr"], sk["sport"]) == ("AF_INET", "SOCK_STREAM", "127.0.0.1", 1337)
    # sk_alloc tracked it without an event (NoPost), and __sk_free untracks it when the server is done
    assert _of(events, "sk_alloc") == [] and _of(events, "__sk_free") == []
    assert int(sk["cookie"]) in _tracked_socks(engine, res.key)
    srv.kill()  # its sockets are freed as it exits
    srv.wait(timeout=10)
    assert _wait(lambda: int(sk["cookie"]) not in _tracked_socks(engine, res.key))

"""Egress policies against every way a socket reaches a peer, on the real kernel.

A connect policy (security_socket_connect, tcp_connect, ...) must hold whether the
workload calls connect(), sends its first bytes with TCP Fast Open (sendto/sendmsg
with MSG_FASTOPEN, no connect() at all), sends a datagram to an address, or reaches
the IPv4 peer from an IPv6 socket (::ffff:127.0.0.1). Each attempt runs inside the
workload cgroup against loopback listeners outside it, and the test asserts both the
fate of the process (EPERM or SIGKILL) and that not one byte arrived; the same
attempt from outside the workload arrives, so each case can fail.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_support import Workload, policy, wait_events

from bpf.engine import Engine

pytestmark = pytest.mark.kernel

_PAYLOAD = b"exfiltrated"
_MSG_FASTOPEN = 0x20000000

#: One attempt to reach (host, port) a way; prints "sent", or the errno and exits 3.
_CLIENT = r"""
import socket, sys
way, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = b"exfiltrated"
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
addr = (host, port)
try:
    if way == "unix":
        s = socket.socket(socket.AF_UNIX)
        s.connect(host)
    elif way.startswith("udp"):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if way == "udp_sendto":
            s.sendto(data, addr)
        elif way == "udp_sendmsg":
            s.sendmsg([data], [], 0, addr)
        else:
            s.connect(addr)
            s.send(data)
    else:
        s = socket.socket(fam, socket.SOCK_STREAM)
        if way == "tcp_connect":
            s.connect(addr)
            s.sendall(data)
        elif way == "tfo_sendto":
            s.sendto(data, 0x20000000, addr)
        else:
            s.sendmsg([data], [], 0x20000000, addr)
    s.close()
except OSError as e:
    print(e.errno)
    sys.exit(3)
print("sent")
"""

TCP_WAYS = ("tcp_connect", "tfo_sendto", "tfo_sendmsg")
UDP_WAYS = ("udp_sendto", "udp_sendmsg", "udp_connect")


@dataclass
class Peer:
    """A TCP listener (Fast Open enabled) and a UDP socket on one loopback port, outside any workload."""

    tcp: socket.socket
    udp: socket.socket

    @property
    def port(self) -> int:
        return int(self.tcp.getsockname()[1])

    def received(self) -> bytes:
        """Everything that reached either socket so far (the sender has exited, so loopback has delivered)."""
        got = b""
        self.tcp.settimeout(0.2)
        while True:
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                break
            with conn:
                conn.settimeout(1)
                while chunk := conn.recv(4096):
                    got += chunk
        self.udp.settimeout(0.2)
        while True:
            try:
                got += self.udp.recv(4096)
            except TimeoutError:
                break
        return got


@pytest.fixture()
def peer() -> Iterator[Peer]:
    tcp = socket.socket()
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", tcp.getsockname()[1]))
    yield Peer(tcp, udp)
    tcp.close()
    udp.close()


def _attempt(way: str, host: str, port: int, workload: Workload | None) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-c", _CLIENT, way, host, str(port)]
    if workload is None:
        return subprocess.run(argv, capture_output=True, timeout=30)
    return workload.run(argv)


def _egress(name: str, call: str, port: int, action: dict[str, object]) -> object:
    arg = 0 if call == "tcp_connect" else 1
    return policy(name, {"kprobes": [{
        "call": call, "syscall": False,
        "args": [{"index": arg, "type": "sock" if call == "tcp_connect" else "sockaddr"}],
        "selectors": [{
            # a sock has both ends (DAddr/DPort); a sockaddr one address, read as SAddr/SPort as Tetragon does
            "matchArgs": [{"index": arg, "operator": "DAddr" if arg == 0 else "SAddr",
                           "values": ["127.0.0.0/8", "::1/128"]},
                          {"index": arg, "operator": "DPort" if arg == 0 else "SPort", "values": [str(port)]}],
            "matchActions": [action],
        }],
    }]})


@pytest.mark.parametrize("host", ["127.0.0.1", "::ffff:127.0.0.1"])
@pytest.mark.parametrize("way", [*TCP_WAYS, *UDP_WAYS])
def test_a_denied_peer_gets_nothing_whichever_way_the_workload_sends(
        engine: Engine, workload: Workload, peer: Peer, way: str, host: str) -> None:
    outside = _attempt(way, host, peer.port, None)
    assert outside.stdout == b"sent\n", outside
    assert peer.received() == _PAYLOAD  # the way works: the policy has something to stop

    res = engine.load(_egress("no-egress", "security_socket_connect", peer.port,
                              {"action": "Override", "argError": -1}), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    denied = _attempt(way, host, peer.port, workload)
    assert (denied.returncode, denied.stdout) == (3, b"1\n"), denied  # EPERM
    assert peer.received() == b""
    assert engine.counters("no-egress").enforced >= 1


@pytest.mark.parametrize("way", [*TCP_WAYS, *UDP_WAYS])
def test_sigkill_on_a_connect_hook_kills_every_way_to_the_peer_and_nothing_leaves(
        engine: Engine, workload: Workload, peer: Peer, way: str) -> None:
    res = engine.load(_egress("kill-egress", "security_socket_connect", peer.port, {"action": "Sigkill"}),
                      "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    killed = _attempt(way, "127.0.0.1", peer.port, workload)
    assert killed.returncode == -signal.SIGKILL, killed
    assert peer.received() == b""
    [ev] = [e for e in wait_events(engine, lambda e: "process_kprobe" in e) if "process_kprobe" in e]
    assert ev["process_kprobe"]["action"] == "KPROBE_ACTION_SIGKILL"
    assert ev["process_kprobe"]["args"] == [
        {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": peer.port}}]


@pytest.mark.parametrize("host", ["127.0.0.1", "::ffff:127.0.0.1"])
@pytest.mark.parametrize("way", TCP_WAYS)
def test_tcp_connect_kills_tcp_fast_open_and_v4_mapped_connects(
        engine: Engine, workload: Workload, peer: Peer, way: str, host: str) -> None:
    res = engine.load(_egress("kill-tcp", "tcp_connect", peer.port, {"action": "Sigkill"}), "enforced",
                      cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert _attempt(way, host, peer.port, workload).returncode == -signal.SIGKILL
    assert peer.received() == b""


@pytest.fixture()
def unix_listener() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.listen(4)
        yield path
        s.close()


@pytest.mark.parametrize("call", ["tcp_connect", "tcp_v4_connect"])
def test_tcp_connect_leaves_unix_and_udp_sockets_alone(
        engine: Engine, workload: Workload, peer: Peer, unix_listener: str, call: str) -> None:
    # Tetragon's tcp_connect sees TCP only: curl's AF_UNIX lookup or a UDP socket must not die
    p = policy("kill-all-tcp", {"kprobes": [{
        "call": call, "syscall": False, "args": [{"index": 0 if call == "tcp_connect" else 1, "type": "sock"}],
        "selectors": [{"matchActions": [{"action": "Sigkill"}]}],
    }]})
    res = engine.load(p, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert _attempt("unix", unix_listener, 0, workload).stdout == b"sent\n"
    for way in UDP_WAYS:
        assert _attempt(way, "127.0.0.1", peer.port, workload).stdout == b"sent\n", way
    assert peer.received() == _PAYLOAD * len(UDP_WAYS)
    assert _attempt("tcp_connect", "127.0.0.1", peer.port, workload).returncode == -signal.SIGKILL


def test_security_socket_connect_still_sees_unix_connects(
        engine: Engine, workload: Workload, unix_listener: str) -> None:
    # security_socket_connect sees every family: AF_UNIX reaches no cgroup hook, so its own program judges it
    p = policy("kill-unix", {"kprobes": [{
        "call": "security_socket_connect", "syscall": False, "args": [{"index": 1, "type": "sockaddr"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Family", "values": ["AF_UNIX"]}],
                       "matchActions": [{"action": "Sigkill"}]}],
    }]})
    res = engine.load(p, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert _attempt("unix", unix_listener, 0, workload).returncode == -signal.SIGKILL
    assert _attempt("unix", unix_listener, 0, None).stdout == b"sent\n"

"""Socket tracking in the compiler and the event renderer, without a kernel: what is refused, what a plan holds,
and a returned sock as Tetragon prints it. The kernel side is tests/bpf/test_engine_socktrack.py (6.1 guest)."""
from __future__ import annotations

import ipaddress
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpf import events
from bpf.compile import SOCK_TRACK_ENTRIES, Features, check, compile_policy
from bpf.policy import parse
from bpf.tpformat import builtin_formats

KPROBES = Features(kprobes=True)
CORPUS_POLICIES = ("policylibrary/sshd.yaml", "tracingpolicy/tcp-accept.yaml", "tracingpolicy/tcp-listen.yaml",
                   "tracingpolicy/datagram-with-sock-tracking.yaml", "tracingpolicy/datagram_518.yaml")

_SK_ALLOC: dict[str, Any] = {
    "call": "sk_alloc", "syscall": False, "return": True, "args": [{"index": 1, "type": "int", "label": "Family"}],
    "returnArg": {"index": 0, "type": "sock"}, "returnArgAction": "TrackSock"}


def doc(*kprobes: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "p"},
            "spec": {"kprobes": list(kprobes)}}


def reasons(*kprobes: dict[str, Any]) -> list[str]:
    return check(parse(doc(*kprobes)), KPROBES, builtin_formats)


@pytest.mark.parametrize("name", CORPUS_POLICIES)
def test_the_corpus_socket_tracking_policies_compile(corpus: Path, name: str) -> None:
    plan = compile_policy(parse(yaml.safe_load((corpus / "examples" / name).read_text())), KPROBES, builtin_formats)
    assert "pl_socks" in plan.source
    ret = [h for h in plan.hooks if h.return_type is not None]
    assert ret and all(h.return_type == "sock" and 0 <= h.return_slot < 2 for h in ret)
    assert all({s.kind for s in h.sites} == {"kprobe", "kretprobe"} for h in ret)


def test_a_returned_sock_takes_the_first_free_event_slot() -> None:
    plan = compile_policy(parse(doc(_SK_ALLOC, {
        "call": "tcp_create_openreq_child", "syscall": False, "return": True, "args": [{"index": 0, "type": "sock"}],
        "returnArg": {"index": 0, "type": "sock"}, "returnArgAction": "TrackSock"})), KPROBES, builtin_formats)
    assert [h.return_slot for h in plan.hooks] == [0, 1]
    assert f"struct pl_owner, {SOCK_TRACK_ENTRIES});" in plan.source
    assert "pl_track_as((u64)r, st);" in plan.source


def test_a_policy_without_tracking_has_no_sock_map() -> None:
    plan = compile_policy(parse(doc({"call": "tcp_close", "syscall": False, "args": [{"index": 0, "type": "sock"}]})),
                          KPROBES, builtin_formats)
    assert "pl_socks" not in plan.source and "pl_owner" not in plan.source


def test_tracksock_needs_a_returned_sock() -> None:
    [why] = reasons({**_SK_ALLOC, "returnArg": {"index": 0, "type": "int"}})
    assert why.endswith("returnArgAction: TrackSock needs a returnArg of type sock (the socket the function returns)")
    [why] = reasons({**_SK_ALLOC, "returnArgAction": "FollowFD"})
    assert "FollowFD is not a return action (Post, TrackSock, UntrackSock)" in why


def test_argsock_must_name_a_sock_argument() -> None:
    [why] = reasons({"call": "sk_free", "syscall": False, "args": [{"index": 0, "type": "int"}],
                     "selectors": [{"matchActions": [{"action": "UntrackSock", "argSock": 0}]}]})
    assert why.endswith("UntrackSock argSock 0 names no sock argument of sk_free")
    # argSock is the argument's index, as matchArgs' is
    assert reasons({"call": "ip_output", "syscall": False, "args": [{"index": 1, "type": "sock"}],
                    "selectors": [{"matchActions": [{"action": "TrackSock", "argSock": 1}]}]}) == []


def test_matchreturnargs_on_a_returned_sock_is_refused() -> None:
    [why] = reasons({**_SK_ALLOC, "selectors": [{"matchReturnArgs": [
        {"index": 0, "operator": "Family", "values": ["AF_INET"]}]}]})
    assert why.endswith("matchReturnArgs on a returned sock is outside the engine's subset")


def test_a_returned_sock_renders_as_tetragons_sock_arg() -> None:
    plan = compile_policy(parse(doc(_SK_ALLOC)), KPROBES, builtin_formats)
    # struct pl_sk: family, type, protocol, state, sport, dport, mark, priority, pad, cookie, saddr, daddr
    sk = struct.pack("<HHHHHHIIIQ16s16s", 2, 1, 6, 3, 8080, 40000, 0, 0, 0, 0xFFFF8880DEADBEEF,
                     ipaddress.IPv4Address("127.0.0.1").packed, ipaddress.IPv4Address("10.0.0.2").packed)
    raw = events.RawEvent(0, 0, os.getpid(), os.getpid(), 0, 0, 0, 0, 0, False, 0, (2, 0, 0, 0, 0, 0, 0, 0xFF),
                          (sk.ljust(256, b"\0"), b"\0" * 256), "/usr/sbin/sshd")
    body = events.render(raw, plan, "node", 0)["process_kprobe"]
    assert body["function_name"] == "sk_alloc"
    assert body["args"] == [{"int_arg": 2, "label": "Family"}]
    assert body["return"] == {"sock_arg": {
        "family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP", "mark": 0, "priority": 0,
        "saddr": "127.0.0.1", "daddr": "10.0.0.2", "sport": 8080, "dport": 40000,
        "cookie": str(0xFFFF8880DEADBEEF), "state": "TCP_SYN_RECV"}}
    assert body["process"]["binary"] == "/usr/sbin/sshd"
    # what sk_alloc returns: only the family is set, the protocol is Tetragon's IPPROTO_IP
    bare = struct.pack("<HHHHHHIIIQ16s16s", 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, b"", b"")
    body = events.render(raw._replace(strs=(bare.ljust(256, b"\0"), b"\0" * 256)), plan, "node", 0)["process_kprobe"]
    assert (body["return"]["sock_arg"]["type"], body["return"]["sock_arg"]["protocol"]) == ("0", "IPPROTO_IP")
    assert "state" not in body["return"]["sock_arg"]


def test_a_syscall_returns_no_sock() -> None:
    [why] = reasons({"call": "sys_socket", "syscall": True, "return": True, "args": [{"index": 0, "type": "int"}],
                     "returnArg": {"index": 0, "type": "sock"}, "returnArgAction": "TrackSock"})
    assert why.endswith("is read by a kretprobe on a kernel function (syscall: false); sys_socket is a syscall")

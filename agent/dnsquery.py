"""One DNS question over UDP, to one resolver: what a DnsLookup action sends (agent/callouts.py).

Tetragon's agent asks for the name's IPv4 addresses (an A query) at a fixed public resolver;
here the resolver is the agent's `callouts.dnsResolver` (default the same, 1.1.1.1:53). Only
whether and how the resolver answered matters: a canary token fires when the question reaches
its authoritative server, whatever the answer.
"""
from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import time
from dataclasses import dataclass

__all__ = ["Answer", "DnsBadName", "DnsNoAnswer", "parse_server", "query"]

QTYPE_A = 1
_CLASS_IN = 1
_HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
_RD = 0x0100  # recursion desired
_QR = 0x8000  # a response


class DnsBadName(ValueError):
    """The name cannot be put in a DNS question (an empty label, one over 63 bytes, over 253 in all)."""


class DnsNoAnswer(OSError):
    """The resolver did not answer the question in time."""


@dataclass(frozen=True)
class Answer:
    rcode: int  # 0 NOERROR, 3 NXDOMAIN, ...
    answers: int  # records in the answer section


def parse_server(text: str) -> tuple[str, int]:
    """`1.1.1.1:53`, `[2606:4700::1111]:53` or a bare address (port 53) → (address, port); ValueError if not."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    ipaddress.ip_address(host)  # a resolver is an address: looking it up would need a resolver
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def question(name: str, qid: int, qtype: int = QTYPE_A) -> bytes:
    """The query packet asking for `name` (recursion desired)."""
    labels = name.rstrip(".").encode("idna").split(b".")
    if not labels or any(not 0 < len(lb) < 64 for lb in labels) or sum(len(lb) + 1 for lb in labels) > 254:
        raise DnsBadName(f"{name!r} is not a DNS name")
    qname = b"".join(bytes([len(lb)]) + lb for lb in labels) + b"\0"
    return _HEADER.pack(qid, _RD, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, _CLASS_IN)


def query(name: str, server: tuple[str, int], timeout: float, qtype: int = QTYPE_A) -> Answer:
    """Ask `server` about `name`; the first reply to this question (by its id) within `timeout` seconds."""
    qid = secrets.randbelow(1 << 16)
    packet = question(name, qid, qtype)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(server)  # replies from anywhere else are not taken
        s.send(packet)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DnsNoAnswer(f"no answer from {server[0]}:{server[1]} within {timeout:g}s")
            s.settimeout(left)
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            except ConnectionRefusedError:  # ICMP port unreachable: nothing listens there
                raise DnsNoAnswer(f"{server[0]}:{server[1]} refused the question") from None
            if len(data) < _HEADER.size:
                continue
            rid, flags, _, ancount, _, _ = _HEADER.unpack_from(data)
            if rid == qid and flags & _QR:
                return Answer(flags & 0xF, ancount)

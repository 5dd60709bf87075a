"""What each process had at its exec, for matchCapabilityChanges and matchNamespaceChanges.

A policy with either selector keeps `pl_base` (tgid → struct pl_base of bpf/compile.py:
its effective, inheritable and permitted capability sets and the inode numbers of its
namespaces). The policy's tracking programs write an entry at every exec, and at every
fork for the new process (a process that never execs compares with what it had when it
was forked, as in Tetragon). Processes started before the policy was loaded get theirs
from /proc here, as Tetragon fills its execve_map from /proc at start: their state when
the policy loads stands in for their exec's.
"""
from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from . import syscall
from .compile import NS_FILES

#: struct pl_base: caps[3] (effective, inheritable, permitted), ns[10] (NS_FILES order).
BASE = struct.Struct("<3Q10I")
_BPF_NOEXIST = 1
#: /proc/<pid>/status lines of the capability sets, in struct pl_base order.
_STATUS_CAPS = ("CapEff", "CapInh", "CapPrm")


@dataclass(frozen=True)
class ExecState:
    """One process's capability sets and namespace inode numbers (0: a namespace /proc does not show)."""

    effective: int
    inheritable: int
    permitted: int
    namespaces: tuple[int, ...]

    def pack(self) -> bytes:
        return BASE.pack(self.effective, self.inheritable, self.permitted, *self.namespaces)

    @classmethod
    def unpack(cls, raw: bytes) -> ExecState:
        eff, inh, prm, *ns = BASE.unpack_from(raw)
        return cls(eff, inh, prm, tuple(ns))


def of_process(pid: int, proc: Path = Path("/proc")) -> ExecState | None:
    """The present state of process `pid` from /proc; None when it is gone (or its status unreadable)."""
    d = proc / str(pid)
    try:
        status = (d / "status").read_text()
    except OSError:
        return None
    caps = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in _STATUS_CAPS:
            caps[key] = int(value.strip(), 16)
    if len(caps) != len(_STATUS_CAPS):
        return None
    ns = []
    for name in NS_FILES:
        try:
            ns.append(os.stat(d / "ns" / name).st_ino)
        except OSError:
            ns.append(0)  # a kind this kernel lacks, or the process exited meanwhile: never a change
    return ExecState(caps["CapEff"], caps["CapInh"], caps["CapPrm"], tuple(ns))


def seed(fd: int, proc: Path = Path("/proc")) -> int:
    """Write the state of every process of /proc into the `pl_base` map `fd`, unless the kernel already wrote
    one (the process exec'd or was forked since the tracking programs were attached: BPF_NOEXIST). Returns how
    many entries were written."""
    n = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        state = of_process(int(entry.name), proc)
        if state is None:
            continue
        try:
            syscall.map_update_elem(fd, struct.pack("<I", int(entry.name)), state.pack(), _BPF_NOEXIST)
            n += 1
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.E2BIG):  # E2BIG: an LRU map full of live processes
                raise
    return n

"""The base sensor's ring buffer records, decoded and rendered in Tetragon's JSON shape (pure logic).

Layout: `struct event_hdr` of bpf/core/sensor.bpf.c (88 bytes, little endian) followed
by the binary, cwd and argument bytes whose lengths it gives. Rendering follows
tetragon.proto as protojson prints it: uint32 as numbers, timestamps RFC 3339 with
nanoseconds, empty strings and zero numbers omitted; `exec_id` is base64 of
"node:ktime:pid" as Tetragon computes it.
"""
from __future__ import annotations

import base64
import datetime as dt
import signal as _signal
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .errors import RecordError

KIND_EXEC = 1
KIND_EXIT = 2

F_CLONE = 1 << 0
F_PARENT_CACHE = 1 << 1
F_BIN_TRUNC = 1 << 2
F_CWD_TRUNC = 1 << 3
F_ARGS_TRUNC = 1 << 4
F_CACHED = 1 << 5
F_ROOTCWD = 1 << 6
F_BIN_UNREACH = 1 << 7
F_PROCFS = 1 << 8  # seeded from /proc (bpf.core.procfs), not seen exec'ing

HEADER = struct.Struct("<IIIIQQQQIIIIIHHHHIQ")
HEADER_SIZE = HEADER.size  # 88; the C side has the same struct

# Tetragon's flag words, in the order of its bits (pkg/reader/exec flags)
_FLAG_WORDS: tuple[tuple[int, str], ...] = (
    (F_BIN_TRUNC, "truncFilename"),
    (F_ARGS_TRUNC, "truncArgs"),
    (F_BIN_UNREACH, "errorFilename"),
    (F_ROOTCWD, "rootcwd"),
    (F_CWD_TRUNC, "errorCWD"),
    (F_CLONE, "clone"),
)


@dataclass(frozen=True)
class ExecRecord:
    pid: int  # tgid, as Tetragon's pid
    tid: int
    ppid: int
    ktime: int  # exec_id's ktime: the exec, in CLOCK_MONOTONIC ns
    parent_ktime: int
    task_start: int  # task->start_time of the thread group (the fork)
    event_time: int
    uid: int
    euid: int
    auid: int
    flags: int
    binary: str
    cwd: str
    args: tuple[str, ...]  # argv[1:]
    cgroup_id: int = 0  # cgroup v2 id (inode of its directory) at exec; 0 when unknown


@dataclass(frozen=True)
class ExitRecord:
    pid: int
    tid: int
    ppid: int
    ktime: int
    parent_ktime: int
    task_start: int
    event_time: int
    uid: int
    euid: int
    auid: int
    flags: int
    exit_code: int  # task->exit_code: status << 8 | signal
    binary: str  # from the kernel's process cache (first 255 bytes), "" when the exec was not seen
    cgroup_id: int = 0  # cgroup v2 id at exit

    @property
    def signal(self) -> int:
        return self.exit_code & 0x7F

    @property
    def status(self) -> int:
        return (self.exit_code >> 8) & 0xFF

    @property
    def cached(self) -> bool:
        return bool(self.flags & F_CACHED)


Record = ExecRecord | ExitRecord


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="surrogateescape")


def decode(data: bytes) -> Record:
    if len(data) < HEADER_SIZE:
        raise RecordError(f"record of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    (kind, pid, tid, ppid, ktime, pktime, task_start, event_time, uid, euid, auid, exit_code, flags,
     blen, clen, alen, _p0, _p1, cgroup_id) = HEADER.unpack_from(data)
    body = data[HEADER_SIZE:]
    if blen + clen + alen > len(body):
        raise RecordError(f"record lengths {blen}+{clen}+{alen} exceed its {len(body)}-byte body")
    binary = _text(body[:blen])
    common = dict(pid=pid, tid=tid, ppid=ppid, ktime=ktime, parent_ktime=pktime, task_start=task_start,
                  event_time=event_time, uid=uid, euid=euid, auid=auid, flags=flags, binary=binary,
                  cgroup_id=cgroup_id)
    if kind == KIND_EXEC:
        cwd = _text(body[blen:blen + clen])
        raw = body[blen + clen:blen + clen + alen]
        argv = [_text(a) for a in raw.rstrip(b"\0").split(b"\0")] if raw else []
        return ExecRecord(**common, cwd=cwd, args=tuple(argv[1:]))  # type: ignore[arg-type]
    if kind == KIND_EXIT:
        return ExitRecord(**common, exit_code=exit_code)  # type: ignore[arg-type]
    raise RecordError(f"unknown record kind {kind}")


def exec_id(node: str, ktime: int, pid: int) -> str:
    return base64.b64encode(f"{node}:{ktime}:{pid}".encode()).decode()


def arguments(args: tuple[str, ...]) -> str:
    """Tetragon's `arguments`: argv[1:] joined by spaces, an argument holding a space in quotes."""
    return " ".join(f'"{a}"' if " " in a else a for a in args)


def flags_text(flags: int, *, execve: bool = True) -> str:
    words = ["execve"] if execve and not flags & F_PROCFS else ["procFS"]
    words += [w for bit, w in _FLAG_WORDS if flags & bit]
    return " ".join(words)


def signal_name(n: int) -> str:
    try:
        return _signal.Signals(n).name
    except ValueError:
        return f"SIG{n}"


@dataclass(frozen=True)
class Clock:
    """Turns CLOCK_MONOTONIC ns (bpf_ktime_get_ns, task->start_time) into wall-clock time."""

    offset_ns: int  # realtime - monotonic

    @classmethod
    def now(cls) -> Clock:
        return cls(time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC))

    def rfc3339(self, ktime: int) -> str:
        ns = ktime + self.offset_ns
        secs, frac = divmod(ns, 1_000_000_000)
        stamp = dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{stamp}.{frac:09d}Z"


def _drop_empty(d: dict[str, Any]) -> dict[str, Any]:
    # pid, uid, auid and tid are wrapper types in tetragon.proto: printed even when 0
    return {k: v for k, v in d.items() if v not in ("", None, 0) or k in ("pid", "uid", "auid", "tid")}


def process_json(rec: ExecRecord, node: str, clock: Clock) -> dict[str, Any]:
    """Tetragon's `Process` for an exec record."""
    return _drop_empty({
        "exec_id": exec_id(node, rec.ktime, rec.pid),
        "pid": rec.pid,
        "uid": rec.uid,
        "cwd": rec.cwd,
        "binary": rec.binary,
        "arguments": arguments(rec.args),
        "flags": flags_text(rec.flags),
        "start_time": clock.rfc3339(rec.ktime),
        "auid": rec.auid,
        "parent_exec_id": exec_id(node, rec.parent_ktime, rec.ppid),
        "tid": rec.tid,
    })


def _exited_process_json(rec: ExitRecord, node: str, clock: Clock) -> dict[str, Any]:
    """The `Process` of an exit whose exec was not seen here: what the kernel still knows."""
    return _drop_empty({
        "exec_id": exec_id(node, rec.ktime, rec.pid),
        "pid": rec.pid,
        "uid": rec.uid,
        "binary": rec.binary,
        "flags": flags_text(rec.flags, execve=rec.cached),
        "start_time": clock.rfc3339(rec.ktime),
        "auid": rec.auid,
        "parent_exec_id": exec_id(node, rec.parent_ktime, rec.ppid),
        "tid": rec.tid,
    })


def exec_event(rec: ExecRecord, parent: ExecRecord | None, node: str, clock: Clock) -> dict[str, Any]:
    body: dict[str, Any] = {"process": process_json(rec, node, clock)}
    if parent is not None:
        body["parent"] = process_json(parent, node, clock)
    return {"process_exec": body, "node_name": node, "time": clock.rfc3339(rec.event_time)}


def exit_event(rec: ExitRecord, process: ExecRecord | None, parent: ExecRecord | None, node: str,
               clock: Clock) -> dict[str, Any]:
    """process_exit; `process` is the exec record of the exiting image when it was seen."""
    proc = process_json(process, node, clock) if process is not None else _exited_process_json(rec, node, clock)
    body: dict[str, Any] = {"process": proc}
    if parent is not None:
        body["parent"] = process_json(parent, node, clock)
    if rec.signal:
        body["signal"] = signal_name(rec.signal)
    if rec.status:
        body["status"] = rec.status
    body["time"] = clock.rfc3339(rec.event_time)
    return {"process_exit": body, "node_name": node, "time": clock.rfc3339(rec.event_time)}


class ProcessTable:
    """User-space side of the process cache: exec records by exec_id, to fill `parent` and exits.

    Bounded (oldest first out): an entry whose process exited is dropped after `linger`
    later exits, so a child exec'd just before its parent exited still finds it.
    """

    def __init__(self, node: str, clock: Clock, capacity: int = 65536, linger: int = 1024) -> None:
        self.node = node
        self.clock = clock
        self.capacity = capacity
        self._procs: OrderedDict[tuple[int, int], ExecRecord] = OrderedDict()
        self._exited: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._linger = linger

    def add(self, rec: ExecRecord) -> None:
        """Know a process without an event (one seeded from /proc)."""
        self._procs[(rec.pid, rec.ktime)] = rec

    def get(self, pid: int, ktime: int) -> ExecRecord | None:
        return self._procs.get((pid, ktime))

    def latest(self, pid: int) -> ExecRecord | None:
        """The newest image known for a pid (linear: for tests and tools, not the event path)."""
        found = [rec for (p, _), rec in self._procs.items() if p == pid]
        return max(found, key=lambda r: r.ktime) if found else None

    def render(self, rec: Record) -> dict[str, Any]:
        if isinstance(rec, ExecRecord):
            self._procs[(rec.pid, rec.ktime)] = rec
            while len(self._procs) > self.capacity:
                self._procs.popitem(last=False)
            if rec.ppid == rec.pid:  # exec in place: the replaced image is gone, as if it exited
                self._retire((rec.ppid, rec.parent_ktime))
            return exec_event(rec, self.get(rec.ppid, rec.parent_ktime), self.node, self.clock)
        out = exit_event(rec, self.get(rec.pid, rec.ktime), self.get(rec.ppid, rec.parent_ktime),
                         self.node, self.clock)
        self._retire((rec.pid, rec.ktime))
        return out

    def _retire(self, key: tuple[int, int]) -> None:
        self._exited[key] = None
        while len(self._exited) > self._linger:
            old, _ = self._exited.popitem(last=False)
            self._procs.pop(old, None)

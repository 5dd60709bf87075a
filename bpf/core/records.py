"""The base sensor's ring buffer records, decoded and rendered in Tetragon's JSON shape (pure logic).

Layout: `struct event_hdr` of bpf/core/sensor.bpf.c (160 bytes, little endian) followed
by the binary, cwd and argument bytes whose lengths it gives. Rendering follows
tetragon.proto as protojson prints it: uint32 as numbers, timestamps RFC 3339 with
nanoseconds, empty strings, zero numbers, false and empty lists omitted, enums by name;
`exec_id` is base64 of "node:ktime:pid" as Tetragon computes it.

`process.cap` and `process.ns` are filled on every process (Tetragon fills them with
--enable-process-cred / --enable-process-ns); `ancestors` as Tetragon's
--enable-ancestors=base gives them: the parent's parent first, up to init, on
process_exec and process_exit of a process whose pid is above 2. `refcnt` (Tetragon's
count of references to its cache entry) is left out: it says nothing of the process.
"""
from __future__ import annotations

import base64
import datetime as dt
import signal as _signal
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
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

#: Namespaces in tetragon.proto's order (sensor.bpf.c's NS_* slots; the names of /proc/<pid>/ns/*)
NS_NAMES = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user")

#: `struct proc_info`: permitted, effective, inheritable capability sets, one inum per namespace, the pid
#: in its own pid namespace, padding
PROC_INFO = f"QQQ{len(NS_NAMES)}III"
HEADER = struct.Struct("<IIIIQQQQIIIIIHHHHIQ" + PROC_INFO)
HEADER_SIZE = HEADER.size  # 160; the C side has the same struct

#: tetragon.proto's CapabilitiesType names by bit (its bit 1 is DAC_OVERRIDE, without CAP_)
CAP_NAMES = (
    "CAP_CHOWN", "DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

#: ancestors rendered per event at most (Tetragon walks to init; a bound keeps a cycle or a deep tree cheap)
ANCESTORS_MAX = 64
#: Tetragon stops its ancestor walk at init (1) or kthreadd (2), and gives none to those two
OLDEST_ANCESTOR_PID = 2

F_NEEDS_AUID = 1 << 9  # seeded from /proc: Tetragon's `auid` word (the auid was read there, not in the kernel)
F_NO_CWD = 1 << 10  # no cwd could be read (Tetragon's `nocwd`)

# Tetragon's flag words after execve/procFS, in the order it prints them (pkg/reader/exec flagsOrdered)
_FLAG_WORDS: tuple[tuple[int, str], ...] = (
    (F_BIN_TRUNC, "truncFilename"),
    (F_ARGS_TRUNC, "truncArgs"),
    (F_NEEDS_AUID, "auid"),
    (F_BIN_UNREACH, "errorFilename"),
    (F_NO_CWD, "nocwd"),
    (F_ROOTCWD, "rootcwd"),
    (F_CWD_TRUNC, "errorCWD"),
    (F_CLONE, "clone"),
)


@dataclass(frozen=True)
class Caps:
    """Capability sets as bit masks (bit n = capability n), as the kernel keeps them in a cred."""

    permitted: int = 0
    effective: int = 0
    inheritable: int = 0


NO_NS: tuple[int, ...] = (0,) * len(NS_NAMES)


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
    caps: Caps = Caps()  # the sets the new image runs with
    ns: tuple[int, ...] = NO_NS  # namespace inums in NS_NAMES order, 0 when unknown
    nspid: int = 0  # the pid in its own pid namespace (a container's pid 1 is 1), 0 when unknown


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
    caps: Caps = Caps()  # from the process cache (as at exec), else the task's at exit
    ns: tuple[int, ...] = NO_NS
    nspid: int = 0

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
     blen, clen, alen, _p0, _p1, cgroup_id, cap_p, cap_e, cap_i, *ns, nspid, _p2) = HEADER.unpack_from(data)
    body = data[HEADER_SIZE:]
    if blen + clen + alen > len(body):
        raise RecordError(f"record lengths {blen}+{clen}+{alen} exceed its {len(body)}-byte body")
    binary = _text(body[:blen])
    common = dict(pid=pid, tid=tid, ppid=ppid, ktime=ktime, parent_ktime=pktime, task_start=task_start,
                  event_time=event_time, uid=uid, euid=euid, auid=auid, flags=flags, binary=binary,
                  cgroup_id=cgroup_id, caps=Caps(cap_p, cap_e, cap_i), ns=tuple(ns), nspid=nspid)
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


def cap_names(mask: int) -> list[str | int]:
    """A capability set as Tetragon's enum names, lowest bit first (protojson prints an unknown value as its number)."""
    out: list[str | int] = []
    bit = 0
    while mask >> bit:
        if mask >> bit & 1:
            out.append(CAP_NAMES[bit] if bit < len(CAP_NAMES) else bit)
        bit += 1
    return out


def caps_json(caps: Caps) -> dict[str, Any]:
    """Tetragon's `Capabilities` (an empty set is left out, as protojson leaves an empty repeated field)."""
    sets = {"permitted": cap_names(caps.permitted), "effective": cap_names(caps.effective),
            "inheritable": cap_names(caps.inheritable)}
    return {k: v for k, v in sets.items() if v}


def ns_json(ns: tuple[int, ...], host_ns: tuple[int, ...]) -> dict[str, Any]:
    """Tetragon's `Namespaces`: per namespace its inum and whether it is init's (`is_host`, left out when false)."""
    out: dict[str, Any] = {}
    for i, name in enumerate(NS_NAMES):
        inum = ns[i] if i < len(ns) else 0
        if not inum:
            continue  # the kernel has no such namespace (time before 5.6) or it could not be read
        entry: dict[str, Any] = {"inum": inum}
        if i < len(host_ns) and host_ns[i] == inum:
            entry["is_host"] = True
        out[name] = entry
    return out


def process_json(rec: ExecRecord, node: str, clock: Clock, host_ns: tuple[int, ...] = ()) -> dict[str, Any]:
    """Tetragon's `Process` for an exec record; `host_ns`: init's namespace inums (NS_NAMES order)."""
    return _process_json(rec, node, clock, host_ns, flags_text(rec.flags), rec.cwd, arguments(rec.args))


def _exited_process_json(rec: ExitRecord, node: str, clock: Clock, host_ns: tuple[int, ...] = ()) -> dict[str, Any]:
    """The `Process` of an exit whose exec was not seen here: what the kernel still knows."""
    return _process_json(rec, node, clock, host_ns, flags_text(rec.flags, execve=rec.cached))


def _process_json(rec: ExecRecord | ExitRecord, node: str, clock: Clock, host_ns: tuple[int, ...], flags: str,
                  cwd: str | None = None, args: str | None = None) -> dict[str, Any]:
    """A `Process` from what exec and exit records both carry (an exit's has no cwd and no arguments)."""
    return _drop_empty({
        "exec_id": exec_id(node, rec.ktime, rec.pid),
        "pid": rec.pid,
        "uid": rec.uid,
        "cwd": cwd,
        "binary": rec.binary,
        "arguments": args,
        "flags": flags,
        "start_time": clock.rfc3339(rec.ktime),
        "auid": rec.auid,
        "parent_exec_id": exec_id(node, rec.parent_ktime, rec.ppid),
        "cap": caps_json(rec.caps),  # {} when every set is empty, as protojson prints a set message
        "ns": ns_json(rec.ns, host_ns) or None,
        "tid": rec.tid,
    })


def exec_event(rec: ExecRecord, parent: ExecRecord | None, node: str, clock: Clock, *,
               ancestors: Sequence[ExecRecord] = (), host_ns: tuple[int, ...] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {"process": process_json(rec, node, clock, host_ns)}
    if parent is not None:
        body["parent"] = process_json(parent, node, clock, host_ns)
    if ancestors:
        body["ancestors"] = [process_json(a, node, clock, host_ns) for a in ancestors]
    return {"process_exec": body, "node_name": node, "time": clock.rfc3339(rec.event_time)}


def exit_event(rec: ExitRecord, process: ExecRecord | None, parent: ExecRecord | None, node: str,
               clock: Clock, *, ancestors: Sequence[ExecRecord] = (), host_ns: tuple[int, ...] = ()) -> dict[str, Any]:
    """process_exit; `process` is the exec record of the exiting image when it was seen."""
    proc = (process_json(process, node, clock, host_ns) if process is not None
            else _exited_process_json(rec, node, clock, host_ns))
    body: dict[str, Any] = {"process": proc}
    if parent is not None:
        body["parent"] = process_json(parent, node, clock, host_ns)
    if rec.signal:
        body["signal"] = signal_name(rec.signal)
    if rec.status:
        body["status"] = rec.status
    body["time"] = clock.rfc3339(rec.event_time)
    if ancestors:
        body["ancestors"] = [process_json(a, node, clock, host_ns) for a in ancestors]
    return {"process_exit": body, "node_name": node, "time": clock.rfc3339(rec.event_time)}


class ProcessTable:
    """User-space side of the process cache: exec records by exec_id, for `parent`, `ancestors` and exits.

    As Tetragon's cache does, an entry is kept while something refers to it: the process
    itself while it runs, and every cached entry whose parent it is (so a long-lived
    process keeps its whole ancestry, also an image it replaced by exec'ing in place).
    Once nothing refers to it, it lingers for `linger` more releases, so a child exec'd
    just before its parent exited still finds it, then goes (and releases its parent).
    `capacity` bounds the table whatever the references (oldest first out).
    """

    def __init__(self, node: str, clock: Clock, capacity: int = 65536, linger: int = 1024,
                 host_ns: tuple[int, ...] = ()) -> None:
        self.node = node
        self.clock = clock
        self.capacity = capacity
        self.host_ns = host_ns
        self._procs: OrderedDict[tuple[int, int], ExecRecord] = OrderedDict()
        self._refs: dict[tuple[int, int], int] = {}
        self._parent: dict[tuple[int, int], tuple[int, int]] = {}  # child key -> the parent key it holds
        self._exited: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._linger = linger

    def add(self, rec: ExecRecord) -> None:
        """Know a process without an event (one seeded from /proc)."""
        self.add_all([rec])

    def add_all(self, recs: Sequence[ExecRecord]) -> None:
        """Seed many at once (linear, whatever their order)."""
        for rec in recs:
            key = (rec.pid, rec.ktime)
            if key not in self._procs:
                self._procs[key] = rec
                self._refs[key] = self._refs.get(key, 0) + 1
        for rec in recs:
            key, pkey = (rec.pid, rec.ktime), (rec.ppid, rec.parent_ktime)
            if key not in self._parent and pkey in self._procs and pkey != key:
                self._link(key, pkey)

    def _link(self, child: tuple[int, int], parent: tuple[int, int]) -> None:
        self._parent[child] = parent
        self._refs[parent] = self._refs.get(parent, 0) + 1
        self._exited.pop(parent, None)  # referred to again: no longer on its way out

    def get(self, pid: int, ktime: int) -> ExecRecord | None:
        return self._procs.get((pid, ktime))

    def refs(self, pid: int, ktime: int) -> int:
        """What holds the entry: 1 while it runs, plus one per cached child (0: lingering or gone)."""
        return self._refs.get((pid, ktime), 0)

    def latest(self, pid: int) -> ExecRecord | None:
        """The newest image known for a pid (linear: for tests and tools, not the event path)."""
        found = [rec for (p, _), rec in self._procs.items() if p == pid]
        return max(found, key=lambda r: r.ktime) if found else None

    def ancestors(self, rec: ExecRecord | ExitRecord) -> list[ExecRecord]:
        """Tetragon's `ancestors`: the parent's parent first, up to init or kthreadd, as far as the table knows."""
        out: list[ExecRecord] = []
        if rec.pid <= OLDEST_ANCESTOR_PID:
            return out
        cur = self.get(rec.ppid, rec.parent_ktime)
        seen = {(rec.pid, rec.ktime)}
        while cur is not None and cur.pid > OLDEST_ANCESTOR_PID and len(out) < ANCESTORS_MAX:
            seen.add((cur.pid, cur.ktime))
            nxt = self.get(cur.ppid, cur.parent_ktime)
            if nxt is None or (nxt.pid, nxt.ktime) in seen:
                break
            out.append(nxt)
            cur = nxt
        return out

    def render(self, rec: Record) -> dict[str, Any]:
        if isinstance(rec, ExecRecord):
            key = (rec.pid, rec.ktime)
            if key not in self._procs:
                self._procs[key] = rec
                self._refs[key] = self._refs.get(key, 0) + 1
                pkey = (rec.ppid, rec.parent_ktime)
                if pkey in self._procs and pkey != key:
                    self._link(key, pkey)
            while len(self._procs) > self.capacity:
                old, _ = self._procs.popitem(last=False)
                parent = self._forget(old)
                if parent is not None:
                    self._release(parent)
            if rec.ppid == rec.pid:  # exec in place: the replaced image is gone, as if it exited
                self._release((rec.ppid, rec.parent_ktime))
            return exec_event(rec, self.get(rec.ppid, rec.parent_ktime), self.node, self.clock,
                              ancestors=self.ancestors(rec), host_ns=self.host_ns)
        out = exit_event(rec, self.get(rec.pid, rec.ktime), self.get(rec.ppid, rec.parent_ktime),
                         self.node, self.clock, ancestors=self.ancestors(rec), host_ns=self.host_ns)
        self._release((rec.pid, rec.ktime))
        return out

    def _release(self, key: tuple[int, int]) -> None:
        """One reference to `key` is gone; at none it lingers, then leaves (and releases its parent)."""
        n = self._refs.get(key, 0) - 1
        if n > 0:
            self._refs[key] = n
            return
        self._refs.pop(key, None)
        if key not in self._procs:
            return
        self._exited[key] = None
        while len(self._exited) > self._linger:
            old, _ = self._exited.popitem(last=False)
            self._procs.pop(old, None)
            parent = self._forget(old)
            if parent is not None:
                self._release(parent)

    def _forget(self, key: tuple[int, int]) -> tuple[int, int] | None:
        """Drop what the table holds for `key`; returns the parent it referred to, if any."""
        self._refs.pop(key, None)
        self._exited.pop(key, None)
        return self._parent.pop(key, None)

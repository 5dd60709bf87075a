"""Seeding the process cache from /proc: the processes that were running before the sensor.

As Tetragon does, each such process gets an exec_id from its start time (flags `procFS
auid`, and `rootcwd` or `nocwd`), its binary from /proc/<pid>/exe (the file that runs), cwd,
arguments, credentials, capability sets (CapPrm/CapEff/CapInh of /proc/<pid>/status) and
namespaces (the inode numbers of /proc/<pid>/ns/*).
`Sensor.seed` writes them into the kernel's process cache without overwriting entries
the kernel made meanwhile, so a child exec'd afterwards links to its parent's id.

/proc gives the start time in clock ticks since boot (CLOCK_BOOTTIME); the kernel's
ktime is CLOCK_MONOTONIC, so the start is shifted by (boottime - monotonic) now. The
tick granularity (10 ms) is why such ids differ from what an exec seen live would give.
"""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path

from .records import F_NEEDS_AUID, F_NO_CWD, F_PROCFS, F_ROOTCWD, NO_NS, NS_NAMES, PROC_INFO, Caps, ExecRecord

CACHE_BIN = 256  # struct proc_entry.binary in sensor.bpf.c
ENTRY = struct.Struct(f"<QQIIIHH{PROC_INFO}{CACHE_BIN}s")


def parse_stat(text: str) -> tuple[int, int]:
    """(ppid, start time in clock ticks) from /proc/<pid>/stat; comm may hold spaces and parentheses."""
    rest = text[text.rindex(")") + 2:].split()
    # fields after comm start at 3 (state): ppid is field 4, starttime field 22
    return int(rest[1]), int(rest[19])


def parse_ids(status: str, key: str) -> tuple[int, int]:
    """(real, effective) from a `Uid:`/`Gid:` line of /proc/<pid>/status."""
    for line in status.splitlines():
        if line.startswith(key + ":"):
            f = line.split()
            return int(f[1]), int(f[2])
    raise ValueError(f"no {key} line")


def parse_caps(status: str) -> Caps:
    """The permitted, effective and inheritable sets (hex masks) of /proc/<pid>/status."""
    found: dict[str, int] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("CapPrm", "CapEff", "CapInh"):
            found[key] = int(value.strip(), 16)
    if len(found) != 3:
        raise ValueError("no CapPrm/CapEff/CapInh lines")
    return Caps(found["CapPrm"], found["CapEff"], found["CapInh"])


def parse_nspid(status: str) -> int:
    """The pid in the process's own pid namespace: the last of `NSpid:` (0 when the kernel has no such line)."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return 0


def namespaces(ns_dir: Path) -> tuple[int, ...]:
    """The inums of a process's namespaces (NS_NAMES order; 0 for one the kernel lacks or that cannot be read).

    A namespace's inum is the inode number of its /proc/<pid>/ns/<name> file (what the link reads as `net:[N]`)."""
    out = []
    for name in NS_NAMES:
        try:
            out.append(os.stat(ns_dir / name).st_ino)
        except OSError:
            out.append(0)
    return tuple(out)


#: The inums the kernel gives its initial namespaces of these kinds (include/linux/proc_ns.h, fixed since they
#: exist); the initial network and mount namespaces have fixed ones only on recent kernels.
INIT_INUMS = {"ipc": 0xEFFFFFFF, "uts": 0xEFFFFFFE, "user": 0xEFFFFFFD, "pid": 0xEFFFFFFC,
              "pid_for_children": 0xEFFFFFFC, "cgroup": 0xEFFFFFFB, "time": 0xEFFFFFFA,
              "time_for_children": 0xEFFFFFFA}


def host_namespaces(proc: Path = Path("/proc")) -> tuple[int, ...]:
    """init's namespaces: Tetragon's `is_host` is a namespace equal to these.

    /proc/1/ns needs ptrace access to init, which an agent without every capability init
    has lacks: then a namespace with a fixed initial inum takes that, and the network and
    mount namespaces are the agent's own (it runs in the host's, as Tetragon's DaemonSet does)."""
    init, own = namespaces(proc / "1" / "ns"), namespaces(proc / "self" / "ns")
    return tuple(init[i] or INIT_INUMS.get(name) or own[i] for i, name in enumerate(NS_NAMES))


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path (`0::/a/b`) from /proc/<pid>/cgroup; None on a v1-only system."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def cgroup2_mount(mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """Where cgroup2 is mounted (a cgroup id is the inode of a directory there)."""
    try:
        for line in mounts.read_text().splitlines():
            f = line.split()
            if len(f) > 2 and f[2] == "cgroup2":
                return Path(f[1].replace("\\040", " "))
    except OSError:
        pass
    return None


def cgroup_id(root: Path | None, path: str | None) -> int:
    """The id bpf_get_current_cgroup_id() gives for the cgroup at `path`, 0 when it cannot be told."""
    if root is None or path is None:
        return 0
    try:
        return os.stat(root / path.lstrip("/")).st_ino
    except OSError:
        return 0


def ticks_to_ktime(ticks: int, hz: int, boot_minus_mono_ns: int) -> int:
    return ticks * 1_000_000_000 // hz - boot_minus_mono_ns


def cache_value(rec: ExecRecord) -> bytes:
    """`struct proc_entry` for the kernel's process cache."""
    binary = os.fsencode(rec.binary)[:CACHE_BIN - 1]
    ns = tuple(rec.ns) + NO_NS[len(rec.ns):]
    return ENTRY.pack(rec.ktime, rec.parent_ktime, rec.pid, rec.ppid, rec.flags, len(binary), 0,
                      rec.caps.permitted, rec.caps.effective, rec.caps.inheritable, *ns[:len(NS_NAMES)], rec.nspid, 0,
                      binary)


def _read(path: Path) -> str:
    return path.read_text(errors="surrogateescape")


def scan(proc: Path = Path("/proc")) -> list[ExecRecord]:
    """One record per thread group alive now (kernel threads and vanished processes left out)."""
    hz = os.sysconf("SC_CLK_TCK")
    offset = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    cg_root = cgroup2_mount()
    cg_ids: dict[str, int] = {}  # most processes share a few cgroups
    raw: dict[int, tuple[int, int, str, str, tuple[str, ...], int, int, int, int, Caps, tuple[int, ...], int]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        try:
            ppid, ticks = parse_stat(_read(d / "stat"))
            binary = os.readlink(d / "exe")
            try:
                cwd = os.readlink(d / "cwd")
            except PermissionError:
                cwd = ""  # Tetragon's `nocwd`
            argv = (d / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            status = _read(d / "status")
            uid, euid = parse_ids(status, "Uid")
            caps = parse_caps(status)
            ns = namespaces(d / "ns")
            auid = int(_read(d / "loginuid") or "4294967295")
            cg = parse_cgroup(_read(d / "cgroup")) or ""
        except (OSError, ValueError):
            continue  # exited meanwhile, or a kernel thread (no exe)
        args = tuple(os.fsdecode(a) for a in argv[1:])
        if cg not in cg_ids:
            cg_ids[cg] = cgroup_id(cg_root, cg or None)
        raw[pid] = (ppid, ticks_to_ktime(ticks, hz, offset), binary, cwd, args, uid, euid, auid, cg_ids[cg],
                    caps, ns, parse_nspid(status))
    out = []
    for pid, (ppid, ktime, binary, cwd, args, uid, euid, auid, cgid, caps, ns, nspid) in raw.items():
        pktime = raw[ppid][1] if ppid in raw else 0
        flags = F_PROCFS | F_NEEDS_AUID | (F_ROOTCWD if cwd == "/" else 0) | (0 if cwd else F_NO_CWD)
        out.append(ExecRecord(pid=pid, tid=pid, ppid=ppid, ktime=ktime, parent_ktime=pktime, task_start=ktime,
                              event_time=ktime, uid=uid, euid=euid, auid=auid, flags=flags, binary=binary,
                              cwd=cwd, args=args, cgroup_id=cgid, caps=caps, ns=ns, nspid=nspid))
    return out

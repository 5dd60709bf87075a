"""A small ctypes layer over bpf(2) and perf_event_open(2) (x86_64).

libbpf loads objects (bpf/core/libbpf.py); everything else — perf-event and
cgroup links that can be pinned, pins, walking the kernel's program/map/link
ids, cgroup queries, map contents for digests, and the hand-written test
programs of the feature probe — goes through here.

Conventions: functions take and return plain file descriptors (ints); the
caller owns and closes them (`os.close`). Every failure raises `SyscallError`, an
`OSError` whose errno is the kernel's and whose message says what was
attempted, e.g. `[Errno 1] Operation not permitted: BPF_LINK_CREATE (prog fd
5 -> cgroup fd 7, attach type BPF_CGROUP_INET4_CONNECT)`. For BPF_PROG_LOAD
the verifier log is kept in `SyscallError.log`.

Measured on this kernel (6.18) and documented because the API depends on it:
`perf_event_open` of a tracepoint needs a concrete CPU when pid is -1
(cpu=-1 gives EINVAL), but a BPF program attached to that one event runs for
hits on *every* CPU — the program hangs off the tracepoint itself, the event's
CPU only scopes the perf samples. So one event on CPU 0 and one
`link_create_perf_event` suffice; the link can be pinned and keeps working after
the loading process exits (tests/bpf/test_syscall.py checks both). Unlinking
the last pin detaches too, but only after an RCU grace period (the bpffs inode
is freed asynchronously); call `link_detach` first where "detached now" matters.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno as _errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AttachType",
    "Cmd",
    "Insn",
    "LinkInfo",
    "LinkType",
    "MapInfo",
    "MapType",
    "PerfEventType",
    "ProgInfo",
    "ProgQuery",
    "ProgType",
    "SyscallError",
    "cgroup2_root",
    "kprobe_pmu_type",
    "link_create_cgroup",
    "link_create_lsm",
    "link_create_perf_event",
    "link_detach",
    "link_get_fd_by_id",
    "link_get_next_id",
    "link_ids",
    "link_info",
    "map_create",
    "map_delete_elem",
    "map_get_fd_by_id",
    "map_get_next_id",
    "map_get_next_key",
    "map_ids",
    "map_info",
    "map_items",
    "map_keys",
    "map_lookup_elem",
    "map_update_elem",
    "obj_get",
    "obj_id",
    "obj_pin",
    "perf_event_open_kprobe",
    "perf_event_open_tracepoint",
    "possible_cpus",
    "prog_detach",
    "prog_get_fd_by_id",
    "prog_get_next_id",
    "prog_ids",
    "prog_info",
    "prog_load",
    "prog_query",
    "raw_tracepoint_open",
    "tracefs_root",
    "tracepoint_id",
]

_NR_BPF = 321  # x86_64
_NR_PERF_EVENT_OPEN = 298  # x86_64
_PERF_TYPE_TRACEPOINT = 2
_PERF_SAMPLE_RAW = 1 << 10
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_BPF_F_QUERY_EFFECTIVE = 1 << 0
_BPF_OBJ_NAME_LEN = 16
# Larger than any attr we fill; the kernel accepts a bigger attr whose tail is zero.
_ATTR_SIZE = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Cmd(enum.IntEnum):
    """`enum bpf_cmd`."""

    BPF_MAP_CREATE = 0
    BPF_MAP_LOOKUP_ELEM = 1
    BPF_MAP_UPDATE_ELEM = 2
    BPF_MAP_DELETE_ELEM = 3
    BPF_MAP_GET_NEXT_KEY = 4
    BPF_PROG_LOAD = 5
    BPF_OBJ_PIN = 6
    BPF_OBJ_GET = 7
    BPF_PROG_ATTACH = 8
    BPF_PROG_DETACH = 9
    BPF_PROG_TEST_RUN = 10
    BPF_PROG_GET_NEXT_ID = 11
    BPF_MAP_GET_NEXT_ID = 12
    BPF_PROG_GET_FD_BY_ID = 13
    BPF_MAP_GET_FD_BY_ID = 14
    BPF_OBJ_GET_INFO_BY_FD = 15
    BPF_PROG_QUERY = 16
    BPF_RAW_TRACEPOINT_OPEN = 17
    BPF_BTF_LOAD = 18
    BPF_BTF_GET_FD_BY_ID = 19
    BPF_TASK_FD_QUERY = 20
    BPF_LINK_CREATE = 28
    BPF_LINK_UPDATE = 29
    BPF_LINK_GET_FD_BY_ID = 30
    BPF_LINK_GET_NEXT_ID = 31
    BPF_LINK_DETACH = 34


class ProgType(enum.IntEnum):
    """`enum bpf_prog_type`."""

    BPF_PROG_TYPE_UNSPEC = 0
    BPF_PROG_TYPE_SOCKET_FILTER = 1
    BPF_PROG_TYPE_KPROBE = 2
    BPF_PROG_TYPE_SCHED_CLS = 3
    BPF_PROG_TYPE_SCHED_ACT = 4
    BPF_PROG_TYPE_TRACEPOINT = 5
    BPF_PROG_TYPE_XDP = 6
    BPF_PROG_TYPE_PERF_EVENT = 7
    BPF_PROG_TYPE_CGROUP_SKB = 8
    BPF_PROG_TYPE_CGROUP_SOCK = 9
    BPF_PROG_TYPE_LWT_IN = 10
    BPF_PROG_TYPE_LWT_OUT = 11
    BPF_PROG_TYPE_LWT_XMIT = 12
    BPF_PROG_TYPE_SOCK_OPS = 13
    BPF_PROG_TYPE_SK_SKB = 14
    BPF_PROG_TYPE_CGROUP_DEVICE = 15
    BPF_PROG_TYPE_SK_MSG = 16
    BPF_PROG_TYPE_RAW_TRACEPOINT = 17
    BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
    BPF_PROG_TYPE_LWT_SEG6LOCAL = 19
    BPF_PROG_TYPE_LIRC_MODE2 = 20
    BPF_PROG_TYPE_SK_REUSEPORT = 21
    BPF_PROG_TYPE_FLOW_DISSECTOR = 22
    BPF_PROG_TYPE_CGROUP_SYSCTL = 23
    BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE = 24
    BPF_PROG_TYPE_CGROUP_SOCKOPT = 25
    BPF_PROG_TYPE_TRACING = 26
    BPF_PROG_TYPE_STRUCT_OPS = 27
    BPF_PROG_TYPE_EXT = 28
    BPF_PROG_TYPE_LSM = 29
    BPF_PROG_TYPE_SK_LOOKUP = 30
    BPF_PROG_TYPE_SYSCALL = 31
    BPF_PROG_TYPE_NETFILTER = 32


class AttachType(enum.IntEnum):
    """`enum bpf_attach_type`."""

    BPF_CGROUP_INET_INGRESS = 0
    BPF_CGROUP_INET_EGRESS = 1
    BPF_CGROUP_INET_SOCK_CREATE = 2
    BPF_CGROUP_SOCK_OPS = 3
    BPF_SK_SKB_STREAM_PARSER = 4
    BPF_SK_SKB_STREAM_VERDICT = 5
    BPF_CGROUP_DEVICE = 6
    BPF_SK_MSG_VERDICT = 7
    BPF_CGROUP_INET4_BIND = 8
    BPF_CGROUP_INET6_BIND = 9
    BPF_CGROUP_INET4_CONNECT = 10
    BPF_CGROUP_INET6_CONNECT = 11
    BPF_CGROUP_INET4_POST_BIND = 12
    BPF_CGROUP_INET6_POST_BIND = 13
    BPF_CGROUP_UDP4_SENDMSG = 14
    BPF_CGROUP_UDP6_SENDMSG = 15
    BPF_LIRC_MODE2 = 16
    BPF_FLOW_DISSECTOR = 17
    BPF_CGROUP_SYSCTL = 18
    BPF_CGROUP_UDP4_RECVMSG = 19
    BPF_CGROUP_UDP6_RECVMSG = 20
    BPF_CGROUP_GETSOCKOPT = 21
    BPF_CGROUP_SETSOCKOPT = 22
    BPF_TRACE_RAW_TP = 23
    BPF_TRACE_FENTRY = 24
    BPF_TRACE_FEXIT = 25
    BPF_MODIFY_RETURN = 26
    BPF_LSM_MAC = 27
    BPF_TRACE_ITER = 28
    BPF_CGROUP_INET4_GETPEERNAME = 29
    BPF_CGROUP_INET6_GETPEERNAME = 30
    BPF_CGROUP_INET4_GETSOCKNAME = 31
    BPF_CGROUP_INET6_GETSOCKNAME = 32
    BPF_XDP_DEVMAP = 33
    BPF_CGROUP_INET_SOCK_RELEASE = 34
    BPF_XDP_CPUMAP = 35
    BPF_SK_LOOKUP = 36
    BPF_XDP = 37
    BPF_SK_SKB_VERDICT = 38
    BPF_SK_REUSEPORT_SELECT = 39
    BPF_SK_REUSEPORT_SELECT_OR_MIGRATE = 40
    BPF_PERF_EVENT = 41
    BPF_TRACE_KPROBE_MULTI = 42
    BPF_LSM_CGROUP = 43
    BPF_STRUCT_OPS = 44
    BPF_NETFILTER = 45
    BPF_TCX_INGRESS = 46
    BPF_TCX_EGRESS = 47
    BPF_TRACE_UPROBE_MULTI = 48
    BPF_CGROUP_UNIX_CONNECT = 49


class LinkType(enum.IntEnum):
    """`enum bpf_link_type`."""

    BPF_LINK_TYPE_UNSPEC = 0
    BPF_LINK_TYPE_RAW_TRACEPOINT = 1
    BPF_LINK_TYPE_TRACING = 2
    BPF_LINK_TYPE_CGROUP = 3
    BPF_LINK_TYPE_ITER = 4
    BPF_LINK_TYPE_NETNS = 5
    BPF_LINK_TYPE_XDP = 6
    BPF_LINK_TYPE_PERF_EVENT = 7
    BPF_LINK_TYPE_KPROBE_MULTI = 8
    BPF_LINK_TYPE_STRUCT_OPS = 9
    BPF_LINK_TYPE_NETFILTER = 10
    BPF_LINK_TYPE_TCX = 11
    BPF_LINK_TYPE_UPROBE_MULTI = 12
    BPF_LINK_TYPE_NETKIT = 13
    BPF_LINK_TYPE_SOCKMAP = 14


class MapType(enum.IntEnum):
    """`enum bpf_map_type` (the ones palisade meets)."""

    BPF_MAP_TYPE_UNSPEC = 0
    BPF_MAP_TYPE_HASH = 1
    BPF_MAP_TYPE_ARRAY = 2
    BPF_MAP_TYPE_PROG_ARRAY = 3
    BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
    BPF_MAP_TYPE_PERCPU_HASH = 5
    BPF_MAP_TYPE_PERCPU_ARRAY = 6
    BPF_MAP_TYPE_STACK_TRACE = 7
    BPF_MAP_TYPE_CGROUP_ARRAY = 8
    BPF_MAP_TYPE_LRU_HASH = 9
    BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
    BPF_MAP_TYPE_LPM_TRIE = 11
    BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
    BPF_MAP_TYPE_HASH_OF_MAPS = 13
    BPF_MAP_TYPE_RINGBUF = 27


class PerfEventType(enum.IntEnum):
    """`enum bpf_perf_event_type` (what a perf-event link is attached to)."""

    BPF_PERF_EVENT_UNSPEC = 0
    BPF_PERF_EVENT_UPROBE = 1
    BPF_PERF_EVENT_URETPROBE = 2
    BPF_PERF_EVENT_KPROBE = 3
    BPF_PERF_EVENT_KRETPROBE = 4
    BPF_PERF_EVENT_TRACEPOINT = 5
    BPF_PERF_EVENT_EVENT = 6


def _name(enum_cls: type[enum.IntEnum], value: int) -> str:
    try:
        return enum_cls(value).name
    except ValueError:
        return f"{enum_cls.__name__}({value})"


class SyscallError(OSError):
    """A bpf(2) or perf_event_open(2) call failed; `op` says what was attempted."""

    def __init__(self, err: int, op: str, log: str = "") -> None:
        super().__init__(err, f"{os.strerror(err)}: {op}")
        self.op = op
        self.log = log

    def __str__(self) -> str:
        text = f"[Errno {self.errno}] {self.strerror}"
        if self.log:
            # The verifier's last lines say why; the whole log can be thousands of lines.
            tail = "\n".join(self.log.strip().splitlines()[-8:])
            text += f"\nverifier log (tail):\n{tail}"
        return text


# ---------------------------------------------------------------- raw calls


def _bpf(cmd: Cmd, attr: ctypes.Array[ctypes.c_char], op: str, log: str = "") -> int:
    ret = _libc.syscall(
        ctypes.c_long(_NR_BPF), ctypes.c_int(int(cmd)), attr, ctypes.c_uint(ctypes.sizeof(attr))
    )
    if ret < 0:
        raise SyscallError(ctypes.get_errno(), f"{cmd.name} ({op})" if op else cmd.name, log)
    return int(ret)


def _bpf_found(cmd: Cmd, attr: ctypes.Array[ctypes.c_char], op: str) -> bool:
    """Run `cmd`; False where the kernel has no such object (ENOENT: no such key, no id after this one)."""
    try:
        _bpf(cmd, attr, op)
    except SyscallError as e:
        if e.errno == _errno.ENOENT:
            return False
        raise
    return True


def _attr(*fields: tuple[int, str, int]) -> ctypes.Array[ctypes.c_char]:
    """A zeroed bpf_attr with (offset, struct format, value) fields packed in."""
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    for offset, fmt, value in fields:
        struct.pack_into(fmt, buf, offset, value)
    return buf


def _addr(obj: ctypes.Array[ctypes.c_char] | ctypes.Structure | ctypes.Array[ctypes.c_uint32]) -> int:
    return ctypes.addressof(obj)


# ---------------------------------------------------------------- programs


@dataclass(frozen=True)
class Insn:
    """One `struct bpf_insn`; for hand-written test programs (the probe's)."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def pack(self) -> bytes:
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)


def prog_load(
    prog_type: ProgType,
    insns: list[Insn] | bytes,
    *,
    license: str = "GPL",
    name: str = "",
    expected_attach_type: AttachType | int = 0,
    attach_btf_id: int = 0,
    btf_fd: int = 0,
    func_info: tuple[tuple[int, int], ...] = (),
    log_size: int = 1 << 16,
) -> int:
    """BPF_PROG_LOAD; returns the program fd. The verifier log is in the error on failure.

    `func_info` is (first instruction, BTF FUNC type id in `btf_fd`) per function of the program,
    which the verifier needs for callbacks (bpf_loop)."""
    code = insns if isinstance(insns, bytes) else b"".join(i.pack() for i in insns)
    insn_buf = ctypes.create_string_buffer(code, len(code))
    funcs = b"".join(struct.pack("<II", off, type_id) for off, type_id in func_info)
    func_buf = ctypes.create_string_buffer(funcs, max(len(funcs), 1))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = _attr(
        (0, "I", int(prog_type)),
        (4, "I", len(code) // 8),
        (8, "Q", _addr(insn_buf)),
        (16, "Q", _addr(lic)),
        (24, "I", 1 if log else 0),
        (28, "I", log_size if log else 0),
        (32, "Q", _addr(log) if log else 0),
        (48, f"{_BPF_OBJ_NAME_LEN}s", name.encode()[: _BPF_OBJ_NAME_LEN - 1]),  # type: ignore[arg-type]
        (68, "I", int(expected_attach_type)),
        (72, "I", btf_fd),
        (76, "I", 8 if func_info else 0),  # sizeof(struct bpf_func_info)
        (80, "Q", _addr(func_buf) if func_info else 0),
        (88, "I", len(func_info)),
        (108, "I", attach_btf_id),
    )
    op = f"{_name(ProgType, prog_type)}, {len(code) // 8} insns"
    if expected_attach_type:
        op += f", expected attach type {_name(AttachType, expected_attach_type)}"
    try:
        return _bpf(Cmd.BPF_PROG_LOAD, attr, op)
    except SyscallError as e:
        text = log.value.decode(errors="replace") if log else ""
        raise SyscallError(e.errno or _errno.EINVAL, e.op, text) from None


def btf_load(data: bytes, *, log_size: int = 1 << 16) -> int:
    """BPF_BTF_LOAD of raw BTF (header, types, strings); returns the BTF fd. The kernel's log is in the
    error on failure."""
    buf = ctypes.create_string_buffer(data, len(data))
    log = ctypes.create_string_buffer(log_size)
    attr = _attr((0, "Q", _addr(buf)), (8, "Q", _addr(log)), (16, "I", len(data)), (20, "I", log_size),
                 (24, "I", 1))
    try:
        return _bpf(Cmd.BPF_BTF_LOAD, attr, f"{len(data)} bytes")
    except SyscallError as e:
        raise SyscallError(e.errno or _errno.EINVAL, e.op, log.value.decode(errors="replace")) from None


def map_create(
    map_type: MapType | int,
    key_size: int,
    value_size: int,
    max_entries: int,
    *,
    name: str = "",
    flags: int = 0,
) -> int:
    """BPF_MAP_CREATE; returns the map fd."""
    attr = _attr(
        (0, "I", int(map_type)),
        (4, "I", key_size),
        (8, "I", value_size),
        (12, "I", max_entries),
        (16, "I", flags),
        (28, f"{_BPF_OBJ_NAME_LEN}s", name.encode()[: _BPF_OBJ_NAME_LEN - 1]),  # type: ignore[arg-type]
    )
    return _bpf(Cmd.BPF_MAP_CREATE, attr, f"{_name(MapType, map_type)} {key_size}/{value_size}/{max_entries}")


# ---------------------------------------------------------------- perf events and links


def tracefs_root() -> Path:
    """Where tracefs is mounted (the modern path first)."""
    for root in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (root / "events").is_dir():
            return root
    raise SyscallError(_errno.ENOENT, "find tracefs (neither /sys/kernel/tracing nor /sys/kernel/debug/tracing)")


def cgroup2_root() -> Path:
    """Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup` or, on hybrid systems,
    `/sys/fs/cgroup/unified`); cgroup hooks and cgroup ids live there."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1].replace("\\040", " "))
    raise SyscallError(_errno.ENOENT, "find the cgroup2 hierarchy (no cgroup2 mount in /proc/self/mounts)")


def tracepoint_id(category: str, name: str) -> int:
    """The perf id of tracepoint `category:name`, from tracefs."""
    path = tracefs_root() / "events" / category / name / "id"
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        raise SyscallError(_errno.ENOENT, f"find tracepoint {category}:{name} ({path} does not exist)") from None


class _PerfEventAttr(ctypes.Structure):
    # The first 128 bytes of `struct perf_event_attr` (PERF_ATTR_SIZE_VER7); we fill
    # only the head, the rest stays zero.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),  # kprobe_func / uprobe_path
        ("config2", ctypes.c_uint64),  # probe_offset / kprobe_addr
        ("rest", ctypes.c_uint8 * 56),
    ]


def perf_event_open_tracepoint(tp_id: int, cpu: int = 0) -> int:
    """A perf event on tracepoint `tp_id` (from `tracepoint_id`), for all processes.

    `cpu` must be a real CPU (pid -1 with cpu -1 is EINVAL); one event is enough
    for a BPF program to run on every CPU, see the module docstring.
    """
    attr = _PerfEventAttr()
    attr.type = _PERF_TYPE_TRACEPOINT
    attr.size = ctypes.sizeof(attr)
    attr.config = tp_id
    attr.sample_period = 1
    attr.sample_type = _PERF_SAMPLE_RAW
    attr.wakeup_events = 1
    return _perf_event_open(attr, cpu, f"tracepoint id {tp_id}")


def _perf_event_open(attr: _PerfEventAttr, cpu: int, what: str, pid: int = -1) -> int:
    ret = _libc.syscall(
        ctypes.c_long(_NR_PERF_EVENT_OPEN),
        ctypes.byref(attr),
        ctypes.c_int(pid),
        ctypes.c_int(cpu),
        ctypes.c_int(-1),
        ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC),
    )
    if ret < 0:
        raise SyscallError(ctypes.get_errno(), f"perf_event_open ({what}, cpu {cpu})")
    return int(ret)


_KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
_UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe")


def _pmu_type(pmu_dir: Path) -> int | None:
    try:
        return int((pmu_dir / "type").read_text())
    except FileNotFoundError:
        return None


def kprobe_pmu_type() -> int | None:
    """The dynamic PMU type of kprobes, or None when the kernel has no kprobe PMU."""
    return _pmu_type(_KPROBE_PMU)


def uprobe_pmu_type() -> int | None:
    """The dynamic PMU type of uprobes, or None when the kernel has no uprobe PMU."""
    return _pmu_type(_UPROBE_PMU)


def _perf_event_open_probe(pmu_dir: Path, target: str, offset: int, *, retprobe: bool, cpu: int,
                           pid: int = -1, ref_ctr_offset: int = 0) -> int:
    """A perf event of the kprobe or uprobe PMU at `pmu_dir`: config1 points at `target` (a kernel
    function, or an ELF file's path), config2 is the offset from it."""
    kind = pmu_dir.name  # "kprobe" or "uprobe"
    if retprobe:
        kind = f"{kind[0]}ret{kind[1:]}"  # "kretprobe" or "uretprobe"
    pmu = _pmu_type(pmu_dir)
    if pmu is None:
        raise SyscallError(_errno.ENOENT, f"{kind} on {target} (no {pmu_dir.name} PMU at {pmu_dir})")
    name = ctypes.create_string_buffer(target.encode())
    attr = _PerfEventAttr()
    attr.type = pmu
    attr.size = ctypes.sizeof(attr)
    if retprobe:
        # The bit is named in the PMU's format directory ("config:0" on every kernel so far).
        fmt = (pmu_dir / "format" / "retprobe").read_text().strip()
        attr.config = 1 << int(fmt.split(":")[1])
    if ref_ctr_offset:
        # a uprobe's USDT semaphore: the kernel counts it up in each process mapping the file while the probe
        # is attached; its place in config is named in the PMU's format directory ("config:32-63")
        fmt_file = pmu_dir / "format" / "ref_ctr_offset"
        if not fmt_file.exists():
            raise SyscallError(_errno.EOPNOTSUPP, f"{kind} on {target}: this kernel's uprobes take no semaphore "
                                                  "(no ref_ctr_offset in the PMU's format)")
        bit = int(fmt_file.read_text().strip().split(":")[1].split("-")[0])
        attr.config |= ref_ctr_offset << bit
    attr.config1 = ctypes.addressof(name)
    attr.config2 = offset
    attr.sample_period = 1
    attr.wakeup_events = 1
    return _perf_event_open(attr, cpu, f"{kind} on {target}", pid=pid)


def perf_event_open_kprobe(func: str, *, retprobe: bool = False, offset: int = 0, cpu: int = 0) -> int:
    """A perf event on a kprobe (or kretprobe) at kernel function `func`, for all processes.

    Like tracepoints, one event on one CPU serves a BPF program on every CPU.
    """
    return _perf_event_open_probe(_KPROBE_PMU, func, offset, retprobe=retprobe, cpu=cpu)


def perf_event_open_uprobe(path: str, offset: int, *, retprobe: bool = False, pid: int = -1,
                           ref_ctr_offset: int = 0) -> int:
    """A perf event on a uprobe (or uretprobe) at file offset `offset` of the ELF file `path`, in
    every process that maps it (`pid` -1) or in one; `ref_ctr_offset`: the file offset of a USDT
    semaphore the kernel keeps counted up while the probe is attached."""
    # perf_event_open takes pid -1 with a CPU, or a pid on any CPU (-1)
    return _perf_event_open_probe(_UPROBE_PMU, path, offset, retprobe=retprobe, cpu=0 if pid == -1 else -1,
                                  pid=pid, ref_ctr_offset=ref_ctr_offset)


def link_create_perf_event(prog_fd: int, perf_fd: int, cookie: int = 0) -> int:
    """BPF_LINK_CREATE with attach type BPF_PERF_EVENT; returns the link fd (pinnable)."""
    attr = _attr(
        (0, "I", prog_fd),
        (4, "I", perf_fd),
        (8, "I", AttachType.BPF_PERF_EVENT),
        (16, "Q", cookie),
    )
    return _bpf(Cmd.BPF_LINK_CREATE, attr, f"prog fd {prog_fd} -> perf event fd {perf_fd}")


_BPF_F_KPROBE_MULTI_RETURN = 1


def link_create_kprobe_multi(prog_fd: int, symbols: list[str], *, retprobe: bool = False) -> int:
    """BPF_LINK_CREATE with attach type BPF_TRACE_KPROBE_MULTI: one link puts a program (loaded with
    that expected attach type) on the entry, or return, of every kernel function in `symbols`."""
    names = [ctypes.create_string_buffer(s.encode()) for s in symbols]
    syms = (ctypes.c_uint64 * len(names))(*(ctypes.addressof(n) for n in names))
    attr = _attr(
        (0, "I", prog_fd),
        (8, "I", AttachType.BPF_TRACE_KPROBE_MULTI),
        # link_create.kprobe_multi: flags, cnt, then the syms, addrs and cookies arrays
        (16, "I", _BPF_F_KPROBE_MULTI_RETURN if retprobe else 0),
        (20, "I", len(names)),
        (24, "Q", ctypes.addressof(syms)),
    )
    what = ", ".join(symbols[:3]) + (f" and {len(symbols) - 3} more" if len(symbols) > 3 else "")
    return _bpf(Cmd.BPF_LINK_CREATE, attr, f"prog fd {prog_fd} -> kprobe_multi on {what}")


def raw_tracepoint_open(prog_fd: int, name: str) -> int:
    """BPF_RAW_TRACEPOINT_OPEN: attach a raw tracepoint program to tracepoint `name` (e.g. "sys_enter");
    returns the link fd (pinnable). Cheaper per hit than a perf-event tracepoint: no record is built."""
    buf = ctypes.create_string_buffer(name.encode())
    attr = _attr((0, "Q", _addr(buf)), (8, "I", prog_fd))
    return _bpf(Cmd.BPF_RAW_TRACEPOINT_OPEN, attr, f"prog fd {prog_fd} -> raw tracepoint {name}")


def link_create_cgroup(prog_fd: int, cgroup_fd: int, attach_type: AttachType | int) -> int:
    """BPF_LINK_CREATE on a cgroup (fd of its cgroup2 directory); returns the link fd.

    A cgroup link is multi-attach: it runs alongside programs others attached.
    """
    attr = _attr((0, "I", prog_fd), (4, "I", cgroup_fd), (8, "I", int(attach_type)))
    op = f"prog fd {prog_fd} -> cgroup fd {cgroup_fd}, attach type {_name(AttachType, attach_type)}"
    return _bpf(Cmd.BPF_LINK_CREATE, attr, op)


def link_create_lsm(prog_fd: int) -> int:
    """BPF_LINK_CREATE for a BPF LSM program (attach type BPF_LSM_MAC, hook from its BTF id)."""
    return link_create_tracing(prog_fd, AttachType.BPF_LSM_MAC)


def link_create_tracing(prog_fd: int, attach_type: AttachType | int) -> int:
    """BPF_LINK_CREATE for a program that attaches by the BTF id it was loaded with (fentry, fexit,
    fmod_ret, LSM)."""
    attr = _attr((0, "I", prog_fd), (8, "I", attach_type))
    return _bpf(Cmd.BPF_LINK_CREATE, attr, f"tracing prog fd {prog_fd}")


def link_detach(link_fd: int) -> None:
    """BPF_LINK_DETACH: detach the link's program although fds/pins to it remain."""
    _bpf(Cmd.BPF_LINK_DETACH, _attr((0, "I", link_fd)), f"link fd {link_fd}")


def prog_detach(target_fd: int, attach_type: AttachType | int, prog_fd: int = 0) -> None:
    """BPF_PROG_DETACH of a program attached with BPF_PROG_ATTACH (not through a link)."""
    attr = _attr((0, "I", target_fd), (4, "I", prog_fd), (8, "I", int(attach_type)))
    op = f"target fd {target_fd}, attach type {_name(AttachType, attach_type)}, prog fd {prog_fd}"
    _bpf(Cmd.BPF_PROG_DETACH, attr, op)


@dataclass(frozen=True)
class ProgQuery:
    """What BPF_PROG_QUERY reports for one cgroup hook."""

    attach_flags: int
    prog_ids: tuple[int, ...]
    # The link per program where the kernel says (tcx-style hooks); cgroup hooks on
    # 6.18 report 0 for every entry, so find cgroup links through `link_info` instead.
    link_ids: tuple[int, ...]
    revision: int


def prog_query(target_fd: int, attach_type: AttachType | int, *, effective: bool = False) -> ProgQuery:
    """BPF_PROG_QUERY: the programs attached to a cgroup hook (`effective`: inherited too)."""
    op = f"target fd {target_fd}, attach type {_name(AttachType, attach_type)}"
    flags = _BPF_F_QUERY_EFFECTIVE if effective else 0
    count = 64
    while True:
        ids = (ctypes.c_uint32 * count)()
        links = (ctypes.c_uint32 * count)()
        attr = _attr(
            (0, "I", target_fd),
            (4, "I", int(attach_type)),
            (8, "I", flags),
            (16, "Q", _addr(ids)),
            (24, "I", count),
            # link_ids is not allowed with the effective query.
            (40, "Q", 0 if effective else _addr(links)),
        )
        try:
            _bpf(Cmd.BPF_PROG_QUERY, attr, op)
        except SyscallError as e:
            if e.errno == _errno.ENOSPC:
                count *= 4
                continue
            raise
        attach_flags, = struct.unpack_from("I", attr, 12)
        n, = struct.unpack_from("I", attr, 24)
        revision, = struct.unpack_from("Q", attr, 56)
        link_ids = tuple(links[:n]) if not effective else (0,) * n
        return ProgQuery(attach_flags, tuple(ids[:n]), link_ids, revision)


# ---------------------------------------------------------------- pins


def obj_pin(fd: int, path: str | os.PathLike[str]) -> None:
    """BPF_OBJ_PIN: pin a program, map or link fd at `path` in bpffs."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(Cmd.BPF_OBJ_PIN, _attr((0, "Q", _addr(p)), (8, "I", fd)), f"fd {fd} at {os.fspath(path)}")


def obj_get(path: str | os.PathLike[str]) -> int:
    """BPF_OBJ_GET: open what is pinned at `path`; returns a new fd."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(Cmd.BPF_OBJ_GET, _attr((0, "Q", _addr(p))), os.fspath(path))


# ---------------------------------------------------------------- ids


def _next_id(cmd: Cmd, start_id: int) -> int | None:
    attr = _attr((0, "I", start_id))
    return int(struct.unpack_from("I", attr, 4)[0]) if _bpf_found(cmd, attr, f"after id {start_id}") else None


def prog_get_next_id(start_id: int = 0) -> int | None:
    """The next program id after `start_id`, or None at the end."""
    return _next_id(Cmd.BPF_PROG_GET_NEXT_ID, start_id)


def map_get_next_id(start_id: int = 0) -> int | None:
    """The next map id after `start_id`, or None at the end."""
    return _next_id(Cmd.BPF_MAP_GET_NEXT_ID, start_id)


def link_get_next_id(start_id: int = 0) -> int | None:
    """The next link id after `start_id`, or None at the end."""
    return _next_id(Cmd.BPF_LINK_GET_NEXT_ID, start_id)


def _iter_ids(cmd: Cmd) -> Iterator[int]:
    current = 0
    while (nxt := _next_id(cmd, current)) is not None:
        yield nxt
        current = nxt


def prog_ids() -> Iterator[int]:
    """Every program id in the kernel, ascending."""
    return _iter_ids(Cmd.BPF_PROG_GET_NEXT_ID)


def map_ids() -> Iterator[int]:
    """Every map id in the kernel, ascending."""
    return _iter_ids(Cmd.BPF_MAP_GET_NEXT_ID)


def link_ids() -> Iterator[int]:
    """Every link id in the kernel, ascending."""
    return _iter_ids(Cmd.BPF_LINK_GET_NEXT_ID)


def prog_get_fd_by_id(prog_id: int) -> int:
    """An fd for program `prog_id` (ENOENT once it is gone)."""
    return _bpf(Cmd.BPF_PROG_GET_FD_BY_ID, _attr((0, "I", prog_id)), f"prog id {prog_id}")


def map_get_fd_by_id(map_id: int) -> int:
    """An fd for map `map_id` (ENOENT once it is gone)."""
    return _bpf(Cmd.BPF_MAP_GET_FD_BY_ID, _attr((0, "I", map_id)), f"map id {map_id}")


def link_get_fd_by_id(link_id: int) -> int:
    """An fd for link `link_id` (ENOENT once it is gone)."""
    return _bpf(Cmd.BPF_LINK_GET_FD_BY_ID, _attr((0, "I", link_id)), f"link id {link_id}")


# ---------------------------------------------------------------- object info


class _ProgInfo(ctypes.Structure):
    # `struct bpf_prog_info` up to the fields we read (the kernel fills at most info_len).
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * _BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
        ("attach_btf_obj_id", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * _BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_id", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class _LinkInfo(ctypes.Structure):
    # type, id, prog_id, then a union (8-byte aligned at offset 16) that we read as raw
    # words; the layouts we decode are commented where they are read.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("u", ctypes.c_uint8 * 48),
    ]


def _get_info(fd: int, info: ctypes.Structure, what: str) -> None:
    attr = _attr((0, "I", fd), (4, "I", ctypes.sizeof(info)), (8, "Q", _addr(info)))
    _bpf(Cmd.BPF_OBJ_GET_INFO_BY_FD, attr, f"{what} fd {fd}")


@dataclass(frozen=True)
class ProgInfo:
    """What the kernel says about a loaded program."""

    id: int
    type: int
    name: str
    tag: str  # hex of the 8-byte tag: a hash of the translated instructions
    map_ids: tuple[int, ...]
    load_time_ns: int  # since boot
    created_by_uid: int
    run_cnt: int  # only counted while bpf stats are enabled

    @property
    def type_name(self) -> str:
        return _name(ProgType, self.type).removeprefix("BPF_PROG_TYPE_").lower()


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says about a map."""

    id: int
    type: int
    name: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int

    @property
    def type_name(self) -> str:
        return _name(MapType, self.type).removeprefix("BPF_MAP_TYPE_").lower()


@dataclass(frozen=True)
class LinkInfo:
    """What the kernel says about a link: its program and what it is attached to.

    `attach_type` is set for cgroup links, `cgroup_id` for cgroup links,
    `perf_event_type` and `target_name` (the tracepoint name) for perf-event
    links, `target_name` for raw tracepoint links.
    """

    id: int
    type: int
    prog_id: int
    attach_type: int | None = None
    cgroup_id: int | None = None
    perf_event_type: int | None = None
    target_name: str | None = None

    @property
    def type_name(self) -> str:
        return _name(LinkType, self.type).removeprefix("BPF_LINK_TYPE_").lower()


def obj_id(fd: int) -> int:
    """The kernel id of whatever program, map or link `fd` refers to.

    Every `bpf_*_info` starts with `type, id`, so one small info read serves all three.
    """
    head = (ctypes.c_uint32 * 2)()
    attr = _attr((0, "I", fd), (4, "I", ctypes.sizeof(head)), (8, "Q", _addr(head)))
    _bpf(Cmd.BPF_OBJ_GET_INFO_BY_FD, attr, f"fd {fd}")
    return int(head[1])


def prog_info(fd: int) -> ProgInfo:
    """BPF_OBJ_GET_INFO_BY_FD for a program fd, including its map ids."""
    info = _ProgInfo()
    _get_info(fd, info, "prog")
    n = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(n, 1))()
    if n:
        # Second pass: the kernel fills map_ids only into a buffer we provide.
        again = _ProgInfo()
        again.nr_map_ids = n
        again.map_ids = _addr(ids)
        _get_info(fd, again, "prog")
        n = min(n, again.nr_map_ids)
    return ProgInfo(
        id=info.id,
        type=info.type,
        name=info.name.decode(errors="replace"),
        tag=bytes(info.tag).hex(),
        map_ids=tuple(ids[:n]),
        load_time_ns=info.load_time,
        created_by_uid=info.created_by_uid,
        run_cnt=info.run_cnt,
    )


def map_info(fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD for a map fd."""
    info = _MapInfo()
    _get_info(fd, info, "map")
    return MapInfo(
        id=info.id,
        type=info.type,
        name=info.name.decode(errors="replace"),
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        flags=info.map_flags,
    )


def link_info(fd: int) -> LinkInfo:
    """BPF_OBJ_GET_INFO_BY_FD for a link fd, decoding cgroup, perf-event and raw-tp links."""
    info = _LinkInfo()
    _get_info(fd, info, "link")
    raw = bytes(info.u)
    if info.type == LinkType.BPF_LINK_TYPE_CGROUP:
        # struct { __u64 cgroup_id; __u32 attach_type; } cgroup;
        cgroup_id, attach_type = struct.unpack_from("<QI", raw, 0)
        return LinkInfo(info.id, info.type, info.prog_id, attach_type=attach_type, cgroup_id=cgroup_id)
    if info.type in (LinkType.BPF_LINK_TYPE_PERF_EVENT, LinkType.BPF_LINK_TYPE_RAW_TRACEPOINT):
        # perf_event: { __u32 type; __u32 :32; union { { __u64 name; __u32 name_len; ...} } }
        # raw_tracepoint: { __u64 tp_name; __u32 tp_name_len; }
        name_buf = ctypes.create_string_buffer(256)
        again = _LinkInfo()
        off = 8 if info.type == LinkType.BPF_LINK_TYPE_PERF_EVENT else 0
        struct.pack_into("<QI", again.u, off, _addr(name_buf), ctypes.sizeof(name_buf))
        try:
            _get_info(fd, again, "link")
        except SyscallError:
            # An event kind whose name we cannot read (e.g. a hardware event): report without it.
            again = info
        ptype = struct.unpack_from("<I", bytes(again.u), 0)[0]
        name = name_buf.value.decode(errors="replace") or None
        if info.type == LinkType.BPF_LINK_TYPE_PERF_EVENT:
            return LinkInfo(info.id, info.type, info.prog_id, perf_event_type=ptype, target_name=name)
        return LinkInfo(info.id, info.type, info.prog_id, target_name=name)
    return LinkInfo(info.id, info.type, info.prog_id)


# ---------------------------------------------------------------- map contents


def _elem_attr(fd: int, key: bytes | None, value_addr: int, flags: int = 0) -> tuple[
    ctypes.Array[ctypes.c_char], ctypes.Array[ctypes.c_char] | None
]:
    kbuf = ctypes.create_string_buffer(key, len(key)) if key is not None else None
    attr = _attr((0, "I", fd), (8, "Q", _addr(kbuf) if kbuf else 0), (16, "Q", value_addr), (24, "Q", flags))
    return attr, kbuf


def map_lookup_elem(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value at `key`, or None if absent. For per-CPU maps pass value_size * ncpus
    (each CPU's value rounded up to 8 bytes)."""
    vbuf = ctypes.create_string_buffer(value_size)
    attr, _k = _elem_attr(fd, key, _addr(vbuf))
    return vbuf.raw if _bpf_found(Cmd.BPF_MAP_LOOKUP_ELEM, attr, f"map fd {fd}") else None


def map_update_elem(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    """Set `key` to `value` (flags: 0 any, 1 BPF_NOEXIST, 2 BPF_EXIST)."""
    vbuf = ctypes.create_string_buffer(value, len(value))
    attr, _k = _elem_attr(fd, key, _addr(vbuf), flags)
    _bpf(Cmd.BPF_MAP_UPDATE_ELEM, attr, f"map fd {fd}")


def map_delete_elem(fd: int, key: bytes) -> bool:
    """Delete `key`; False if it was not there."""
    attr, _k = _elem_attr(fd, key, 0)
    return _bpf_found(Cmd.BPF_MAP_DELETE_ELEM, attr, f"map fd {fd}")


def map_get_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after `key` (the first key for None), or None at the end."""
    nbuf = ctypes.create_string_buffer(key_size)
    attr, _k = _elem_attr(fd, key, _addr(nbuf))
    return nbuf.raw if _bpf_found(Cmd.BPF_MAP_GET_NEXT_KEY, attr, f"map fd {fd}") else None


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a hash- or array-like map, in the kernel's iteration order."""
    key: bytes | None = None
    while (key := map_get_next_key(fd, key, key_size)) is not None:
        yield key


def possible_cpus() -> int:
    """How many CPUs per-CPU maps hold values for (possible, not online, CPUs)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    # e.g. "0-3" or "0,2-5": per-CPU maps are sized by the highest possible CPU + 1.
    last = max(int(part.split("-")[-1]) for part in text.split(","))
    return last + 1


def map_items(fd: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) for every entry; per-CPU maps yield every CPU's value concatenated.

    Entries deleted between listing and lookup are skipped (the map is live).
    """
    info = map_info(fd)
    value_size = info.value_size
    if info.type in (MapType.BPF_MAP_TYPE_PERCPU_HASH, MapType.BPF_MAP_TYPE_PERCPU_ARRAY,
                     MapType.BPF_MAP_TYPE_LRU_PERCPU_HASH):
        value_size = ((value_size + 7) // 8 * 8) * possible_cpus()
    for key in map_keys(fd, info.key_size):
        value = map_lookup_elem(fd, key, value_size)
        if value is not None:
            yield key, value

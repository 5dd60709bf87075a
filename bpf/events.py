"""Events from the policies' ring buffers, rendered as Tetragon export JSON, and per-policy counters.

Each loaded policy owns a ring buffer (`map_pl_events`) and a per-CPU counter
array (`map_pl_counters`: posted, enforced, would-have-enforced, lost), both
pinned, so a restarted agent reads the same buffers and counts on. Events carry
the Tetragon fields (`process_tracepoint` / `process_kprobe` / `process_uprobe`, `policy_name`,
`action`, `process.binary`, `node_name`, `time`) plus a top-level `palisade`
object with the enforcement mode and whether the action was taken, which
Tetragon's `jq` filters ignore.
"""
from __future__ import annotations

import base64
import datetime as _dt
import ipaddress
import os
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from . import elf, ia32, symbols, syscall, x64
from .compile import ACTION_NAMES, MODES, RET_SLOT, STACK_DEPTH, SYSCALL_PREFIXES, HookPlan, Operand, Plan
from .core.errors import LibbpfError
from .core.libbpf import RingBuffer
from .core.records import CAP_NAMES, cap_names
from .process_events import is_base

#: struct pl_event (compile._PRELUDE).
_EVENT = struct.Struct("<QQ10I8q256s256s256sii")
_COUNTERS = ("posted", "enforced", "would_have_enforced", "lost")
_ENFORCING = (1, 2, 3, 5)  # sigkill, signal, override, set
#: Tetragon's action names of the requests the agent sends (bpf.compile.Callout).
_CALLOUT_ACTIONS = {"GetUrl": "KPROBE_ACTION_GETURL", "DnsLookup": "KPROBE_ACTION_DNSLOOKUP"}
#: The event kinds a policy's hooks produce (each carries `policy_name` and the process).
POLICY_EVENT_KINDS = ("process_tracepoint", "process_kprobe", "process_uprobe", "process_lsm", "process_usdt")
_FAMILY_NAMES = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6"}
_SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}
_PROTOCOL_NAMES = {6: "IPPROTO_TCP", 17: "IPPROTO_UDP", 1: "IPPROTO_ICMP", 58: "IPPROTO_ICMPV6", 255: "IPPROTO_RAW",
                   262: "IPPROTO_MPTCP"}
_TCP_STATES = ("", "TCP_ESTABLISHED", "TCP_SYN_SENT", "TCP_SYN_RECV", "TCP_FIN_WAIT1", "TCP_FIN_WAIT2",
               "TCP_TIME_WAIT", "TCP_CLOSE", "TCP_CLOSE_WAIT", "TCP_LAST_ACK", "TCP_LISTEN", "TCP_CLOSING",
               "TCP_NEW_SYN_RECV")
#: struct pl_sk and struct pl_cr of the generated source (bpf/compile.py)
_PL_SK = struct.Struct("<HHHHHHIIIQ16s16s")
_PL_CR = struct.Struct("<IIIIIIIIIIQQQ")
#: Tetragon's argument shape of each path-like kernel object
_PATH_ARGS = {"file": "file_arg", "path": "path_arg", "linux_binprm": "linux_binprm_arg", "dentry": "path_arg",
              "kiocb": "file_arg"}
#: The packed structs of the other kernel objects (struct pl_sb, pl_ba, pl_pe, pl_bm, pl_md, pl_un of
#: compile._OBJECTS)
_PL_SB = struct.Struct("<IIIIHHHH16s16s")
_PL_BA = struct.Struct("<II16s")
_PL_PE = struct.Struct("<IIQQ232s")
_PL_BM = struct.Struct("<IIII16s")
_PL_MD = struct.Struct("<QII56s")
_PL_UN = struct.Struct("<iIII")
#: uapi/linux/bpf.h and perf_event.h names, as Tetragon prints them (an unknown value as its number)
_PROG_TYPES = ("UNSPEC", "SOCKET_FILTER", "KPROBE", "SCHED_CLS", "SCHED_ACT", "TRACEPOINT", "XDP", "PERF_EVENT",
               "CGROUP_SKB", "CGROUP_SOCK", "LWT_IN", "LWT_OUT", "LWT_XMIT", "SOCK_OPS", "SK_SKB", "CGROUP_DEVICE",
               "SK_MSG", "RAW_TRACEPOINT", "CGROUP_SOCK_ADDR", "LWT_SEG6LOCAL", "LIRC_MODE2", "SK_REUSEPORT",
               "FLOW_DISSECTOR", "CGROUP_SYSCTL", "RAW_TRACEPOINT_WRITABLE", "CGROUP_SOCKOPT", "TRACING",
               "STRUCT_OPS", "EXT", "LSM", "SK_LOOKUP", "SYSCALL")
_MAP_TYPES = ("UNSPEC", "HASH", "ARRAY", "PROG_ARRAY", "PERF_EVENT_ARRAY", "PERCPU_HASH", "PERCPU_ARRAY",
              "STACK_TRACE", "CGROUP_ARRAY", "LRU_HASH", "LRU_PERCPU_HASH", "LPM_TRIE", "ARRAY_OF_MAPS",
              "HASH_OF_MAPS", "DEVMAP", "SOCKMAP", "CPUMAP", "XSKMAP", "SOCKHASH", "CGROUP_STORAGE",
              "REUSEPORT_SOCKARRAY", "PERCPU_CGROUP_STORAGE", "QUEUE", "STACK", "SK_STORAGE", "DEVMAP_HASH",
              "STRUCT_OPS", "RINGBUF", "INODE_STORAGE", "TASK_STORAGE", "BLOOM_FILTER")
_PERF_TYPES = ("HARDWARE", "SOFTWARE", "TRACEPOINT", "HW_CACHE", "RAW", "BREAKPOINT", "MAX")
#: Tetragon's TaintedBitsType: the module taint flags it names, by their mask
_TAINTS = ((1, "TAINT_PROPRIETARY_MODULE"), (2, "TAINT_FORCED_MODULE"), (4, "TAINT_FORCED_UNLOAD_MODULE"),
           (1024, "TAINT_STAGED_MODULE"), (4096, "TAINT_OUT_OF_TREE_MODULE"), (8192, "TAINT_UNSIGNED_MODULE"),
           (32768, "TAINT_KERNEL_LIVE_PATCH_MODULE"), (262144, "TAINT_TEST_MODULE"))


@dataclass(frozen=True)
class Counters:
    posted: int = 0
    enforced: int = 0
    would_have_enforced: int = 0
    lost: int = 0

    def to_json(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in _COUNTERS}


class RawEvent(NamedTuple):
    """One ring-buffer record (struct pl_event). A NamedTuple, not a frozen dataclass: it is built for
    every event, and a frozen dataclass's field-by-field __init__ costs more than decoding the record."""

    ktime: int
    cgroup: int
    pid: int
    tid: int
    uid: int
    hook: int
    selector: int
    action: int
    mode: int
    acted: bool
    sig: int
    ints: tuple[int, ...]
    strs: tuple[bytes, bytes]
    binary: str
    #: The hook ran for a 32-bit (ia32) syscall.
    compat: bool = False
    #: 1 + the ids in the policy's `pl_stacks` of the call's kernel and user stacks (0 or less: none).
    kstack: int = 0
    ustack: int = 0

    @classmethod
    def unpack(cls, data: bytes) -> RawEvent:
        (ktime, cgroup, pid, tid, uid, hook, sel, action, mode, acted, sig, flags, *rest) = _EVENT.unpack_from(data)
        return cls(ktime, cgroup, pid, tid, uid, hook, sel, action, mode, bool(acted), sig, tuple(rest[:8]),
                   (rest[8], rest[9]), _cstr(rest[10]), bool(flags & 4), rest[11], rest[12])


def read_counters(map_fd: int) -> Counters:
    ncpu = _possible_cpus()
    vals = []
    for i in range(len(_COUNTERS)):
        raw = syscall.map_lookup_elem(map_fd, i.to_bytes(4, "little"), 8 * ncpu)
        vals.append(sum(struct.unpack_from(f"<{ncpu}Q", raw)) if raw else 0)
    return Counters(*vals)


def render(raw: RawEvent, plan: Plan, node_name: str, clock_offset_ns: int,
           stacks_fd: int | None = None) -> dict[str, Any]:
    """The Tetragon-shaped event for one ring-buffer record of `plan`'s policy; `stacks_fd`: its `pl_stacks`
    map, where the stacks an event carries are."""
    hook = plan.hook(raw.hook)
    exe, arguments, exec_id = _proc_info(raw.pid, node_name)
    process: dict[str, Any] = {
        "exec_id": exec_id,
        "pid": raw.pid,
        "tid": raw.tid,
        "uid": raw.uid,
        "binary": raw.binary or exe,
        "arguments": arguments,
        "flags": "execve",
    }
    if hook is not None and hook.subsystem == "sched" and is_base(plan.policy):
        return _process_event(raw, hook, process, node_name, clock_offset_ns)
    if hook is not None and hook.event_kind == "process_loader":
        loaded: dict[str, Any] = {"process": process, "path": _cstr(raw.strs[0])}
        bid = _build_id(loaded["path"], raw.ints[0])
        if bid:
            loaded["buildid"] = base64.b64encode(bid).decode()  # protobuf JSON's bytes
        return {"process_loader": loaded, "node_name": node_name, "time": _iso(raw.ktime + clock_offset_ns),
                "palisade": _palisade(raw, plan)}
    action = ACTION_NAMES.get(raw.action, "KPROBE_ACTION_UNKNOWN")
    body: dict[str, Any] = {"process": process}
    if hook is None or hook.event_kind == "process_tracepoint":
        body["subsys"] = hook.subsystem if hook else ""
        body["event"] = hook.event if hook else ""
        kind = "process_tracepoint"
    elif hook.uprobe is not None:
        body.update(_uprobe_place(hook))
        kind = "process_uprobe"
    elif hook.usdt is not None:  # Tetragon's process_usdt: the policy's path, the probe's provider and name
        body.update({"path": hook.usdt.path, "provider": hook.usdt.provider, "name": hook.usdt.name})
        kind = "process_usdt"
    else:
        body["function_name"] = _function_name(hook, raw)
        kind = hook.event_kind  # process_kprobe, or process_lsm for an lsmhook
    if hook is not None:
        body["args"] = [_arg(o, raw) for o in hook.operands]
    if hook is not None and hook.return_type == "sock":  # a returned struct sock, in Tetragon's shape
        body["return"] = {"sock_arg": _sock(raw.strs[hook.return_slot]) if 0 <= hook.return_slot < 2 else {}}
    elif hook is not None and hook.return_type is not None:
        body["return"] = _int_arg(hook.return_type, raw.ints[RET_SLOT])
    if stacks_fd is not None and raw.kstack > 0:
        frames = symbols.kernel_frames(_stack(stacks_fd, raw.kstack - 1))
        if frames:
            body["kernel_stack_trace"] = frames
    if stacks_fd is not None and raw.ustack > 0:
        frames = symbols.user_frames(raw.pid, _stack(stacks_fd, raw.ustack - 1))
        if frames:
            body["user_stack_trace"] = frames
    body["policy_name"] = plan.policy.name
    if hook is not None and hook.message:
        body["message"] = hook.message
    if hook is not None and hook.tags:
        body["tags"] = list(hook.tags)
    if plan.policy.namespace:
        body["policy_namespace"] = plan.policy.namespace
    callouts = plan.callouts_of(raw.hook, raw.selector)
    if callouts and raw.action == 0:  # nothing else done in the kernel: the callout names it, as in Tetragon
        action = _CALLOUT_ACTIONS[callouts[-1].action]
    body["action"] = action
    wall = raw.ktime + clock_offset_ns
    return {
        kind: body,
        "node_name": node_name,
        "time": _iso(wall),
        "palisade": _palisade(raw, plan),
    }


def _palisade(raw: RawEvent, plan: Plan) -> dict[str, Any]:
    """What Palisade adds to a policy's event: the mode it ran in, whether it acted, which policy, and the
    GetUrl/DnsLookup requests the agent is to send for it (agent/callouts.py says there what became of them)."""
    out: dict[str, Any] = {
        "mode": MODES[raw.mode] if raw.mode < len(MODES) else "unknown",
        "acted": raw.acted,
        "would_have_acted": (not raw.acted) and raw.action in _ENFORCING,
        "selector": raw.selector,
        "cgroup_id": raw.cgroup,
        "policy_key": plan.policy.key,
    }
    callouts = plan.callouts_of(raw.hook, raw.selector)
    if callouts:
        out["callouts"] = [c.to_json() for c in callouts]
    return out


_BUILD_IDS: dict[tuple[str, int], bytes | None] = {}


def _build_id(path: str, inode: int) -> bytes | None:
    """The build ID of the file a loader event names, read from the file at its path, as long as that is
    still the inode that was mapped (cached by path and inode: every process maps the same libraries)."""
    key = (path, inode)
    if key not in _BUILD_IDS:
        try:
            same = os.stat(path).st_ino == inode
        except OSError:
            same = False
        if len(_BUILD_IDS) > 4096:
            _BUILD_IDS.clear()
        _BUILD_IDS[key] = elf.build_id(path) if same else None
    return _BUILD_IDS[key]


_EXEC_BINARY: dict[int, tuple[str, str]] = {}


def _process_event(raw: RawEvent, hook: HookPlan, process: dict[str, Any], node_name: str,
                   clock_offset_ns: int) -> dict[str, Any]:
    """Tetragon's process_exec / process_exit for the base sensor's records."""
    if hook.event == "sched_process_exec":
        if len(_EXEC_BINARY) > 65536:
            _EXEC_BINARY.clear()
        _EXEC_BINARY[raw.pid] = (process["binary"], process["arguments"])
        kind = "process_exec"
    else:
        # at exit the memory map is gone, so /proc/<pid>/exe no longer answers: use what exec saw
        binary, arguments = _EXEC_BINARY.pop(raw.pid, (process["binary"], process["arguments"]))
        process["binary"], process["arguments"] = binary, arguments
        kind = "process_exit"
    return {kind: {"process": process}, "node_name": node_name, "time": _iso(raw.ktime + clock_offset_ns)}


def _uprobe_place(hook: HookPlan) -> dict[str, Any]:
    """Where a uprobe is, as Tetragon's process_uprobe says: the policy's path, and the symbol or, for a
    probe placed by offset or address, the file offset (a uint64: a string in protojson)."""
    u = hook.uprobe
    assert u is not None
    if u.symbol is not None:
        return {"path": u.path, "symbol": u.symbol}
    site = hook.sites[0] if hook.sites else None
    offset = u.offset if u.offset is not None else (site.offset if site is not None else None)
    # an address's offset is known to the plan that placed it (an adopted policy's plan is not placed)
    return {"path": u.path} if offset is None else {"path": u.path, "offset": str(offset)}


def _arg(o: Operand, raw: RawEvent) -> dict[str, Any]:
    out: dict[str, Any]
    obj = _object_arg(o, raw)
    if obj is not None:
        out = obj
    elif o.kind == "str" and o.type_name in _PATH_ARGS:
        mode = raw.ints[o.position % 8]
        body = {"path": _cstr(raw.strs[o.slot]) if o.slot < 2 else ""}
        if mode:
            body["permission"] = stat.filemode(mode)
        out = {_PATH_ARGS[o.type_name]: body}
    elif o.kind == "str":
        text = _cstr(raw.strs[o.slot]) if o.slot < 2 else ""
        out = {"string_arg": text}
    elif o.kind == "sock":
        out = {"sock_arg": _sock(raw.strs[o.slot]) if o.slot < 2 else {}}
    elif o.kind == "cred":
        out = {"process_credentials_arg": _cred(raw.strs[o.slot]) if o.slot < 2 else {}}
    elif o.kind == "sockaddr":
        packed = raw.ints[o.position % 8]
        fam, port = (packed >> 16) & 0xFFFF, packed & 0xFFFF
        addr = ""
        if o.slot < 2:
            b = raw.strs[o.slot]
            if fam == 2:
                addr = str(ipaddress.IPv4Address(b[:4]))
            elif fam == 10:
                addr = str(ipaddress.IPv6Address(b[:16]))
        out = {"sockaddr_arg": {"family": _FAMILY_NAMES.get(fam, str(fam)), "addr": addr, "port": port}}
    else:
        out = _int_arg(o.type_name, raw.ints[o.position % 8])
    if o.label:
        out["label"] = o.label
    return out


_IA32_NAMES = {v: k for k, v in ia32.NUMBERS.items()}


def _function_name(hook: HookPlan, raw: RawEvent) -> str:
    """The kernel function an event's hook ran on, as Tetragon names it: a syscall (`syscall: true`, whether
    on its tracepoint or on its entry) by the entry the call took, `__x64_sys_openat` or `__ia32_sys_openat`."""
    if hook.syscall_ids:
        return _syscall_name(raw.ints[RET_SLOT])
    if hook.function_ips:  # a generated_ftrace list: the function by the address the kprobe ran at
        return symbols.kernel_function(raw.ints[RET_SLOT] & 0xFFFFFFFFFFFFFFFF) or hook.target
    call = hook.event.removeprefix("sys_enter_") if hook.subsystem == "syscalls" and hook.event else None
    if call and _syscall_of(hook.target) == call:  # a syscall kprobe on its tracepoint (not a socket hook's)
        return f"__{'ia32' if raw.compat else 'x64'}_sys_{call}"
    attach = hook.sites[0].attach if hook.sites else None
    if attach and attach.startswith(("__x64_sys_", "__ia32_sys_", "__ia32_compat_sys_")):
        return attach
    return hook.target


def _stack(fd: int, stack_id: int) -> list[int]:
    """The addresses of stack `stack_id` of a `pl_stacks` map, innermost first."""
    raw = syscall.map_lookup_elem(fd, struct.pack("<I", stack_id), 8 * STACK_DEPTH)
    if not raw:
        return []
    return [a for a in struct.unpack(f"<{STACK_DEPTH}Q", raw) if a]


def _syscall_of(target: str) -> str:
    """The call a syscall kprobe's target names (`sys_openat`, `__x64_sys_openat`, `openat`)."""
    for prefix in SYSCALL_PREFIXES:
        if target.startswith(prefix):
            return target[len(prefix):]
    return target


def _syscall_name(sysid: int) -> str:
    """The function a syscall number (bit 32: a compat call) enters, as Tetragon names it."""
    nr, compat = sysid & 0xFFFFFFFF, (sysid >> 32) & 1
    name = (_IA32_NAMES if compat else x64.NAMES).get(nr)
    if name is None:
        return f"syscall {nr}" + (" (ia32)" if compat else "")
    return f"__ia32_sys_{name}" if compat else f"__x64_sys_{name}"


def _object_arg(o: Operand, raw: RawEvent) -> dict[str, Any] | None:
    """Tetragon's shape of a kernel-object argument other than a path, sock or cred (compile._OBJECT_KINDS),
    or None for the others. Scalars that are zero are left out, as protojson leaves them; wrapped ones (the
    user namespace's ids, a capability's value, a loaded module's signature_ok) are kept."""
    t, v = o.type_name, raw.ints[o.position % 8]
    b = raw.strs[o.slot] if 0 <= o.slot < 2 else b"\0" * 256
    if t == "capability":
        name = CAP_NAMES[v] if 0 <= v < len(CAP_NAMES) else None
        return {"capability_arg": {"value": v, **({"name": name} if name else {})}}
    if t == "net_device":
        return {"net_dev_arg": _nonzero({"name": _cstr(b)})}
    if t == "skb":
        return {"skb_arg": _skb(b)}
    if o.kind == "buf":
        n, size = (v >> 48) & 0xFFFF, v & 0xFFFFFFFFFFFF
        data = base64.b64encode(b[:min(n, len(b))]).decode()
        if size > n:
            return {"truncated_bytes_arg": {"bytes_arg": data, "orig_size": str(size)}}  # uint64: a string
        return {"bytes_arg": data}
    if t == "bpf_attr":
        prog_type, insns, name = _PL_BA.unpack_from(b)
        return {"bpf_attr_arg": _nonzero({"ProgType": _named("BPF_PROG_TYPE_", _PROG_TYPES, prog_type),
                                          "InsnCnt": insns, "ProgName": _cstr(name)})}
    if t == "perf_event":
        typ, _, config, offset, func = _PL_PE.unpack_from(b)
        return {"perf_event_arg": _nonzero({"KprobeFunc": _cstr(func), "Type": _named("PERF_TYPE_", _PERF_TYPES, typ),
                                            "Config": str(config) if config else "",
                                            "ProbeOffset": str(offset) if offset else ""})}
    if t == "bpf_map":
        map_type, key, value, entries, name = _PL_BM.unpack_from(b)
        return {"bpf_map_arg": _nonzero({"MapType": _named("BPF_MAP_TYPE_", _MAP_TYPES, map_type), "KeySize": key,
                                         "ValueSize": value, "MaxEntries": entries, "MapName": _cstr(name)})}
    if t in ("module", "load_info"):
        taints, sig_ok, _, name = _PL_MD.unpack_from(b)
        mod: dict[str, Any] = _nonzero({"name": _cstr(name)})
        if t == "load_info":  # only the loader knows whether the signature checked out
            mod["signature_ok"] = bool(sig_ok)
        tainted = [n for mask, n in _TAINTS if taints & mask]
        if tainted:
            mod["tainted"] = tainted
        return {"module_arg": mod}
    if t == "user_namespace":
        level, uid, gid, inum = _PL_UN.unpack_from(b)
        return {"user_ns_arg": {"level": level, "uid": uid, "gid": gid,
                                "ns": _nonzero({"inum": inum, "is_host": level == 0})}}
    return None


def _addresses(fam: int, saddr: bytes, daddr: bytes) -> tuple[str, str]:
    """Source and destination of a socket or packet, as text (empty outside AF_INET/AF_INET6)."""
    if fam == 2:
        return str(ipaddress.IPv4Address(saddr[:4])), str(ipaddress.IPv4Address(daddr[:4]))
    if fam == 10:
        return str(ipaddress.IPv6Address(saddr)), str(ipaddress.IPv6Address(daddr))
    return "", ""


def _skb(b: bytes) -> dict[str, Any]:
    hash_, length, prio, mark, fam, proto, sport, dport, saddr, daddr = _PL_SB.unpack_from(b)
    src, dst = _addresses(fam, saddr, daddr)
    return _nonzero({"hash": hash_, "len": length, "priority": prio, "mark": mark, "saddr": src, "daddr": dst,
                     "sport": sport, "dport": dport, "proto": proto,
                     "protocol": (_PROTOCOL_NAMES.get(proto) or ("IPPROTO_IP" if proto == 0 else str(proto)))
                     if fam else "",
                     "family": _FAMILY_NAMES.get(fam, str(fam)) if fam else ""})


def _named(prefix: str, names: tuple[str, ...], v: int) -> str:
    return prefix + names[v] if 0 <= v < len(names) else str(v)


def _nonzero(d: dict[str, Any]) -> dict[str, Any]:
    """`d` without its zero and empty values, as protojson prints a message's scalar fields."""
    return {k: x for k, x in d.items() if x not in (0, "", False)}


def _int_arg(t: str, v: int) -> dict[str, Any]:
    if t in ("uint32", "uint", "u32"):
        return {"uint_arg": v & 0xFFFFFFFF}
    if t in ("size_t", "uint64", "u64", "ulong"):
        return {"size_arg": v & 0xFFFFFFFFFFFFFFFF}
    if t in ("int", "int32", "sint32", "fd", "int8", "int16"):
        return {"int_arg": v}
    return {"long_arg": v}


def _sock(b: bytes) -> dict[str, Any]:
    fam, typ, proto, state, sport, dport, mark, prio, _, cookie, saddr, daddr = _PL_SK.unpack_from(b)
    src, dst = _addresses(fam, saddr, daddr)
    out: dict[str, Any] = {"family": _FAMILY_NAMES.get(fam, str(fam)), "type": _SOCK_TYPES.get(typ, str(typ)),
                           # 0 until the family's create sets it (a sock sk_alloc returns): Tetragon's IPPROTO_IP
                           "protocol": _PROTOCOL_NAMES.get(proto) or ("IPPROTO_IP" if proto == 0 else str(proto)),
                           "mark": mark, "priority": prio,
                           "saddr": src, "daddr": dst, "sport": sport, "dport": dport,
                           "cookie": str(cookie)}  # uint64: a string in protojson, as Tetragon prints it
    if fam in (2, 10) and 0 < state < len(_TCP_STATES):
        out["state"] = _TCP_STATES[state]
    return out


def _cred(b: bytes) -> dict[str, Any]:
    uid, gid, suid, sgid, euid, egid, fsuid, fsgid, securebits, _, perm, eff, inh = _PL_CR.unpack_from(b)
    out: dict[str, Any] = {"uid": uid, "gid": gid, "euid": euid, "egid": egid, "suid": suid, "sgid": sgid,
                           "fsuid": fsuid, "fsgid": fsgid,
                           "caps": {"permitted": cap_names(perm), "effective": cap_names(eff),
                                    "inheritable": cap_names(inh)}}
    if securebits:
        out["securebits"] = securebits
    return out


class EventStream:
    """Drains the ring buffers of several policies (fresh or adopted) through one libbpf ring_buffer."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._sources: dict[str, tuple[int, Plan]] = {}
        #: Each policy's `pl_stacks` map, for those whose events carry stacks.
        self._stacks: dict[str, int] = {}
        self._rings: RingBuffer | None = None
        self._pending: list[dict[str, Any]] = []
        self._dirty = False
        self._offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def add(self, key: str, ring_fd: int, plan: Plan, stacks_fd: int | None = None) -> None:
        """Read policy `key`'s ring buffer (and `stacks_fd`, its stack map; the stream owns both fds)."""
        self.remove(key)
        self._sources[key] = (ring_fd, plan)
        if stacks_fd is not None:
            self._stacks[key] = stacks_fd
        self._dirty = True

    def remove(self, key: str) -> None:
        sfd = self._stacks.pop(key, None)
        if sfd is not None:
            os.close(sfd)
        src = self._sources.pop(key, None)
        if src is not None:
            self._free()
            os.close(src[0])
            self._dirty = True

    def close(self) -> None:
        self._free()
        for fd, _ in self._sources.values():
            os.close(fd)
        self._sources.clear()
        for fd in self._stacks.values():
            os.close(fd)
        self._stacks.clear()

    def poll(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Every event available now, waiting up to `timeout` seconds for the first one."""
        if self._dirty:
            self._rebuild()
        if self._rings is None:
            if timeout > 0:
                time.sleep(timeout)
            return []
        self._rings.poll(int(timeout * 1000))
        self._rings.consume()
        out, self._pending = self._pending, []
        return out

    def _free(self) -> None:
        if self._rings is not None:
            self._rings.close()
            self._rings = None
            self._dirty = True

    def _rebuild(self) -> None:
        self._free()
        self._dirty = False
        for key, (fd, plan) in self._sources.items():
            try:
                if self._rings is None:
                    self._rings = RingBuffer(fd, self._handler(plan, self._stacks.get(key)))
                else:
                    self._rings.add(fd, self._handler(plan, self._stacks.get(key)))
            except LibbpfError as e:
                raise OSError(f"cannot read the ring buffer of policy {key}: {e}") from None

    def _handler(self, plan: Plan, stacks_fd: int | None = None) -> Callable[[bytes], None]:
        def handle(data: bytes) -> None:
            try:
                raw = RawEvent.unpack(data)
                self._pending.append(render(raw, plan, self.node_name, self._offset, stacks_fd))
            except Exception as e:  # a bad record must not stop the stream
                self._pending.append({"palisade_error": f"undecodable event of {plan.policy.key}: {e}"})

        return handle


# --------------------------------------------------------------------------- helpers


_PROC_CACHE: dict[int, tuple[float, tuple[str, str, str]]] = {}
_PROC_TTL = 0.5


def _proc_info(pid: int, node: str) -> tuple[str, str, str]:
    """(executable, arguments, exec_id) of a live process from /proc, cached briefly: a burst of
    events from one process costs one read, and a pid reused after the TTL is read afresh."""
    now = time.monotonic()
    hit = _PROC_CACHE.get(pid)
    if hit is not None and now - hit[0] < _PROC_TTL:
        return hit[1]
    info = (_proc_exe(pid), _proc_args(pid), _exec_id(node, pid))
    if len(_PROC_CACHE) > 4096:
        _PROC_CACHE.clear()
    _PROC_CACHE[pid] = (now, info)
    return info


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def _proc_exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return ""


def _proc_args(pid: int) -> str:
    try:
        parts = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    return " ".join(p.decode("utf-8", "replace") for p in parts[1:] if p)


def _exec_id(node: str, pid: int) -> str:
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "0"
    return base64.b64encode(f"{node}:{start}:{pid}".encode()).decode()


_iso_second: list[Any] = [None, ""]  # the last second formatted: events come in bursts within one second


def _iso(ns: int) -> str:
    sec = ns // 1_000_000_000
    if _iso_second[0] != sec:
        _iso_second[:] = [sec, _dt.datetime.fromtimestamp(sec, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_iso_second[1]}.{ns % 1_000_000_000:09d}Z"


_ncpu: int | None = None


def _possible_cpus() -> int:
    global _ncpu
    if _ncpu is None:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        n = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            n += (int(hi) - int(lo) + 1) if hi else 1
        _ncpu = n
    return _ncpu


"""TracingPolicy → a load plan: C source for a CO-RE object, the attach sites, initial map contents.

Pure: no root, no kernel, no compiler. The reconciler calls `check` to learn whether
a policy can run on a kernel with the given features; the engine calls
`compile_policy` and loads the plan. A policy that uses anything outside the
subset is refused as a whole, with every reason (`Unsupported`).

How a policy maps onto this engine:
- `tracepoints` run where they are; `kprobes` with `syscall: true` run on the
  matching `syscalls:sys_enter_<name>` tracepoint (argument `index` i of the call
  is format field 5+i there);
- `kprobes` on socket creation (`security_socket_create`, `__sys_socket`) and
  outbound connect (`security_socket_connect`, `tcp_connect`, `tcp_v4_connect`,
  `tcp_v6_connect`) run on the cgroup `sock_create` / `connect4` / `connect6`
  hooks when a selector denies (`Override` → EPERM), otherwise on the
  `sys_enter_socket` / `sys_enter_connect` tracepoints (where `Sigkill`/`Signal` work);
- selectors are tried in order and the first that matches decides (Tetragon);
  a hook without selectors posts every call;
- string matching (`matchBinaries`, string `matchArgs`) is done with three maps
  shared by the policy's filters: exact values in a hash, prefixes in an LPM
  trie, postfixes in an LPM trie of reversed strings; each filter owns one bit
  of the u64 the maps return;
- every hook program first skips the engine's own processes (no action, no
  event): their tgids are in `pl_self`, a map the engine pins once per pin root
  (`PL_SELF_PIN`), so a policy such as block-bpf-load never kills the agent
  that loads the next policy (Tetragon exempts itself too).
"""
from __future__ import annotations

import ipaddress
import re
import struct
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from wire.values import State

from . import ia32, loader, scope, x64
from .core.records import CAP_NAMES
from .errors import Unsupported, format_path
from .policy import (
    Action,
    Arg,
    ArgFilter,
    BinariesFilter,
    CallList,
    CapabilitiesFilter,
    Hook,
    NamespaceChangesFilter,
    NamespacesFilter,
    PidsFilter,
    Selector,
    TracingPolicy,
    UprobeTarget,
    UsdtTarget,
)
from .tpformat import Field, Formats, builtin_formats
from .uprobes import Resolved, Unresolvable
from .usdt import DEREF, Probe, UsdtUnresolvable

#: The engine's modes are the ladder's states (wire.values.State), in ladder order: a mode's index (its
#: rank) is `pl_cfg.mode` in the kernel.
MODES: tuple[State, ...] = tuple(sorted(State, key=lambda s: s.rank))
#: `pl_cfg.mode` of a policy being unloaded: its programs return at once (set before its links go).
MODE_OFF = len(MODES)
STRLEN = 256
#: Strings shorter than this are compared through a table with a 64-byte key (`pl_str_eq64`): hashing
#: and comparing one cache line instead of four is most of an exec check's cost, and paths are short.
SHORT_STRLEN = 64
MAX_SELECTORS = 5
MAX_STRING_FILTERS = 64
#: String (and sockaddr) operands a hook may read; the first two are copied into events.
MAX_STRING_OPERANDS = 4
#: Engine processes exempt from every policy (the `pl_self` map shared by the policies of a pin root).
SELF_ENTRIES = 64
#: Ring buffer per policy: 256 pages = 1 MiB, about 1,180 events before the reader must drain.
RING_PAGES = 256

ACTION_NAMES = {0: "KPROBE_ACTION_POST", 1: "KPROBE_ACTION_SIGKILL", 2: "KPROBE_ACTION_SIGNAL",
                3: "KPROBE_ACTION_OVERRIDE", 4: "KPROBE_ACTION_NOPOST", 5: "KPROBE_ACTION_SET"}
_ACT_POST, _ACT_SIGKILL, _ACT_SIGNAL, _ACT_OVERRIDE, _ACT_NOPOST, _ACT_SET = range(6)

SYSCALL_PREFIXES = ("__x64_sys_", "__arm64_sys_", "__se_sys_", "__do_sys_", "sys_")
_SCHED_EVENTS = ("sched_process_exec", "sched_process_fork", "sched_process_exit")
_SOCKET_CALLS = {"security_socket_create": True, "__sys_socket": False, "__sock_create": True,
                 "sock_create": False}  # value: `type` excludes SOCK_NONBLOCK/CLOEXEC flags
#: call → (index of the sockaddr/sock argument, what the call sees: "any" socket, "tcp", "tcp4", "tcp6")
_CONNECT_CALLS = {
    "security_socket_connect": (1, "any"),
    "__sys_connect": (1, "any"),
    "tcp_connect": (0, "tcp"),
    "tcp_v4_connect": (1, "tcp4"),
    "tcp_v6_connect": (1, "tcp6"),
}
#: The cgroup hooks where a socket reaches a peer: connect4/6 see connect() and TCP Fast Open
#: (sendto/sendmsg with MSG_FASTOPEN connects through the same pre-connect hook), sendmsg4/6 see a
#: datagram sent to an address without connect(). TCP-only calls need only the connect hooks.
_EGRESS_SITES = {"any": ("connect4", "connect6", "sendmsg4", "sendmsg6"), "tcp": ("connect4", "connect6"),
                 "tcp4": ("connect4", "connect6"), "tcp6": ("connect6",)}
_IPPROTO_TCP, _IPPROTO_MPTCP = 6, 262
#: C: the destination of a connect6/sendmsg6 context is an IPv4-mapped IPv6 address (::ffff:a.b.c.d).
_V4MAPPED = "(ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == 0xffff0000)"
_INT_TYPES = {
    "int": "s32", "sint32": "s32", "int32": "s32", "uint32": "u32", "uint": "u32", "u32": "u32",
    "int8": "s8", "uint8": "u8", "int16": "s16", "uint16": "u16", "sint16": "s16",
    "int64": "s64", "sint64": "s64", "long": "s64", "s64": "s64", "uint64": "u64", "u64": "u64",
    "size_t": "u64", "ulong": "u64", "fd": "s32", "syscall64": "s64", "nop": "u64", "kernel_cap_t": "u64",
    "cap_inheritable": "u64", "cap_permitted": "u64", "cap_effective": "u64",
}
#: User ABI structs a syscall argument points to: member → byte offset (every member a u64).
_USER_STRUCTS = {"clone_args": {"flags": 0, "pidfd": 8, "child_tid": 16, "parent_tid": 24, "exit_signal": 32,
                                "cgroup": 80},
                 "open_how": {"flags": 0, "mode": 8, "resolve": 16}}
_SYSCALL_STRUCTS = {"sys_enter_clone3": "clone_args", "sys_enter_openat2": "open_how"}
_STRING_TYPES = ("string", "char_buf", "filename", "const_buf")
#: matchNamespaces kinds (Tetragon's names, lower-cased) → the key kind in `pl_ns`; /proc/<pid>/ns file names.
_NS_NAMES = ("Uts", "Ipc", "Mnt", "Pid", "PidForChildren", "Net", "Time", "TimeForChildren", "Cgroup", "User")
_NAMESPACES = {n.lower(): k for k, n in enumerate(_NS_NAMES)}
NS_FILES = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user")
_CAP_BITS = {("CAP_DAC_OVERRIDE" if n == "DAC_OVERRIDE" else n): b for b, n in enumerate(CAP_NAMES)}
#: A capability set's place in `struct pl_base` (what a process had at its exec).
_CAP_SETS = {"effective": 0, "inheritable": 1, "permitted": 2}
#: Kernel objects a kprobe argument may point to, read through BTF; the path-like ones are compared as
#: strings (matchArgs Equal/Prefix/Postfix on the path), as Tetragon does.
_PATH_TYPES = ("file", "path", "linux_binprm", "dentry", "kiocb")
#: The other kernel objects a kprobe argument may be (Tetragon's types) → the operand kind it is read as
#: (`_read_object`): "skb" and "sockaddr" take the socket operators of matchArgs, "str" and "buf" (a buffer:
#: its first bytes and its size) the string ones, "obj" (a packed struct bpf/events.py decodes) none.
_OBJECT_KINDS = {"skb": "skb", "socket": "sock", "sockaddr": "sockaddr", "net_device": "str", "capability": "int",
                 "bpf_attr": "obj", "perf_event": "obj", "bpf_map": "obj", "module": "obj", "load_info": "obj",
                 "user_namespace": "obj", "char_buf": "buf", "char_iovec": "buf", "iov_iter": "buf"}
_KERNEL_TYPES = (*_PATH_TYPES, "sock", "cred", *_OBJECT_KINDS)
#: The "obj" kinds of `_OBJECT_KINDS`: the C function reading each, and the struct it fills (`_OBJECTS`).
_OBJECT_READERS = {"bpf_attr": ("pl_bpf_attr", "pl_ba"), "perf_event": ("pl_perf_event", "pl_pe"),
                   "bpf_map": ("pl_bpf_map", "pl_bm"), "module": ("pl_module", "pl_md"),
                   "load_info": ("pl_load_info", "pl_md"), "user_namespace": ("pl_user_ns", "pl_un")}
#: Operand kinds that read into a string slot (`sc->str[slot]`, the first two copied into events).
_SLOT_KINDS = ("str", "sockaddr", "sock", "cred", "skb", "obj", "buf")
#: `Operand.size_arg` of a buffer read when the function returns (returnCopy), its size the return value.
RETURN_COPY = -2
_UNSIGNED = ("uint32", "uint", "u32", "uint8", "uint16", "uint64", "u64", "size_t", "ulong")
#: struct pt_regs offsets (x86-64) of the first five arguments of a function: di, si, dx, cx, r8; and of
#: its return value (ax).
_PT_REGS_ARGS = (112, 104, 96, 88, 72)
_PT_REGS_RC = 80
#: A user function's first six arguments (the SysV calling convention adds r9): what a uprobe reads.
_UPROBE_REGS = (*_PT_REGS_ARGS, 64)
#: Arguments of a USDT probe (<sys/sdt.h> takes at most 12) and probe sites per policy (`pl_usdt` entries).
USDT_ARGS = 12
USDT_SITES = 64
#: A syscall's arguments in the struct pt_regs its x86-64 entry (`__x64_sys_<name>`) takes: di, si, dx, r10, r8,
#: r9 (the syscall convention passes the fourth in r10, where a function call has it in cx).
_SYSCALL_REGS = (112, 104, 96, 56, 72, 64)
#: The same for a 32-bit call's entry (`__ia32_sys_<name>`): bx, cx, dx, si, di, bp, each 32 bits wide.
_IA32_REGS = (40, 88, 96, 104, 112, 32)
#: The syscall entries, which fmod_ret may override where the kernel allows error injection (it always allows
#: `security_*` functions).
_SYSCALL_ENTRIES = ("__x64_sys_", "__ia32_sys_", "__ia32_compat_sys_")
#: Arguments a BPF trampoline program can read (the kernel's MAX_BPF_FUNC_ARGS).
_TRACED_ARGS = 12
#: Programs on the BPF trampoline: their context is the function's arguments, one u64 each, and a non-zero
#: return denies (an LSM hook returns it as its errno; fmod_ret makes it the function's return, skipping it).
_TRAMPOLINE_SITES = ("lsm", "fmod_ret")
#: Programs that read kernel objects as arguments (a path-like one's event carries its i_mode).
_OBJECT_SITES = ("kprobe", "raw_tracepoint", "fentry", *_TRAMPOLINE_SITES)
#: Where a kretprobe's event carries the return value (kprobe arguments take at most the first five).
RET_SLOT = 7
#: Sockets a policy tracks at once (TrackSock): an LRU map, so a socket freed without UntrackSock is evicted.
#: About 2.4 MB per tracking policy (each entry holds its process's binary).
SOCK_TRACK_ENTRIES = 8192
_INT_OPS = ("Equal", "NotEqual", "Mask", "GT", "LT", "InRange", "NotInRange")
_STR_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
_SOCK_OPS = ("DAddr", "NotDAddr", "DPort", "NotDPort", "Family", "NotFamily", "Protocol", "NotProtocol")
#: A kprobe's struct sock has both ends and a state.
_STRUCT_SOCK_OPS = (*_SOCK_OPS, "SAddr", "NotSAddr", "SPort", "NotSPort", "State", "NotState")
#: A packet has both ends (from its IP and TCP/UDP headers) but no state.
_SKB_OPS = (*_SOCK_OPS, "SAddr", "NotSAddr", "SPort", "NotSPort")
_TCP_STATE = {"TCP_ESTABLISHED": 1, "TCP_SYN_SENT": 2, "TCP_SYN_RECV": 3, "TCP_FIN_WAIT1": 4, "TCP_FIN_WAIT2": 5,
              "TCP_TIME_WAIT": 6, "TCP_CLOSE": 7, "TCP_CLOSE_WAIT": 8, "TCP_LAST_ACK": 9, "TCP_LISTEN": 10,
              "TCP_CLOSING": 11, "TCP_NEW_SYN_RECV": 12}
#: A sockaddr holds one address, which Tetragon's loader reads with the source operators (even where it is
#: the peer a connect goes to, as in security_socket_connect); its destination operators are refused there.
_SOCKADDR_OPS = ("SAddr", "NotSAddr", "SPort", "NotSPort", "Family", "NotFamily")
_BIN_OPS = {"In": ("eq", False), "NotIn": ("eq", True), "Prefix": ("pre", False), "NotPrefix": ("pre", True),
            "Postfix": ("post", False), "NotPostfix": ("post", True)}
_STR_ARG_OPS = {"Equal": ("eq", False), "NotEqual": ("eq", True), "Prefix": ("pre", False),
                "NotPrefix": ("pre", True), "Postfix": ("post", False), "NotPostfix": ("post", True)}
_FAMILIES = {"AF_INET": 2, "AF_INET6": 10, "AF_UNIX": 1, "AF_NETLINK": 16, "AF_PACKET": 17}
_PROTOCOLS = {"IPPROTO_TCP": 6, "IPPROTO_UDP": 17, "IPPROTO_ICMP": 1, "IPPROTO_RAW": 255,
              "IPPROTO_ICMPV6": 58}


@dataclass(frozen=True)
class Features:
    """What the kernel offers, as far as compiling cares (from `bpf.probe`, or DESIGN.md §6 by default)."""

    kprobes: bool = False
    lsm: bool = False
    #: fmod_ret programs on the BPF trampoline: Override on `security_*` functions where bpf_override_return
    #: is missing (Debian kernels).
    fmod_ret: bool = False
    #: fmod_ret on syscall entries (`__x64_sys_*`), which the kernel allows only with error injection
    #: (CONFIG_FUNCTION_ERROR_INJECTION; Debian's 6.1 lacks it): Override on `syscall: true` kprobes.
    fmod_ret_syscalls: bool = False
    #: fexit programs: the return of a function an fmod_ret program may have overridden (`return: true`).
    fexit: bool = False
    #: fentry programs: a kernel function's entry where kprobes are missing but BPF trampolines work.
    fentry: bool = False
    #: uprobes on functions of user-space ELF files (CONFIG_UPROBES; the development kernels have them).
    uprobes: bool = True
    #: bpf_probe_write_user in uprobe programs (a usdt's Set); kernel lockdown takes it away.
    probe_write_user: bool = True
    send_signal: bool = True
    cgroup_sock_create: bool = True
    cgroup_connect4: bool = True
    cgroup_connect6: bool = True
    cgroup_sendmsg4: bool = True
    cgroup_sendmsg6: bool = True
    #: bpf_send_signal works in cgroup socket programs (Sigkill on the egress hooks).
    cgroup_send_signal: bool = True
    #: 64-bit processes can make 32-bit syscalls (x86_64 with ia32 emulation), which syscall
    #: tracepoints miss: syscall hooks then also run for them (`Compiler._ia32_source`).
    ia32_syscalls: bool = True
    ringbuf: bool = True
    #: Why a missing feature is missing, e.g. {"lsm": "listed active, but LSM programs fail to load"}.
    reasons: tuple[tuple[str, str], ...] = ()

    def why(self, feature: str) -> str:
        return dict(self.reasons).get(feature, "")

    @classmethod
    def of(cls, probe: Any) -> Features:
        """Adapt a probe result: any object or mapping whose entries say `available` per feature name."""
        def avail(*names: str) -> tuple[bool | None, str]:
            for n in names:
                v = probe.get(n) if isinstance(probe, dict) else getattr(probe, n, None)
                if v is None and hasattr(probe, "features"):
                    feats = probe.features
                    v = feats.get(n) if isinstance(feats, dict) else None
                if v is None:
                    continue
                if isinstance(v, bool):
                    return v, ""
                ok = v.get("available") if isinstance(v, dict) else getattr(v, "available", None)
                why = v.get("reason", "") if isinstance(v, dict) else getattr(v, "reason", "")
                if ok is not None:
                    return bool(ok), str(why or "")
            return None, ""

        base = cls()
        values: dict[str, Any] = {}
        reasons = []
        for attr, names in (("kprobes", ("kprobes", "kprobe")), ("lsm", ("bpf_lsm", "lsm")),
                            ("fmod_ret", ("fmod_ret", "fmodret")),
                            ("fmod_ret_syscalls", ("fmod_ret_syscall", "fmodret_syscall")),
                            ("fexit", ("fexit",)), ("fentry", ("fentry",)),
                            ("uprobes", ("uprobes", "uprobe")),
                            ("probe_write_user", ("probe_write_user",)),
                            ("send_signal", ("send_signal", "bpf_send_signal")),
                            ("cgroup_sock_create", ("cgroup_sock_create", "sock_create")),
                            ("cgroup_connect4", ("cgroup_connect4", "connect4")),
                            ("cgroup_connect6", ("cgroup_connect6", "connect6")),
                            ("cgroup_sendmsg4", ("cgroup_sendmsg4", "sendmsg4")),
                            ("cgroup_sendmsg6", ("cgroup_sendmsg6", "sendmsg6")),
                            ("cgroup_send_signal", ("cgroup_send_signal",)),
                            ("ia32_syscalls", ("ia32_syscalls",)),
                            ("ringbuf", ("ringbuf", "ring_buffer"))):
            ok, why = avail(*names)
            values[attr] = getattr(base, attr) if ok is None else ok
            if why and not values[attr]:
                reasons.append((attr, why))
        return cls(**values, reasons=tuple(reasons))


@dataclass(frozen=True)
class Operand:
    """One configured argument of a hook, as the program reads it and as events report it."""

    position: int  # position in the hook's `args` list
    index: int  # the `index` the policy gave
    kind: str  # "int" | "str" | "sockaddr"
    type_name: str  # Tetragon arg type, for rendering events
    label: str | None
    slot: int = -1  # string/sockaddr scratch slot (-1 for ints)
    #: `resolve` of a user struct: the member's byte offset behind the argument's pointer (-1: none).
    member: int = -1
    #: A buffer (char_buf, char_iovec): the argument giving its size (sizeArgIndex - 1), or RETURN_COPY.
    size_arg: int = -1


@dataclass(frozen=True)
class Site:
    function: str
    #: "tracepoint" | "raw_tracepoint" | "cgroup" | "kprobe" | "kretprobe" | "uprobe" | "lsm" | "fmod_ret" |
    #: "fexit" (the last three: BPF trampoline programs the engine links by the BTF id libbpf resolved at load)
    kind: str
    subsystem: str | None = None
    event: str | None = None
    #: the cgroup hook ("sock_create" | "connect4" | "connect6" | "sendmsg4" | "sendmsg6"), or the kernel
    #: function of a kprobe, or what a uprobe is on (`/bin/bash readline`)
    attach: str | None = None
    #: A uprobe's file as the kernel attaches to it (its real path on this node) and the file offset of the
    #: probed instruction; None where the plan was made without the node's files (bpf/uprobes.py).
    file: str | None = None
    offset: int | None = None
    #: A kprobe whose hook says `ignore: callNotFound`: where the kernel lacks the function, it is left out.
    optional: bool = False
    #: A usdt's program: one uprobe per site of the probe in `file` (none where the plan was made without the
    #: node's files), each linked with BPF cookie `usdt_base` + k, its entry of `pl_usdt` (bpf/usdt.py).
    usdt_probes: tuple[Probe, ...] = ()
    usdt_base: int = -1
    #: A kprobe on a `generated_ftrace` list: the regular expression the engine matches against the kernel's
    #: ftrace functions at load, attaching the one program to each function it matches.
    pattern: str | None = None

    @property
    def label(self) -> str:
        if self.kind in ("cgroup", "kprobe", "kretprobe", "uprobe", "lsm", "fmod_ret", "fentry", "fexit"):
            return f"{self.kind}/{self.attach}"
        return f"{self.subsystem}:{self.event}" if self.kind == "tracepoint" else f"raw_tp/{self.event}"


@dataclass(frozen=True)
class HookPlan:
    index: int
    section: str
    target: str
    event_kind: str  # "process_tracepoint" | "process_kprobe" | "process_uprobe" | "process_lsm"
    subsystem: str | None
    event: str | None
    sites: tuple[Site, ...]
    operands: tuple[Operand, ...]
    #: Per selector: (action code, signal); used to render events.
    selector_actions: tuple[tuple[int, int], ...]
    message: str | None = None
    tags: tuple[str, ...] = ()
    #: A kretprobe's returnArg type: its events carry the value the function returned.
    return_type: str | None = None
    #: A returned sock: the event string slot its sock_arg is in.
    return_slot: int = -1
    #: A hook on every syscall: its events carry the syscall's number, which names the call.
    syscall_ids: bool = False
    #: A uprobe's path and symbol (or offset), which its events report.
    uprobe: UprobeTarget | None = None
    #: A usdt's path, provider and name, which its events (process_usdt) report.
    usdt: UsdtTarget | None = None
    #: A hook on many kernel functions (a `generated_ftrace` list): its events carry the address of the
    #: function that ran (in `ints[RET_SLOT]`), which names it.
    function_ips: bool = False


@dataclass(frozen=True)
class StringEntry:
    table: str  # "eq" | "pre" | "post"
    value: bytes  # as stored (reversed for "post"), without NUL
    bits: int

    @property
    def map_name(self) -> str:
        short = self.table == "eq" and len(self.value) < SHORT_STRLEN
        return "pl_str_eq64" if short else f"pl_str_{self.table}"

    @property
    def key(self) -> bytes:
        if self.table == "eq":
            return self.value.ljust(SHORT_STRLEN if len(self.value) < SHORT_STRLEN else STRLEN, b"\0")
        return struct.pack("<I", len(self.value) * 8) + self.value.ljust(STRLEN, b"\0")


@dataclass(frozen=True)
class NsEntry:
    """A matchNamespaces entry: its bit in the `pl_ns` map, set for each of its values (inode numbers, or
    host_ns, which the engine reads from /proc/1/ns at load: a node's own namespaces are not source)."""

    kind: int  # _NAMESPACES
    values: tuple[str, ...]
    bit: int


@dataclass(frozen=True)
class FollowFilter:
    """A `followChildren` binaries filter: `bit` is set in a process entry when it or an ancestor matched."""

    bit: int
    table: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Callout:
    """A GetUrl or DnsLookup action. Nothing in the kernel does it: the selector's event names it, and the agent
    sends the request (an HTTP GET of the URL, a DNS query for the name), as Tetragon's agent does, to set off
    a canary token (agent/callouts.py)."""

    action: str  # "GetUrl" | "DnsLookup"
    #: The URL (argUrl) or the name (argFqdn).
    arg: str

    def to_json(self) -> dict[str, str]:
        return {"action": self.action, CALLOUT_ARGS[self.action]: self.arg}


#: The action fields naming what a callout requests.
CALLOUT_ARGS = {"GetUrl": "argUrl", "DnsLookup": "argFqdn"}
_FQDN_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _callouts_of(hooks: list[Hook]) -> tuple[tuple[int, int, tuple[Callout, ...]], ...]:
    out = []
    for i, h in enumerate(hooks):
        for k, sel in enumerate(h.selectors):
            cs = tuple(Callout(a.action, (a.arg_url if a.action == "GetUrl" else a.arg_fqdn) or "")
                       for a in sel.match_actions if a.action in CALLOUT_ARGS)
            if cs:
                out.append((i, k, cs))
    return tuple(out)


@dataclass(frozen=True)
class Plan:
    policy: TracingPolicy
    source: str
    hooks: tuple[HookPlan, ...]
    #: Exec/fork/exit tracking programs (pid → binary map) are part of the policy.
    tracking: bool
    strings: tuple[StringEntry, ...]
    follow: tuple[FollowFilter, ...]
    notes: tuple[str, ...]
    #: Loaded for workload cgroups: membership programs and the scope-escape hook are part of it.
    scoped: bool = False
    #: The ways out of the scope that are watched, as hooks for events (bpf/scope.py).
    scope_hooks: tuple[HookPlan, ...] = ()
    #: The syscall hooks also run for 32-bit compat calls (`pl_ia32` on raw_syscalls:sys_enter).
    ia32: bool = False
    #: ... and their returns (`pl_ia32x` on raw_syscalls:sys_exit), for syscall hooks with `return: true`.
    ia32_exit: bool = False
    #: matchNamespaces entries: `pl_ns` map contents once the engine has resolved host_ns.
    namespaces: tuple[NsEntry, ...] = ()
    #: matchCapabilityChanges / matchNamespaceChanges: the tracking programs keep, per process, the capabilities
    #: and namespaces it had at its exec (`pl_base`, which the engine seeds from /proc for older processes).
    exec_state: bool = False
    #: (hook index, selector index, its GetUrl/DnsLookup actions), for the selectors that have any.
    callouts: tuple[tuple[int, int, tuple[Callout, ...]], ...] = ()
    #: matchPIDs followForks: the process lineage map (`pl_lineage`, tgid → parent) and its programs.
    lineage: bool = False
    #: Some selector posts stack traces (kernelStackTrace/userStackTrace): the `pl_stacks` stack map.
    stacks: bool = False

    def callouts_of(self, hook: int, selector: int) -> tuple[Callout, ...]:
        """What the agent is to request when selector `selector` of hook `hook` matched (an event names both)."""
        return next((c for h, s, c in self.callouts if h == hook and s == selector), ())

    @property
    def sites(self) -> tuple[Site, ...]:
        out = [_SELF_EXIT_SITE, *(s for h in self.hooks for s in h.sites)]
        if self.ia32:
            out.append(_IA32_SITE)
        if self.ia32_exit:
            out.append(_IA32_EXIT_SITE)
        if self.scope_hooks:
            out = [*_SCOPE_SITES, *(s for h in self.scope_hooks for s in h.sites), *out]
        if self.tracking:
            out = [*_TRACKING_SITES, *out]
        if self.lineage:
            out = [*_LINEAGE_SITES, *out]
        return tuple(out)

    def hook(self, index: int) -> HookPlan | None:
        """The hook an event record names."""
        if index < len(self.hooks):
            return self.hooks[index]
        return next((h for h in self.scope_hooks if h.index == index), None)

    @property
    def uses_cgroup_hooks(self) -> bool:
        return any(s.kind == "cgroup" for s in self.sites)


#: Drops an engine process from `pl_self` when it exits, so a later process reusing its pid is not exempt.
# Housekeeping programs every policy has run on raw tracepoints: the kernel takes at most 64 perf-event
# programs on one tracepoint (BPF_TRACE_MAX_PROGS), which 22 scoped policies would fill on sched_process_exit.
_SELF_EXIT_SITE = Site("pl_self_exit", "raw_tracepoint", "sched", "sched_process_exit")
_TRACKING_SITES = (
    Site("pl_track_exec", "raw_tracepoint", "sched", "sched_process_exec"),
    Site("pl_track_fork", "raw_tracepoint", "sched", "sched_process_fork"),
    Site("pl_track_exit", "raw_tracepoint", "sched", "sched_process_exit"),
)
#: matchPIDs followForks: who forked whom, kept per process from its fork to its exit (`_LINEAGE`).
_LINEAGE_SITES = (
    Site("pl_track_lfork", "raw_tracepoint", "sched", "sched_process_fork"),
    Site("pl_track_lexit", "raw_tracepoint", "sched", "sched_process_exit"),
)
_IA32_SITE = Site("pl_ia32", "raw_tracepoint", "raw_syscalls", "sys_enter")
_IA32_EXIT_SITE = Site("pl_ia32x", "raw_tracepoint", "raw_syscalls", "sys_exit")
_SCOPE_SITES = tuple(Site(fn, "raw_tracepoint", "sched", ev) for fn, ev in scope.MEMBERSHIP_SITES)


def _scope_hook(esc: scope.Escape) -> HookPlan:
    sub, ev = esc.tracepoint
    operands = tuple(Operand(k, k, "str" if t == "string" else "int", t, label, 0 if t == "string" else -1)
                     for k, (label, t) in enumerate(esc.args))
    return HookPlan(index=esc.hook, section="tracepoints", target=f"{sub}:{ev}",
                    event_kind="process_tracepoint", subsystem=sub, event=ev,
                    sites=(Site(esc.program, "tracepoint", sub, ev),), operands=operands,
                    selector_actions=((_ACT_SIGKILL, 9), (_ACT_POST, 0)))


def check(policy: TracingPolicy, features: Features | None = None, formats: Formats | None = None) -> list[str]:
    """Every reason the policy cannot run on a kernel with `features` (empty when it can)."""
    try:
        compile_policy(policy, features, formats)
    except Unsupported as e:
        return list(e.reasons)
    return []


def compile_policy(policy: TracingPolicy, features: Features | None = None,
                   formats: Formats | None = None, *, scoped: bool = False,
                   real_path: Callable[[str], str] | None = None,
                   resolve_uprobe: Callable[[UprobeTarget], Resolved] | None = None,
                   resolve_usdt: Callable[[UsdtTarget], tuple[Probe, ...]] | None = None) -> Plan:
    """The load plan of `policy`; raises `Unsupported` with every reason when it cannot run here.

    `scoped`: the policy is loaded for workload cgroups, so it also keeps their processes in
    scope (bpf/scope.py). `real_path`: what a matchBinaries path is on this node with its
    symlinks resolved (the engine passes `os.path.realpath`'s answer): the kernel reports the
    file that runs, so `/bin/sh` must also match `/usr/bin/dash`. The real paths are map
    entries, never part of the source. `resolve_uprobe`: where a uprobe goes on this node
    (bpf.uprobes.resolve; the engine passes it when it loads): a file or function missing here
    refuses the policy. Without it uprobes are planned unplaced (their sites have no offset), as
    the reconciler plans for a kernel profile: the offset is an attach parameter, not source.
    `resolve_usdt` (bpf.usdt.resolve) does the same for USDT probes: their sites and argument specs."""
    compiler = _Compiler(policy, features or Features(), formats or builtin_formats, scoped,
                         real_path or (lambda v: v))
    compiler.resolve_uprobe = resolve_uprobe
    compiler.resolve_usdt = resolve_usdt
    return compiler.run()


# --------------------------------------------------------------------------- the compiler


@dataclass
class _StrFilter:
    bit: int
    table: str
    values: tuple[str, ...]
    #: matchBinaries values: paths of files on the node, also stored as their real paths (see `compile_policy`).
    binary: bool = False


@dataclass
class _Source:
    """Where a hook's operand comes from inside one site's program."""

    kind: str  # "int" | "str" | "sockaddr"
    read: str  # C statements that set the operand's variables
    var: str  # C variable name (ints) or slot prefix


@dataclass
class _HookCtx:
    hook: Hook
    path_label: str
    operands: list[Operand] = field(default_factory=list)
    exec_hook: bool = False


class _Compiler:
    def __init__(self, policy: TracingPolicy, features: Features, formats: Formats, scoped: bool = False,
                 real_path: Callable[[str], str] = lambda v: v) -> None:
        self.p = policy
        self.real_path = real_path
        self.scoped = scoped
        #: Places uprobes on this node's files (`compile_policy`); None: sites without offsets.
        self.resolve_uprobe: Callable[[UprobeTarget], Resolved] | None = None
        #: Finds USDT probe sites in this node's files (`compile_policy`); None: sites without places.
        self.resolve_usdt: Callable[[UsdtTarget], tuple[Probe, ...]] | None = None
        #: (ia32 numbers, program, index of its generator) of the syscall hooks: see `_ia32_source`.
        self.ia32: list[tuple[tuple[int, ...], str, int]] = []
        #: The same for sys_exit programs (a syscall hook with `return: true`), on raw_syscalls:sys_exit.
        self.ia32_exit: list[tuple[tuple[int, ...], str, int]] = []
        #: (socketcall number, argument count, program) of the socket hooks among them.
        self.socketcall: list[tuple[int, int, str]] = []
        self.f = features
        self.formats = formats
        self.reasons: list[str] = []
        self.notes: list[str] = []
        self.str_filters: list[_StrFilter] = []
        #: matchNamespaces entries, one bit each in the `pl_ns` values (the engine resolves host_ns).
        self.ns_filters: list[NsEntry] = []
        #: What the programs of a hook read of the current task for its selectors ("ns:<kind>", "caps:<set>",
        #: "nspid"), by hook index.
        self.hook_needs: dict[int, set[str]] = {}
        self._hook_i = 0
        self.follow: list[FollowFilter] = []
        self.tracking = False
        #: Some selector compares the task with what it had at its exec (`Plan.exec_state`).
        self.exec_state = False
        #: Some matchPIDs entry has followForks (the `pl_lineage` map and its programs).
        self.lineage = False
        #: Some exec hook judges programs a loader maps (`pl_ldso`, `_program(ldso=True)`).
        self.ldso = False
        #: USDT probe sites planned so far, each an entry of `pl_usdt` (its arguments' specs).
        self.usdt_sites = 0
        self.usdt = False
        #: Per usdt hook with Set actions: (selector, probe argument, value) of each (`pl_usdt_set`).
        self.usdt_sets: dict[int, list[tuple[int, int, int]]] = {}
        #: Hooks with a rate-limited Post: per selector (ns, scope) or None, and the string slots compared.
        self.rate_limits: dict[int, tuple[list[tuple[int, int] | None], int]] = {}
        #: sys_enter_mmap's prot and fd offsets and sys_exit_mmap's ret, for a loader (spec.loader).
        self.loader_offsets = (0, 0, 0)
        #: Some hook is a kretprobe (its events wait in pl_evbuf/pl_ret<i> from entry to return).
        self.ret = False
        #: Hooks on every syscall, whose events carry the syscall's number (and whether it was a compat one).
        self.sysid_hooks: set[int] = set()
        #: Program generators, run once every hook is known (tracking is a policy-wide decision).
        self.functions: list[Callable[[], str]] = []
        #: kretprobes' returnCopy buffers by hook: (operand position, slot), read by the return program.
        self.ret_copies: dict[int, list[tuple[int, int]]] = {}
        #: The policy tracks sockets (TrackSock/UntrackSock): the `pl_socks` map, looked up for every sock argument.
        self.socktrack = _tracks_socks(policy)
        #: Per hook, per selector that acts: its TrackSock/UntrackSock actions, (track, sock operand position).
        self.sock_acts: dict[int, list[list[tuple[bool, int]]]] = {}
        #: kretprobes' returned socks by hook: (event slot of its sock_arg or -1, returnArgAction).
        self.ret_socks: dict[int, tuple[int, str | None]] = {}
        #: Per hook, per selector: (kernelStackTrace, userStackTrace) of its Post action.
        self.stacks: dict[int, tuple[tuple[bool, bool], ...]] = {}
        #: Hooks on a generated_ftrace list, whose events carry the address of the function that ran.
        self.func_ip_hooks: set[int] = set()

    def refuse(self, msg: str) -> None:
        self.reasons.append(f"unsupported: {msg}")

    def run(self) -> Plan:
        spec = self.p.document.get("spec") or {}
        options = spec.get("options") or []
        others = sorted({str(o.get("name")) for o in options if isinstance(o, dict)} - {"policy-mode"})
        if others:
            self.notes.append(f"spec.options {', '.join(others)} tune Tetragon's own agent; ignored")
        if self.p.policy_mode == "monitor":
            self.notes.append("policy-mode monitor: never acts, at most enforce_ready (would-have-acted events)")
        for key in self.p.unsupported:
            if key == "enforcers" and not self.f.fmod_ret_syscalls:
                why = self.f.why("fmod_ret_syscalls")
                self.refuse("spec.enforcers: an enforcer makes the calls fail by overriding their return "
                            "(bpf_override_return, or fmod_ret on the syscall's entry), which needs error injection, "
                            "which this kernel lacks" + (f" ({why})" if why else "") + "; use Sigkill")
            else:
                self.refuse(f"spec.{key} is outside the engine's subset")
        if not self.p.hooks and not self.p.loader:
            self.refuse("the policy has no hooks")
        if not self.f.ringbuf:
            self.refuse(f"events need a BPF ring buffer, which this kernel lacks {self.f.why('ringbuf')}".strip())
        hooks: list[HookPlan] = []
        expanded = self._expanded_hooks()
        for i, h in enumerate(expanded):
            hp = self._hook(i, h)
            if hp is not None:
                hooks.append(hp)
        if self.p.loader and (hp := self._loader_hook(len(hooks))) is not None:
            hooks.append(hp)
        if len(self.str_filters) > MAX_STRING_FILTERS:
            self.refuse(f"{len(self.str_filters)} string filters; at most {MAX_STRING_FILTERS} per policy")
        if self.reasons:
            raise Unsupported(self.reasons)
        strings = self._string_entries()
        ns_size = max(8, sum(len(e.values) for e in self.ns_filters)) if self.ns_filters else 0
        source = _prelude(self.tracking, strings, self._table_sizes(), self.scoped, ns_size)
        if self.exec_state:
            source += _EXEC_STATE
        stacks = any(k or u for flags in self.stacks.values() for k, u in flags)
        if stacks:
            source += _STACKS
        source += self._self_exit_source()
        if self.tracking:
            source += self._tracking_source()
        if self.lineage:
            source += _LINEAGE
        scope_hooks: tuple[HookPlan, ...] = ()
        if self.scoped:
            off = scope.offsets(self.formats)
            if off is None:
                tp = ":".join(scope.ATTACH_TRACEPOINT)
                raise Unsupported([f"unsupported: a policy limited to workloads needs the {tp} and "
                                   "syscalls:sys_enter_clone3 tracepoints, to keep "
                                   "their processes from leaving the scope; this kernel lacks it"])
            source += scope.source(off, MODE_OFF)
            scope_hooks = tuple(_scope_hook(e) for e in scope.ESCAPES)
        bodies = [gen() for gen in self.functions]
        if self.rate_limits:
            source += _RATE_LIMIT
        if self.ldso or self.p.loader:
            source += _FD_FILE
        if self.ldso:
            source += _LDSO
        if self.p.loader:
            source += self._loader_source(hooks[-1].index)
        if self.socktrack:
            source += _SOCKTRACK
        if self.ret:
            source += _RET_BUF
        if self.usdt:
            source += _USDT
        if self.usdt_sets:  # only here: the kernel warns of every program that may write user memory
            source += _USDT_SET
        source += "\n".join(bodies)
        if self.ia32:
            # a compat call's copy of a hook runs with a record for context, which bpf_get_stackid refuses:
            # its events carry no stacks
            source += "\n#define PL_NO_STACKS 1\n" + self._ia32_source(bodies) + "\n#undef PL_NO_STACKS\n"
        plan = Plan(policy=self.p, source=source, hooks=tuple(hooks), tracking=self.tracking,
                    strings=strings, namespaces=tuple(self.ns_filters), follow=tuple(self.follow),
                    notes=tuple(self.notes), scoped=self.scoped,
                    scope_hooks=scope_hooks, ia32=bool(self.ia32), ia32_exit=bool(self.ia32_exit), stacks=stacks,
                    lineage=self.lineage, exec_state=self.exec_state)
        plan = replace(plan, callouts=_callouts_of(expanded))
        return replace(plan, source=_sections(source, plan.sites))

    # ------------------------------------------------------------------ hooks

    def _expanded_hooks(self) -> list[Hook]:
        """The policy's hooks with each kprobe on `list:<name>` of a `syscalls` list made one hook per
        syscall of the list (Tetragon attaches the hook to each); other lists stay one hook."""
        out: list[Hook] = []
        for h in self.p.hooks:
            if h.section != "kprobes" or not h.target.startswith("list:"):
                out.append(h)
                continue
            cl = self.p.call_list(h.target.removeprefix("list:"))
            if cl is None:
                self.refuse(f"{format_path(h.path)}: {h.target} names no list of spec.lists")
            elif cl.type == "syscalls":
                if not cl.values:
                    self.refuse(f"{format_path(cl.path)}: a syscalls list needs values")
                # the hook on a call also runs for its 32-bit compat twin (`_ia32_source`): __ia32_sys_dup next
                # to sys_dup is that same hook
                native = {v.removeprefix("__x64_").removeprefix("sys_") for v in cl.values
                          if not v.startswith("__ia32_")}
                calls = [v for v in cl.values if not (v.startswith("__ia32_") and v.removeprefix("__ia32_")
                                                      .removeprefix("compat_").removeprefix("sys_") in native)]
                out += [replace(h, target=v, syscall=True) for v in calls]
            elif cl.type == "generated_syscalls":
                out.append(h)
            elif cl.type == "generated_ftrace" and self._ftrace_list_ok(cl):
                # kernel functions, whatever the hook's `syscall` says (the CRD defaults it to true)
                out.append(replace(h, syscall=False))
            elif cl.type != "generated_ftrace":
                self.refuse(f"{format_path(cl.path)}: lists of type {cl.type} are outside the engine's subset "
                            "(syscalls, generated_syscalls, generated_ftrace)")
        return out

    def _ftrace_list_ok(self, cl: CallList) -> bool:
        """A generated_ftrace list names kernel functions by a regular expression (`pattern`, matched anywhere
        in a name, as Tetragon's Go regexp does) over the kernel's ftrace functions; it has no values."""
        where = format_path(cl.path)
        if not self.f.kprobes:
            why = self.f.why("kprobes")
            self.refuse(f"{where}: lists of type generated_ftrace put a kprobe on each kernel function matching "
                        f"{cl.pattern!r}, and this kernel lacks kprobes" + (f" ({why})" if why else ""))
            return False
        if cl.values or not cl.pattern:
            self.refuse(f"{where}: a generated_ftrace list needs a pattern and no values (Tetragon refuses it "
                        "otherwise)")
            return False
        try:
            re.compile(cl.pattern)
        except re.error as e:
            self.refuse(f"{where}: pattern {cl.pattern!r} is not a regular expression ({e})")
            return False
        return True

    def _hook(self, i: int, h: Hook) -> HookPlan | None:
        where = format_path(h.path)
        ra = h.return_arg
        if (h.return_probe and ra is not None and ((ra.type or "").strip() == "sock" or h.return_arg_action in
                                                   ("TrackSock", "UntrackSock")) and h.syscall):
            # what a syscall returns is a number (an fd), never the struct sock a kernel function may return
            self.refuse(f"{where}.returnArg: a returned sock (type sock, TrackSock, UntrackSock) is read by a "
                        f"kretprobe on a kernel function (syscall: false); {h.target} is a syscall")
            return None
        flags = tuple((any(a.kernel_stack for a in s.match_actions), any(a.user_stack for a in s.match_actions))
                      for s in h.selectors)
        if any(k or u for k, u in flags):
            self.stacks[i] = flags
        for key in h.unsupported:
            self.refuse(f"{where}: {key} on {h.target} is outside the engine's subset")
        if len(h.selectors) > MAX_SELECTORS:
            self.refuse(f"{where}: {len(h.selectors)} selectors; Tetragon allows at most {MAX_SELECTORS} per hook")
        if h.section == "tracepoints":
            return self._tracepoint(i, h)
        if h.section == "kprobes":
            return self._kprobe(i, h)
        if h.section == "lsmhooks":
            if not self.f.lsm:
                why = self.f.why("lsm") or "LSM programs do not load"
                self.refuse(f"lsmhook on {h.target} needs BPF LSM, which this kernel lacks ({why})")
                return None
            return self._lsm_hook(i, h)
        if h.section == "uprobes":
            return self._uprobe(i, h)
        if h.section == "usdts":
            return self._usdt(i, h)
        self.refuse(f"{h.section} ({h.target}) are outside the engine's subset")
        return None

    def _tracepoint(self, i: int, h: Hook) -> HookPlan | None:
        assert h.subsystem and h.event
        sub, ev = h.subsystem, h.event
        if h.raw:
            return self._raw_tracepoint(i, h)
        if not (sub in ("syscalls", "raw_syscalls") or (sub == "sched" and ev in _SCHED_EVENTS)):
            self.refuse(f"tracepoint {sub}:{ev} is outside the subset (syscalls:*, raw_syscalls:*, "
                        f"sched:{{{','.join(_SCHED_EVENTS)}}})")
            return None
        fields = self.formats(sub, ev)
        if fields is None:
            self.refuse(f"tracepoint {sub}:{ev} does not exist on this kernel")
            return None
        return self._build(i, h, "process_tracepoint", sub, ev,
                           {a.index: a.index for a in h.args}, fields, None)

    def _kprobe(self, i: int, h: Hook) -> HookPlan | None:
        call = h.target
        where = format_path(h.path)
        if call.startswith("list:"):
            cl = self.p.call_list(call.removeprefix("list:"))
            if cl is not None and cl.type == "generated_ftrace":
                return self._ftrace_list(i, h, cl)
            return self._all_syscalls(i, h)  # generated_syscalls: every syscall, on raw_syscalls:sys_enter
        if h.syscall:
            if _overrides(h):  # a real denial: fmod_ret on the syscall's entry, or nothing
                if self.f.fmod_ret_syscalls:
                    return self._fmod_ret_syscall(i, h)
                why = self.f.why("fmod_ret_syscalls")
                self.refuse(f"{where}: Override on {call} needs fmod_ret on the syscall's entry (error injection) or "
                            "bpf_override_return, which this kernel lacks" + (f" ({why})" if why else "")
                            + "; use Sigkill, or Override on the security_* function or LSM hook the call reaches")
                return None
            if call.startswith("__ia32_") or call.startswith("__ia32_compat"):
                self.refuse(f"kprobe on {call}: 32-bit compat syscalls have no tracepoint and need kprobes, "
                            "which this kernel lacks" if not self.f.kprobes else
                            f"kprobe on {call}: 32-bit compat syscalls are outside the engine's subset")
                return None
            name = call
            for pre in SYSCALL_PREFIXES:
                if name.startswith(pre):
                    name = name[len(pre):]
                    break
            ev = f"sys_enter_{name}"
            fields = self.formats("syscalls", ev)
            if fields is None:
                self.refuse(f"kprobe on {call}: no syscalls:{ev} tracepoint on this kernel")
                return None
            index_map = {a.index: 5 + a.index for a in h.args}
            ret_type = _ret_type(h)
            if ret_type is not None:
                # `return: true`: the entry on sys_enter keeps its event per thread; sys_exit reads the return
                exit_fields = self.formats("syscalls", f"sys_exit_{name}")
                ret_field = next((f for f in exit_fields or () if f.name == "ret"), None)
                if ret_field is None:
                    self.refuse(f"kprobe on {call} with return: true: no syscalls:sys_exit_{name} tracepoint "
                                "with a ret field on this kernel")
                    return None
                return self._build(i, h, "process_kprobe", "syscalls", ev, index_map, fields, None,
                                   ret_type=ret_type, sys_exit=(f"sys_exit_{name}", ret_field.offset))
            return self._build(i, h, "process_kprobe", "syscalls", ev, index_map, fields, None)
        acts = {a.action for s in h.selectors for a in s.match_actions}
        if (call in _SOCKET_CALLS or call in _CONNECT_CALLS) and not (self.f.kprobes and acts <= {"Post", "NoPost"}):
            # enforcement on the cgroup hooks, which deny before anything leaves; a hook that only reports
            # runs on the function itself where kprobes exist, for Tetragon's own argument shapes
            if not ("Override" in acts and self.f.fmod_ret and call.startswith("security_")):
                return self._socket_kprobe(i, h)
            # what the cgroup hooks cannot express (the socket itself, an argError that is not an errno) is an
            # fmod_ret program on the security_* function, whose return the kernel's caller takes
            n_reasons, n_notes = len(self.reasons), len(self.notes)
            plan = self._socket_kprobe(i, h)
            if plan is not None:
                return plan
            del self.reasons[n_reasons:], self.notes[n_notes:]
            return self._fmod_ret(i, h)
        if "Override" in acts and ((self.f.fmod_ret and call.startswith("security_"))
                                   or (self.f.fmod_ret_syscalls and call.startswith(_SYSCALL_ENTRIES))):
            return self._fmod_ret(i, h)
        if self.f.kprobes:
            return self._function_kprobe(i, h)
        if self.f.fentry and (not h.return_probe or self.f.fexit):
            return self._fentry(i, h)
        lacks = "kprobes, which this kernel lacks" if not self.f.kprobes else \
            "a kprobe on a kernel function, which this engine runs only for syscalls and socket hooks"
        self.refuse(f"kprobe on {call} needs {lacks}")
        return None

    def _function_kprobe(self, i: int, h: Hook) -> HookPlan | None:
        """A kprobe on a kernel function: its arguments are the registers of the calling convention,
        typed by the policy (`file`, `path`, `sock`, `cred`, ... read through BTF, CO-RE relocated)."""
        where = format_path(h.path)
        ret_type: str | None = None
        if h.return_probe:
            assert h.return_arg is not None  # the parser requires it
            ret_type = (h.return_arg.type or "int").strip()
            if ret_type not in _INT_TYPES and ret_type != "sock":
                self.refuse(f"{where}.returnArg: a return value of type {ret_type} is outside the engine's subset "
                            "(integers, sock)")
                return None
            if h.return_arg_action in ("TrackSock", "UntrackSock") and ret_type != "sock":
                self.refuse(f"{where}.returnArgAction: {h.return_arg_action} needs a returnArg of type sock (the "
                            "socket the function returns)")
                return None
            if h.return_arg_action not in (None, "Post", "TrackSock", "UntrackSock"):
                self.refuse(f"{where}.returnArgAction: {h.return_arg_action} is not a return action (Post, "
                            "TrackSock, UntrackSock)")
                return None
        if any(a.action == "Override" for s in h.selectors for a in s.match_actions):
            self.refuse(f"{where}: Override on {h.target} needs bpf_override_return, which this kernel lacks "
                        "(Debian kernels have no error injection); use an lsmhook or Sigkill"
                        + (" (fmod_ret, which it has, overrides only security_* functions"
                           + (" and syscalls)" if self.f.fmod_ret_syscalls else ")") if self.f.fmod_ret else ""))
            return None
        fields = tuple(Field(f"arg{k}", "void *" if (a := next((x for x in h.args if x.index == k), None))
                             is not None and (a.type or "") not in _INT_TYPES else "long", off, 8,
                             not (a is not None and (a.type or "") in _UNSIGNED))
                       for k, off in enumerate(_PT_REGS_ARGS))
        plan = self._build(i, h, "process_kprobe", None, None, {a.index: a.index for a in h.args}, fields, None,
                           kernel_fn=h.target, ret_type=ret_type)
        return self._kernel_fn_plan(i, h, plan)

    def _kernel_fn_plan(self, i: int, h: Hook, plan: HookPlan | None) -> HookPlan | None:
        """What a kprobe on a kernel function adds to its plan: the buffers its return program reads
        (returnCopy), and `ignore: callNotFound`, which makes its sites optional (left out where the kernel
        lacks the function, as Tetragon does)."""
        if plan is None:
            return None
        copies = [(o.position, o.slot) for o in plan.operands if o.size_arg == RETURN_COPY and 0 <= o.slot < 2]
        if copies:
            self.ret_copies[i] = copies
        if h.ignore_call_not_found:
            plan = replace(plan, sites=tuple(replace(s, optional=True) for s in plan.sites))
        return plan

    def _lsm_hook(self, i: int, h: Hook) -> HookPlan | None:
        """An lsmhook: a BPF LSM program on the hook (section `lsm/<hook>`, which libbpf resolves to the
        kernel's `bpf_lsm_<hook>` at load); its context is the hook's arguments, one u64 each, typed by the
        policy and read as a kprobe's are. Override returns the errno from the hook: the kernel denies the
        operation (exec, open, ...) before it happens."""
        if not self._traced_ok(h):
            return None
        site = Site(f"pl_h{i}_lsm", "lsm", attach=h.target)
        return self._build(i, h, "process_lsm", None, None, {a.index: a.index for a in h.args},
                           _traced_fields(h, tuple(8 * k for k in range(_TRACED_ARGS))), None, traced=site)

    def _fmod_ret(self, i: int, h: Hook) -> HookPlan | None:
        """Override on a kernel function where bpf_override_return is missing: an fmod_ret program on the
        function's BPF trampoline, whose non-zero return becomes the function's (which then does not run).
        The kernel allows it on `security_*` functions and on functions open to error injection, which
        include the syscall entries. The context is the function's arguments, one u64 each."""
        if not self._traced_ok(h):
            return None
        site = Site(f"pl_h{i}_fmr", "fmod_ret", attach=h.target)
        return self._build(i, h, "process_kprobe", None, None, {a.index: a.index for a in h.args},
                           _traced_fields(h, tuple(8 * k for k in range(_TRACED_ARGS))), None, traced=site,
                           ret_type=_ret_type(h))

    def _fentry(self, i: int, h: Hook) -> HookPlan | None:
        """A kprobe on a kernel function where kprobes are missing but BPF trampolines work: an fentry program
        (its context the function's arguments, one u64 each, read as an fmod_ret program's), and for
        `return: true` an fexit program, which sees the arguments and the return. It cannot deny: Override
        needs fmod_ret (`_fmod_ret`), which the kernel allows on fewer functions."""
        if not self._traced_ok(h):
            return None
        site = Site(f"pl_h{i}_fe", "fentry", attach=h.target)
        plan = self._build(i, h, "process_kprobe", None, None, {a.index: a.index for a in h.args},
                           _traced_fields(h, tuple(8 * k for k in range(_TRACED_ARGS))), None, traced=site,
                           ret_type=_ret_type(h))
        return self._kernel_fn_plan(i, h, plan)

    def _fmod_ret_syscall(self, i: int, h: Hook) -> HookPlan | None:
        """Override on a syscall (`syscall: true`): fmod_ret on its real entry, `__x64_sys_<name>` (or the
        `__ia32_` entry the policy names), whose one argument is the caller's registers: the call's arguments
        are read from them, strings from user memory. As in Tetragon, the x86-64 entry does not see 32-bit
        calls (int $0x80); a kprobe on `__ia32_sys_<name>` overrides those."""
        where = format_path(h.path)
        call = h.target
        if call.startswith("__ia32_"):
            name = call.removeprefix("__ia32_compat_sys_").removeprefix("__ia32_sys_")
            if name not in ia32.NUMBERS:
                self.refuse(f"{where}: kprobe on {call}: {name} is not an ia32 syscall")
                return None
            fn, regs = call, _IA32_REGS
        else:
            name = call
            for pre in SYSCALL_PREFIXES:
                if name.startswith(pre):
                    name = name[len(pre):]
                    break
            if self.formats("syscalls", f"sys_enter_{name}") is None:
                self.refuse(f"kprobe on {call}: no syscall {name} on this kernel (no syscalls:sys_enter_{name})")
                return None
            fn, regs = f"__x64_sys_{name}", _SYSCALL_REGS
            if self.f.ia32_syscalls and name in ia32.NUMBERS:
                self.notes.append(f"{where}: Override on {call} runs on {fn}, which 32-bit calls (int $0x80) do not "
                                  f"enter; a kprobe on __ia32_sys_{name} overrides those")
        if not self._traced_ok(h):
            return None
        site = Site(f"pl_h{i}_fmr", "fmod_ret", attach=fn)
        return self._build(i, h, "process_kprobe", None, None, {a.index: a.index for a in h.args},
                           _traced_fields(h, regs), None, traced=site, ret_type=_ret_type(h))

    def _traced_ok(self, h: Hook) -> bool:
        """What a BPF trampoline program on `h` cannot do is refused: its target is a section name, so an
        identifier; a return (`return: true`) needs fexit and an integer returnArg; `resolve` of a struct
        member is outside the subset."""
        where = format_path(h.path)
        ok = True
        if not (h.target.isascii() and h.target.isidentifier()):
            self.refuse(f"{where}: {h.target!r} is not the name of a kernel function or LSM hook")
            ok = False
        if h.return_probe:  # the return on fexit (`_build`)
            rt = _ret_type(h)
            if not self.f.fexit:
                why = self.f.why("fexit")
                self.refuse(f"{where}: return: true with Override on {h.target} needs fexit programs, which this "
                            "kernel lacks" + (f" ({why})" if why else ""))
                ok = False
            elif rt not in _INT_TYPES:
                self.refuse(f"{where}.returnArg: a return value of type {rt} is outside the engine's subset "
                            "(integers)")
                ok = False
            elif h.return_arg_action not in (None, "Post"):
                self.refuse(f"{where}.returnArgAction: {h.return_arg_action} (socket tracking) is outside the "
                            "engine's subset")
                ok = False
        for a in h.args:
            if a.resolve is not None:
                self.refuse(f"{where}: resolve {a.resolve!r} on argument {a.index} of {h.target} is outside the "
                            "engine's subset")
                ok = False
        return ok

    def _traced_arg_kind(self, h: Hook, site: Site, index: int, type_: str | None, where: str) -> str | None:
        """The kind of an argument of a trampoline program: a syscall's are integers or user strings (in the
        caller's registers); a function's or LSM hook's are typed as a kprobe's are."""
        if not (h.syscall and h.section == "kprobes"):
            return self._kernel_arg_kind(h, index, type_, where, n_args=_TRACED_ARGS)
        t = (type_ or "int").strip()
        if not 0 <= index < len(_SYSCALL_REGS):
            self.refuse(f"{where}: argument index {index} of {h.target}: a syscall has at most "
                        f"{len(_SYSCALL_REGS)} arguments")
            return None
        if t in _INT_TYPES:
            return "int"
        if t in _STRING_TYPES:
            return "str"
        self.refuse(f"{where}: argument {index} of type {t} on {h.target} with Override is outside the engine's "
                    "subset (a syscall's arguments: integers and strings)")
        return None

    def _uprobe(self, i: int, h: Hook) -> HookPlan | None:
        """A uprobe on a function (or offset, or address) of a user-space ELF file: a KPROBE program the
        engine attaches at the file offset (bpf/uprobes.py); its arguments are the user registers of the
        calling convention, strings read from user memory."""
        where = format_path(h.path)
        u = h.uprobe
        assert u is not None  # the parser places every uprobe hook
        if not self.f.uprobes:
            why = self.f.why("uprobes")
            self.refuse(f"{where}: uprobe on {u.describe()} needs uprobes, which this kernel lacks"
                        + (f" ({why})" if why else ""))
            return None
        if any(a.action == "Override" for s in h.selectors for a in s.match_actions):
            self.refuse(f"{where}: Override on uprobe {u.describe()} (changing what the function returns) is "
                        "outside the engine's subset; use Sigkill")
            return None
        site = Site(f"pl_h{i}_up", "uprobe", attach=u.describe())
        if self.resolve_uprobe is not None:
            try:
                placed = self.resolve_uprobe(u)
            except Unresolvable as e:
                self.refuse(f"{where}: {e}")
                return None
            site = replace(site, file=placed.file, offset=placed.offset)
        fields = tuple(Field(f"arg{k}", "void *" if (a := h.arg(k)) is not None and (a.type or "") not in _INT_TYPES
                             else "long", off, 8, not (a is not None and (a.type or "") in _UNSIGNED))
                       for k, off in enumerate(_UPROBE_REGS))
        return self._build(i, h, "process_uprobe", None, None, {a.index: a.index for a in h.args}, fields, None,
                           user_site=site)

    def _usdt(self, i: int, h: Hook) -> HookPlan | None:
        """A USDT probe: a uprobe program on each site of the probe's SDT note in the file (bpf/usdt.py), its
        arguments read as each site's note says (a register, a constant, memory) through `pl_usdt`, which the
        engine fills per site at load: the program is the same for every build of the binary."""
        where = format_path(h.path)
        u = h.usdt
        assert u is not None  # the parser places every usdt hook
        n_before = len(self.reasons)
        if not self.f.uprobes:
            why = self.f.why("uprobes")
            self.refuse(f"{where}: usdt {u.describe()} needs uprobes, which this kernel lacks"
                        + (f" ({why})" if why else ""))
            return None
        sets: list[tuple[int, int, int, Action]] = []  # (selector, note argument, value, action) of each Set
        for k, sel in enumerate(h.selectors):
            names = [act.action for act in sel.match_actions]
            for act in sel.match_actions:
                w = format_path(act.path)
                if act.action == "Override":
                    self.refuse(f"{w}: Override on usdt {u.describe()} is outside the engine's subset (a probe site "
                                "returns nothing); use Sigkill or Set")
                elif act.action == "Set":
                    if not self.f.probe_write_user:
                        why = self.f.why("probe_write_user")
                        self.refuse(f"{w}: Set on usdt {u.describe()} writes argValue into the process's memory "
                                    "with bpf_probe_write_user, which this kernel refuses"
                                    + (f" ({why})" if why else ""))
                    found = self._usdt_set(h, act, w)
                    if found is not None:
                        sets.append((k, *found, act))
                    if "Sigkill" in names or "Signal" in names or names.count("Set") > 1:
                        self.refuse(f"{w}: Set with {'another Set' if names.count('Set') > 1 else 'a signal'} in "
                                    "one selector: one enforcing action per selector (give each its own)")
        # a policy refused for its actions also says whether its probe is on this node
        probes: tuple[Probe, ...] = ()
        if self.resolve_usdt is not None:
            try:
                probes = self.resolve_usdt(u)
            except UsdtUnresolvable as e:
                self.refuse(f"{where}: {e}")
                return None
            for arg in h.args:
                short = [p for p in probes if arg.index >= len(p.args)]
                if short:
                    self.refuse(f"{where}: argument index {arg.index} of usdt {u.describe()}: the probe has "
                                f"{len(short[0].args)} argument(s) at {short[0].file} offset {short[0].offset:#x}")
            for _k, note_arg, _v, act in sets:
                # as Tetragon: the argument must be 4 bytes of memory (an `int` variable the probe names)
                bad = next((p.args[note_arg] for p in probes if note_arg < len(p.args)
                            and (p.args[note_arg].kind != DEREF or p.args[note_arg].size != 4)), None)
                if bad is not None:
                    self.refuse(f"{format_path(act.path)}: Set on usdt {u.describe()}: argument {note_arg} of the "
                                f"probe is {bad.spec!r}, not 4 bytes of memory (Set writes an int where the "
                                "argument is)")
        if len(self.reasons) > n_before:
            return None
        if sets:
            self.usdt_sets[i] = [(k, note_arg, value) for k, note_arg, value, _a in sets]
        n = max(1, len(probes))
        if self.usdt_sites + n > USDT_SITES:
            self.refuse(f"{where}: usdt {u.describe()}: {self.usdt_sites + n} USDT probe sites in the policy; at "
                        f"most {USDT_SITES}")
            return None
        site = Site(f"pl_h{i}_ud", "uprobe", attach=u.describe(), usdt_probes=probes, usdt_base=self.usdt_sites,
                    file=probes[0].file if probes else None, offset=probes[0].offset if probes else None)
        self.usdt_sites += n
        self.usdt = True
        # the arguments are not in fixed places: `_read_operand` reads each through pl_usdt_arg
        fields = tuple(Field(f"arg{k}", "void *" if (a := h.arg(k)) is not None and (a.type or "") not in _INT_TYPES
                             else "long", -1, 8, not (a is not None and (a.type or "") in _UNSIGNED))
                       for k in range(USDT_ARGS))
        return self._build(i, h, "process_usdt", None, None, {a.index: a.index for a in h.args}, fields, None,
                           user_site=site)

    def _usdt_set(self, h: Hook, a: Action, w: str) -> tuple[int, int] | None:
        """(note argument, value) of a Set action: `argIndex` is a position in the hook's args, whose `index`
        names the probe's argument; `argValue` the int32 written into the process's memory there."""
        if a.arg_index is None or a.arg_value is None:
            self.refuse(f"{w}: Set needs argIndex and argValue")
            return None
        if not 0 <= a.arg_index < len(h.args):
            self.refuse(f"{w}: Set argIndex {a.arg_index} names no argument of the hook's args "
                        f"({len(h.args)} given)")
            return None
        if not -(1 << 31) <= a.arg_value < 1 << 31:
            self.refuse(f"{w}: Set argValue {a.arg_value} is not an int32")
            return None
        return h.args[a.arg_index].index, a.arg_value

    def _uprobe_arg_kind(self, h: Hook, index: int, type_: str | None, where: str) -> str | None:
        t = (type_ or "int").strip()
        if h.section == "usdts":
            if not 0 <= index < USDT_ARGS:
                self.refuse(f"{where}: argument index {index} of usdt {h.target}: a USDT probe has at most "
                            f"{USDT_ARGS} arguments")
                return None
        elif not 0 <= index < len(_UPROBE_REGS):
            self.refuse(f"{where}: argument index {index} of uprobe {h.target}: uprobes read the first "
                        f"{len(_UPROBE_REGS)} arguments (the registers of the calling convention)")
            return None
        if t in _INT_TYPES:
            return "int"
        if t == "string":  # a NUL-terminated string in user memory
            return "str"
        self.refuse(f"{where}: argument {index} of type {t} on uprobe {h.target} is outside the engine's subset "
                    "(integers and string)")
        return None

    def _raw_tracepoint(self, i: int, h: Hook) -> HookPlan | None:
        """A tracepoint with `raw: true`: a raw tracepoint program, whose context is the arguments of the
        tracepoint's TP_PROTO (one u64 each, `index` counting them), typed by the policy and read through
        BTF as a kprobe's are (a linux_binprm, a file, a task's strings). It loads on every kernel this
        engine runs on (BPF_PROG_TYPE_RAW_TRACEPOINT needs no BPF trampoline, unlike tp_btf)."""
        assert h.subsystem and h.event
        where = format_path(h.path)
        if h.subsystem == "syscalls":
            self.refuse(f"{where}: raw on {h.target}: syscall tracepoints have no raw form (raw_syscalls:sys_enter "
                        "and sys_exit do)")
            return None
        if self.formats(h.subsystem, h.event) is None:
            self.refuse(f"{where}: tracepoint {h.target} does not exist on this kernel")
            return None
        for a in h.args:
            if a.resolve is not None:
                self.refuse(f"{where}: resolve {a.resolve!r} on argument {a.index} of raw tracepoint {h.target} is "
                            "outside the engine's subset")
                return None
        site = Site(f"pl_h{i}_raw", "raw_tracepoint", h.subsystem, h.event)
        return self._build(i, h, "process_tracepoint", h.subsystem, h.event, {a.index: a.index for a in h.args},
                           _traced_fields(h, tuple(8 * k for k in range(_TRACED_ARGS))), None, user_site=site)

    def _ftrace_list(self, i: int, h: Hook, cl: CallList) -> HookPlan | None:
        """A kprobe on a `generated_ftrace` list: one program, which the engine attaches at load to every
        kernel function of the ftrace list its pattern matches (so the object is the same on every node,
        whatever functions its kernel has); its events name the function by the address it ran at."""
        where = format_path(h.path)
        if h.return_probe:
            self.refuse(f"{where}: return: true on {h.target} (a generated_ftrace list) is outside the engine's "
                        "subset")
            return None
        self.func_ip_hooks.add(i)
        plan = self._function_kprobe(i, h)
        if plan is None:
            return None
        return replace(plan, function_ips=True,
                       sites=tuple(replace(s, pattern=cl.pattern) for s in plan.sites))

    def _loader_hook(self, i: int) -> HookPlan | None:
        """`spec.loader`: process_loader events from mmap's entry and return and from exec (bpf/loader.py)."""
        enter, leave = self.formats("syscalls", "sys_enter_mmap"), self.formats("syscalls", "sys_exit_mmap")
        ret = next((f for f in leave or () if f.name == "ret"), None)
        if enter is None or len(enter) < 11 or ret is None:
            self.refuse("spec.loader needs the syscalls:sys_enter_mmap and sys_exit_mmap tracepoints, which this "
                        "kernel lacks")
            return None
        self.loader_offsets = (enter[5 + 2].offset, enter[5 + 4].offset, ret.offset)  # mmap(addr, len, prot, flags, fd
        sites = (Site(loader.MMAP_ENTER_FN % i, "tracepoint", "syscalls", "sys_enter_mmap"),
                 Site(loader.MMAP_EXIT_FN % i, "tracepoint", "syscalls", "sys_exit_mmap"),
                 Site(loader.EXEC_FN % i, "raw_tracepoint", "sched", "sched_process_exec"))
        return HookPlan(index=i, section="loader", target="loader", event_kind="process_loader", subsystem=None,
                        event=None, sites=sites, operands=(), selector_actions=((_ACT_POST, 0),))

    def _loader_source(self, i: int) -> str:
        prot, fd, ret = self.loader_offsets
        return loader.source(i, prot=prot, fd=fd, ret=ret, mode_off=MODE_OFF, find_vma=True)

    def _all_syscalls(self, i: int, h: Hook) -> HookPlan | None:
        """A kprobe on a `generated_syscalls` list: one program on raw_syscalls:sys_enter, which sees every
        syscall (compat ones too); its events name the call by its number."""
        fields = self.formats("raw_syscalls", "sys_enter")
        ident = next((f for f in fields or () if f.name == "id"), None)
        if fields is None or ident is None:
            self.refuse(f"{format_path(h.path)}: kprobe on {h.target} needs the raw_syscalls:sys_enter tracepoint")
            return None
        if h.args:
            self.refuse(f"{format_path(h.path)}: arguments of a kprobe on every syscall ({h.target}) are outside the "
                        "engine's subset")
            return None
        self.sysid_hooks.add(i)
        guard = [f"s64 pl_sysid = *(s64 *)((char *)ctx + {ident.offset}) | ((s64)pl_compat() << 32);"]
        plan = self._build(i, h, "process_kprobe", "raw_syscalls", "sys_enter", {}, fields, None,
                           guards={"tp": guard})
        return replace(plan, syscall_ids=True) if plan is not None else None

    def _socket_kprobe(self, i: int, h: Hook) -> HookPlan | None:
        call = h.target
        overrides = any(a.action == "Override" for s in h.selectors for a in s.match_actions)
        signals = any(a.action in ("Sigkill", "Signal") for s in h.selectors for a in s.match_actions)
        if call in _SOCKET_CALLS:
            fields = self.formats("syscalls", "sys_enter_socket")
            if overrides:
                if not self.f.cgroup_sock_create:
                    self.refuse(f"kprobe on {call} with Override needs the cgroup sock_create hook, which this "
                                "kernel lacks")
                    return None
                if not signals:
                    return self._build(i, h, "process_kprobe", None, None, {}, (), ("sock_create",))
                if fields is None or not self.f.cgroup_send_signal:
                    self.refuse(f"kprobe on {call}: Override and Sigkill/Signal in one socket hook need "
                                "bpf_send_signal in cgroup socket programs and syscalls:sys_enter_socket")
                    return None
                # inet sockets on the cgroup hook (deny, or kill and deny); the other families reach no
                # cgroup hook: judged at sys_enter_socket, where only signals act
                family = self._field({0: 5}, 0, fields)
                assert family is not None
                self.notes.append(f"{format_path(h.path)}: Override cannot deny sockets of families other than "
                                  "AF_INET/AF_INET6 (no cgroup hook sees them); their matches are reported only")
                guard = [f"s32 pl_fam = *(s32 *)((char *)ctx + {family.offset});",
                         "if (pl_fam == 2 || pl_fam == 10) return 0;  /* inet: judged on the cgroup hook */"]
                return self._build(i, h, "process_kprobe", "syscalls", "sys_enter_socket",
                                   {a.index: 5 + a.index for a in h.args}, fields, ("sock_create",),
                                   mask_type=_SOCKET_CALLS[call], guards={"tp": guard})
            if fields is None:
                self.refuse("no syscalls:sys_enter_socket tracepoint on this kernel")
                return None
            return self._build(i, h, "process_kprobe", "syscalls", "sys_enter_socket",
                               {a.index: 5 + a.index for a in h.args}, fields, None,
                               mask_type=_SOCKET_CALLS[call])
        return self._connect_kprobe(i, h, overrides)

    def _connect_kprobe(self, i: int, h: Hook, overrides: bool) -> HookPlan | None:
        """An outbound-connect call on the cgroup hooks every way of reaching a peer passes through.

        Every action runs there: Override denies, Sigkill kills (bpf_send_signal works in these
        programs) and denies too, so not one byte of a TCP Fast Open SYN or a datagram leaves. What
        the hook means is kept: the TCP calls skip other protocols (and the family the call does not
        handle); security_socket_connect also sees connects of non-inet families, which reach no
        cgroup hook: for those a `sys_enter_connect` program signals (a denial is impossible there).
        """
        call = h.target
        arg_index, sees = _CONNECT_CALLS[call]
        sites = _EGRESS_SITES[sees]
        missing = [f"the cgroup {s} hook" for s in sites if not getattr(self.f, f"cgroup_{s}")]
        signals = any(a.action in ("Sigkill", "Signal") for s in h.selectors for a in s.match_actions)
        if signals and not self.f.cgroup_send_signal:
            missing.append("bpf_send_signal in cgroup socket programs")
        if missing:
            if overrides or self.formats("syscalls", "sys_enter_connect") is None:
                self.refuse(f"kprobe on {call} needs {' and '.join(missing)}, which this kernel lacks")
                return None
            return self._legacy_connect(i, h, arg_index, sees)
        guards: dict[str, list[str]] = {}
        for site in sites:
            g = []
            if sees != "any":
                g.append(f"if (ctx->protocol != {_IPPROTO_TCP} && ctx->protocol != {_IPPROTO_MPTCP}) "
                         "return 1;  /* a TCP call: other protocols never reach it */")
            if sees == "tcp4" and site == "connect6":
                g.append(f"if (!{_V4MAPPED}) return 1;  /* tcp_v4_connect: v4-mapped only */")
            if sees == "tcp6":
                g.append(f"if ({_V4MAPPED}) return 1;  /* v4-mapped: tcp_v6_connect hands over to tcp_v4_connect */")
            guards[site] = g
        fields: tuple[Field, ...] = ()
        index_map: dict[int, int] = {}
        if sees == "any" and not overrides:
            tp_fields = self.formats("syscalls", "sys_enter_connect")
            if tp_fields is not None:
                fields = tp_fields
                index_map = {1: 6, 2: 7}
                uaddr = self._field(index_map, 1, fields)
                assert uaddr is not None
                guards["tp"] = [
                    "u16 pl_fam = 0;",
                    f"bpf_probe_read_user(&pl_fam, sizeof(pl_fam), *(void **)((char *)ctx + {uaddr.offset}));",
                    "if (pl_fam == 2 || pl_fam == 10) return 0;  /* inet: judged on the cgroup hooks */",
                ]
        return self._build(i, h, "process_kprobe", "syscalls" if guards.get("tp") else None,
                           "sys_enter_connect" if guards.get("tp") else None, index_map, fields, sites,
                           sock_arg=arg_index, guards=guards)

    def _legacy_connect(self, i: int, h: Hook, arg_index: int, sees: str) -> HookPlan | None:
        """Without cgroup connect hooks: signals on sys_enter_connect, which neither sees TCP Fast Open
        nor tells TCP from other sockets (said in a note)."""
        fields = self.formats("syscalls", "sys_enter_connect")
        assert fields is not None
        self.notes.append(f"{format_path(h.path)}: {h.target} runs on sys_enter_connect (no cgroup connect "
                          "hooks here), which misses TCP Fast Open and datagrams sent to an address"
                          + (" and also sees non-TCP connects" if sees != "any" else ""))
        # the sock/sockaddr argument becomes the syscall's `uservaddr` (field 6), addrlen field 7
        index_map = {0: 6} if arg_index == 0 else {1: 6, 2: 7}
        return self._build(i, h, "process_kprobe", "syscalls", "sys_enter_connect", index_map, fields, None,
                           sock_arg=arg_index)

    # ------------------------------------------------------------------ one hook → programs

    def _build(self, i: int, h: Hook, event_kind: str, sub: str | None, ev: str | None,
               index_map: dict[int, int], fields: tuple[Field, ...], cgroup_sites: tuple[str, ...] | None,
               *, mask_type: bool = False, sock_arg: int | None = None,
               guards: dict[str, list[str]] | None = None, kernel_fn: str | None = None,
               ret_type: str | None = None, user_site: Site | None = None,
               traced: Site | None = None, sys_exit: tuple[str, int] | None = None) -> HookPlan | None:
        """The programs of one hook: one per cgroup site (or one tracepoint program), plus a tracepoint
        program next to the cgroup ones when `guards` has a "tp" entry. `guards` are C lines, per site
        (cgroup attach name or "tp"), that return early for calls the hook does not mean."""
        where = format_path(h.path)
        guards = guards or {}
        n_before = len(self.reasons)
        exec_hook = sub == "sched" and ev == "sched_process_exec"
        # operands: one per configured arg
        operands: list[Operand] = []
        slot = 0
        for pos, a in enumerate(h.args):
            member = -1
            if a.resolve is not None:
                found = self._user_member(h, a, ev, index_map, fields, cgroup_sites, where)
                if found is None:
                    continue
                member = found
            if user_site is not None and user_site.kind == "raw_tracepoint":
                kind = self._kernel_arg_kind(h, a.index, a.type, where, n_args=_TRACED_ARGS)
            elif user_site is not None:
                kind = self._uprobe_arg_kind(h, a.index, a.type, where)
            elif traced is not None:
                kind = self._traced_arg_kind(h, traced, a.index, a.type, where)
            else:
                kind = (self._kernel_arg_kind(h, a.index, a.type, where) if kernel_fn else
                        self._arg_kind(h, a.index, a.type, index_map, fields, cgroup_sites, sock_arg, where))
            if kind is None:
                continue
            slot_of = -1
            if kind in _SLOT_KINDS:
                slot_of = slot
                slot += 1
            operands.append(Operand(pos, a.index, kind, (a.type or kind).strip(), a.label, slot_of, member,
                                    self._size_arg(a, kind)))
        n_slots = slot + (1 if exec_hook else 0)
        if n_slots > MAX_STRING_OPERANDS:
            self.refuse(f"{where}: {slot} string/sockaddr arguments; at most {MAX_STRING_OPERANDS} per hook")
        # selectors
        sel_conds: list[tuple[list[str], int, int, bool, int]] = []  # (conditions, action, sig, post, errno)
        ret_conds: list[list[str]] = []  # per entry of sel_conds: its matchReturnArgs, on the return value `r`
        sock_acts: list[list[tuple[bool, int]]] = []  # per entry of sel_conds: its TrackSock/UntrackSock actions
        limits: list[tuple[int, int] | None] = []  # per entry of sel_conds: its Post's rateLimit (ns, scope)
        uses_bin = uses_parent = False
        self._hook_i = i
        for sel in h.selectors:
            conds, ub, up = self._selector(h, sel, operands, exec_hook, cgroup_sites)
            uses_bin |= ub
            uses_parent |= up
            denying = traced.kind if traced is not None and traced.kind in _TRAMPOLINE_SITES else ""
            act = self._actions(h, sel, cgroup_sites, denies=denying)
            if sel.match_return_args and ret_type is None:
                self.refuse(f"{format_path(sel.path)}: matchReturnArgs needs the function's return: "
                            "set return: true and a returnArg on the hook")
            rc = []
            for af in sel.match_return_args if ret_type is not None else ():
                if af.index != 0:
                    self.refuse(f"{format_path(af.path)}: matchReturnArgs index {af.index}: the return value is 0")
                    continue
                if ret_type == "sock":
                    self.refuse(f"{format_path(af.path)}: matchReturnArgs on a returned sock is outside the "
                                "engine's subset")
                    continue
                c = self._int_cond(af, "r", format_path(af.path))
                if c:
                    rc.append(c)
            if act is None:
                continue
            sel_conds.append((conds, *act))
            ret_conds.append(rc)
            sock_acts.append(self._sock_actions(h, sel, operands))
            limits.append(self._rate_limit(h, sel))
        if any(sock_acts):
            self.sock_acts[i] = sock_acts
        if any(limits):
            self.rate_limits[i] = (limits, sum(1 << o.slot for o in operands if 0 <= o.slot < 2))
        if not h.selectors:
            sel_conds.append(([], _ACT_POST, 0, True, 0))
        if len(self.reasons) > n_before:
            return None
        if cgroup_sites is not None and (uses_bin or uses_parent):
            self.notes.append(f"{where}: binaries on a cgroup hook come from the process map")
        if (uses_bin and not exec_hook) or uses_parent or any(f for f in self.follow):
            self.tracking = True
        sites: list[Site] = []
        kinds: tuple[str | None, ...] = cgroup_sites or (None,)
        if cgroup_sites and "tp" in guards:
            kinds = (*cgroup_sites, None)
        mmap_fields = self.formats("syscalls", "sys_enter_mmap") if exec_hook and uses_bin else None
        if mmap_fields is not None and len(mmap_fields) < 11:
            mmap_fields = None
        # a program run by a loader (`ld.so /tmp/x`) is judged when the loader maps it: only for exec hooks
        # whose selectors look at binaries alone (the exec's own arguments do not exist at mmap)
        ldso = mmap_fields is not None and not operands
        if exec_hook and uses_bin and not ldso:
            self.notes.append(f"{where}: a program started through its loader (ld.so PROGRAM) is judged as the "
                              "loader only" + (" (the hook reads arguments)" if operands else ""))
        if traced is not None:  # one program on the BPF trampoline, which denies by its return
            body = partial(self._program, i, h, traced, operands, sel_conds, index_map, fields,
                           exec_hook, uses_bin, uses_parent, mask_type, (), stash=ret_type is not None)
            traced_sites: tuple[Site, ...] = (traced,)
            if ret_type is None:
                self.functions.append(body)
            else:
                # `return: true`: the entry denies and stashes its event; fexit, which sees the function's return
                # (the overridden one too), filters on it, signals and posts
                ret = Site(f"pl_h{i}_fx", "fexit", attach=traced.attach)
                traced_sites = (traced, ret)
                self.ret = True
                self.functions.append(lambda: _RET_STASH % {"i": i} + body())
                self.functions.append(partial(self._return_program, i, ret, ret_type, ret_conds))
            return HookPlan(index=i, section=h.section, target=h.target, event_kind=event_kind,
                            subsystem=sub, event=ev, sites=traced_sites, operands=tuple(operands),
                            selector_actions=tuple((c[1], c[2]) for c in sel_conds), message=h.message, tags=h.tags,
                            return_type=ret_type)
        if sys_exit is not None and ret_type is not None and sub and ev:
            # a syscall's return, on its sys_exit tracepoint (where kprobes are missing, the same as a
            # kretprobe on the syscall's entry); 32-bit calls through pl_ia32 and pl_ia32x
            exit_ev, ret_off = sys_exit
            copies = [(o.position, o.slot) for o in operands if o.size_arg == RETURN_COPY and 0 <= o.slot < 2]
            if copies:  # a returnCopy buffer (read's): read at the return, from the address the entry kept
                self.ret_copies[i] = copies
            entry = Site(f"pl_h{i}_tp", "tracepoint", sub, ev)
            ret = Site(f"pl_h{i}_tx", "tracepoint", "syscalls", exit_ev)
            self.ret = True
            self._ia32_variant(ev.removeprefix("sys_enter_"), entry.function, exit_fn=ret.function)
            body = partial(self._program, i, h, entry, operands, sel_conds, index_map, fields, exec_hook, uses_bin,
                           uses_parent, mask_type, (), stash=True)
            self.functions.append(lambda: _RET_STASH % {"i": i} + body())
            self.functions.append(partial(self._return_program, i, ret, ret_type, ret_conds, ret_offset=ret_off))
            return HookPlan(index=i, section=h.section, target=h.target, event_kind=event_kind,
                            subsystem=sub, event=ev, sites=(entry, ret), operands=tuple(operands),
                            selector_actions=tuple((c[1], c[2]) for c in sel_conds), message=h.message, tags=h.tags,
                            return_type=ret_type)
        if kernel_fn and ret_type is not None:
            entry, ret = Site(f"pl_h{i}_kp", "kprobe", attach=kernel_fn), Site(f"pl_h{i}_kr", "kretprobe",
                                                                                attach=kernel_fn)
            self.ret = True
            body = partial(self._program, i, h, entry, operands, sel_conds, index_map, fields, exec_hook, uses_bin,
                           uses_parent, mask_type, (), stash=True)
            self.functions.append(lambda: _RET_STASH % {"i": i} + body())
            # a returned sock goes in the first event string slot the arguments leave free
            ret_slot = sum(1 for o in operands if o.slot >= 0) if ret_type == "sock" else -1
            if ret_slot >= 2:
                self.refuse(f"{where}: a returned sock needs one of the event's two string slots, which the "
                            "arguments fill")
                return None
            self.ret_socks[i] = (ret_slot, h.return_arg_action)
            self.functions.append(partial(self._return_program, i, ret, ret_type, ret_conds))
            return HookPlan(index=i, section=h.section, target=h.target, event_kind=event_kind,
                            subsystem=sub, event=ev, sites=(entry, ret), operands=tuple(operands),
                            selector_actions=tuple((c[1], c[2]) for c in sel_conds), message=h.message, tags=h.tags,
                            return_type=ret_type, return_slot=ret_slot)
        for site_kind in kinds:
            fn = f"pl_h{i}_{site_kind or ('kp' if kernel_fn else 'tp')}"
            if user_site is not None:
                site = user_site
            elif kernel_fn:
                site = Site(fn, "kprobe", attach=kernel_fn)
            else:
                site = Site(fn, "tracepoint", sub, ev) if site_kind is None else Site(fn, "cgroup", attach=site_kind)
            sites.append(site)
            if site_kind is None and sub == "syscalls" and ev and ev.startswith("sys_enter_"):
                self._ia32_variant(ev.removeprefix("sys_enter_"), fn)
            self.functions.append(partial(self._program, i, h, site, operands, sel_conds, index_map, fields,
                                          exec_hook, uses_bin, uses_parent, mask_type,
                                          tuple(guards.get(site_kind or "tp", ())), mark_loader=ldso))
        if ldso:
            assert mmap_fields is not None
            self.ldso = True
            site = Site(f"pl_h{i}_ldso", "tracepoint", "syscalls", "sys_enter_mmap")
            sites.append(site)
            self.functions.append(partial(self._program, i, h, site, operands, sel_conds, index_map, mmap_fields,
                                          exec_hook, uses_bin, uses_parent, mask_type, (), ldso=True))
        return HookPlan(index=i, section=h.section, target=h.target, event_kind=event_kind,
                        subsystem=sub, event=ev, sites=tuple(sites), operands=tuple(operands),
                        selector_actions=tuple((c[1], c[2]) for c in sel_conds), message=h.message, tags=h.tags,
                        uprobe=h.uprobe, usdt=h.usdt)

    def _user_member(self, h: Hook, a: Arg, ev: str | None, index_map: dict[int, int], fields: tuple[Field, ...],
                     cgroup_sites: tuple[str, ...] | None, where: str) -> int | None:
        """The offset of `a.resolve` inside the user struct a syscall argument points to (clone3's
        clone_args, openat2's open_how): user ABI, fixed by the kernel for every version, read with
        bpf_probe_read_user. Kernel structs cannot be read here, so any other `resolve` is refused."""
        struct = a.btf_type or _SYSCALL_STRUCTS.get(ev or "")
        members = _USER_STRUCTS.get(struct or "", {})
        f = self._field(index_map, a.index, fields) if cgroup_sites is None else None
        if (h.subsystem != "syscalls" and not h.syscall) or f is None or not f.pointer or a.resolve not in members:
            known = ", ".join(f"{s}.{m}" for s, ms in _USER_STRUCTS.items() for m in ms)
            self.refuse(f"{where}: resolve {a.resolve!r} on argument {a.index} of {h.target}: the engine reads only "
                        f"members of user structs that syscall arguments point to ({known})")
            return None
        if (a.type or "") not in _INT_TYPES:
            self.refuse(f"{where}: resolve {a.resolve!r} reads an integer; give the argument an integer type")
            return None
        return members[a.resolve]

    def _arg_kind(self, h: Hook, index: int, type_: str | None, index_map: dict[int, int],
                  fields: tuple[Field, ...], cgroup_sites: tuple[str, ...] | None, sock_arg: int | None,
                  where: str) -> str | None:
        t = (type_ or "").strip()
        if t in ("sock", "sockaddr", "skb", "socket"):
            if sock_arg is not None and index == sock_arg and t != "skb":
                return "sockaddr"
            if t == "sockaddr" and cgroup_sites is None and index_map:
                f = self._field(index_map, index, fields)
                if f is not None and f.pointer and h.subsystem in (None, "syscalls"):
                    return "sockaddr"
            why = ("kernel objects are not readable without kprobes" if not self.f.kprobes else
                   "a socket hook that acts runs on the cgroup socket hooks, which see the destination sockaddr and "
                   "nothing else of the socket")
            self.refuse(f"{where}: argument {index} of type {t} on {h.target}: {why}")
            return None
        if cgroup_sites == ("sock_create",):
            if index in (0, 1, 2) and (not t or t in _INT_TYPES):
                return "int"
            self.refuse(f"{where}: argument {index} of {h.target} is not available on the cgroup sock_create hook "
                        "(family, type, protocol are)")
            return None
        if cgroup_sites is not None:
            filtered = any(af.index == index for sel in h.selectors for af in sel.match_args)
            if filtered or (t and t not in _INT_TYPES):
                self.refuse(f"{where}: argument {index} ({t or 'untyped'}) of {h.target} is not available on the "
                            "cgroup connect hooks (the destination sockaddr is)")
                return None
            # only reported: the cgroup hooks do not have it, so their events say 0
            self.notes.append(f"{where}: argument {index} of {h.target} is reported as 0 from the cgroup hooks")
            return "int"
        f = self._field(index_map, index, fields) if (not index_map or index in index_map) else None
        if f is None:
            self.refuse(f"{where}: argument index {index} does not exist on {self._site_name(h)}")
            return None
        if t in ("char_buf", "char_iovec") and h.section == "kprobes" and h.syscall:
            # Tetragon's shapes of a syscall's buffer: bytes to the size sizeArgIndex gives, not a string
            if not f.pointer:
                self.refuse(f"{where}: argument {index} ({f.name}) is not a pointer")
                return None
            kind = self._object_arg_kind(h, index, t, where, len(fields) - 5 if index_map else 6)
            size = (h.arg(index).size_arg_index or 0) - 1  # type: ignore[union-attr]
            if kind == "buf" and size >= 0 and size not in index_map:
                self.refuse(f"{where}: argument {index} ({t}) of {h.target}: its size argument {size} "
                            "(sizeArgIndex - 1) must be configured in args")
                return None
            return kind
        if t in _STRING_TYPES or (not t and (f.data_loc or f.ctype.startswith("char["))):
            if not (f.pointer or f.data_loc or f.ctype.startswith("char[")):
                self.refuse(f"{where}: argument {index} ({f.name}) is not a string field")
                return None
            return "str"
        if t and t not in _INT_TYPES:
            self.refuse(f"{where}: argument {index} of type {t} on {self._site_name(h)} is outside the engine's "
                        "subset")
            return None
        if "[" in f.ctype or f.size not in (1, 2, 4, 8):
            self.refuse(f"{where}: argument {index} ({f.name}, {f.ctype}) is an array, not an integer")
            return None
        return "int"

    def _kernel_arg_kind(self, h: Hook, index: int, type_: str | None, where: str,
                         n_args: int = len(_PT_REGS_ARGS)) -> str | None:
        t = (type_ or "int").strip()
        if not 0 <= index < n_args:
            reader = "kprobes read" if n_args == len(_PT_REGS_ARGS) else "BPF trampoline programs read"
            self.refuse(f"{where}: argument index {index} of {h.target}: {reader} the first {n_args} arguments")
            return None
        if t == "nop":  # Tetragon neither reads nor reports it
            return None
        if t in _INT_TYPES:
            return "int"
        if t in ("string", "filename") or t in _PATH_TYPES:
            return "str"
        if t in ("sock", "cred"):
            return t
        if t in _OBJECT_KINDS:
            return self._object_arg_kind(h, index, t, where, n_args)
        self.refuse(f"{where}: argument {index} of type {t} on {h.target} is outside the engine's subset "
                    f"(kernel functions: integers, string, {', '.join(_KERNEL_TYPES)})")
        return None

    def _object_arg_kind(self, h: Hook, index: int, t: str, where: str, n_args: int) -> str | None:
        """The kind of a kernel-object argument (`_OBJECT_KINDS`); a buffer's size comes from the argument
        sizeArgIndex names (counted from 1, as Tetragon does), or from the return value (returnCopy)."""
        kind = _OBJECT_KINDS[t]
        if kind != "buf":
            return kind
        a = h.arg(index)
        assert a is not None
        if a.max_data:
            self.notes.append(f"{where}: maxData on argument {index} of {h.target}: events carry its first {STRLEN} "
                              "bytes and its size")
        if a.return_copy:
            if t != "char_buf" or not h.return_probe or h.section != "kprobes":
                self.refuse(f"{where}: returnCopy on argument {index} ({t}) of {h.target}: the engine copies a "
                            "char_buf when a kretprobe (return: true) returns")
                return None
            return kind
        if t == "iov_iter":  # the iterator holds its size
            return kind
        size = a.size_arg_index
        if size is None or not 1 <= size <= n_args or size - 1 == index:
            self.refuse(f"{where}: argument {index} ({t}) of {h.target} needs sizeArgIndex, the argument (from 1 "
                        f"to {n_args}, not itself) that gives its size" + (f"; got {size}" if size is not None else ""))
            return None
        return kind

    @staticmethod
    def _size_arg(a: Arg, kind: str | None) -> int:
        """`Operand.size_arg` of argument `a`."""
        if kind != "buf":
            return -1
        if a.return_copy:
            return RETURN_COPY
        return a.size_arg_index - 1 if a.size_arg_index else -1

    def _site_name(self, h: Hook) -> str:
        return h.target if h.section == "tracepoints" else f"{h.target} (via its syscall tracepoint)"

    @staticmethod
    def _field(index_map: dict[int, int], index: int, fields: tuple[Field, ...]) -> Field | None:
        fi = index_map.get(index, index)
        return fields[fi] if 0 <= fi < len(fields) else None

    def _selector(self, h: Hook, s: Selector, operands: list[Operand], exec_hook: bool,
                  cgroup_sites: tuple[str, ...] | None) -> tuple[list[str], bool, bool]:
        where = format_path(s.path)
        for key in s.unsupported:
            self.refuse(f"{where}: {key} is outside the engine's subset")
        conds: list[str] = []
        needs = self.hook_needs.setdefault(self._hook_i, set())
        # Tetragon's programs read only a selector's first matchPIDs entry, and its first 4 values
        # (pfilter.h: selector_process_filter, selector_match): so do these, saying so
        pids = s.match_pids[:1]
        for pf in s.match_pids[1:]:
            self.notes.append(f"{format_path(pf.path)}: ignored, as Tetragon does: its programs read only the "
                              "first matchPIDs entry of a selector")
        task_selectors = [*s.match_namespaces, *s.match_capabilities,
                          *(p for p in pids if p.is_namespace_pid or p.follow_forks),
                          *s.match_capability_changes, *s.match_namespace_changes]
        if task_selectors and cgroup_sites is not None:
            self.refuse(f"{where}: matchNamespaces, matchCapabilities(Changes), matchNamespaceChanges, "
                        f"isNamespacePID and followForks read the current task, which the cgroup hooks "
                        f"{h.target} runs on cannot")
            task_selectors = []
        for ns in s.match_namespaces if task_selectors else ():
            c = self._ns_cond(ns)
            if c:
                conds.append(c)
                needs.add(f"ns:{ns.namespace.lower()}")
        for cf in s.match_capabilities if task_selectors else ():
            c = self._caps_cond(cf, needs)
            if c:
                conds.append(c)
                needs.add(f"caps:{cf.type.lower()}")
        for cf in s.match_capability_changes if task_selectors else ():
            c = self._caps_cond(cf, needs, change=True)
            if c:
                conds.append(c)
        if len(s.match_namespace_changes) > 1:
            self.refuse(f"{where}: matchNamespaceChanges takes a single filter (Tetragon's limit)")
        for nc in s.match_namespace_changes[:1] if task_selectors else ():
            c = self._ns_change_cond(nc, needs)
            if c:
                conds.append(c)
        for pf in pids:
            c = self._pids_cond(pf, needs, bool(task_selectors))
            if c:
                conds.append(c)
        uses_bin = bool(s.match_binaries)
        for bf in s.match_binaries:
            bc = self._bin_filter(bf, "b", exec_hook)
            if bc:
                conds.append(bc)
        for bf in s.match_parent_binaries:
            if bf.follow_children:
                self.refuse(f"{format_path(bf.path)}: followChildren on matchParentBinaries is outside the subset")
                continue
            pc = self._bin_filter(bf, "pb", False)
            if pc:
                conds.append(pc)
        for af in s.match_args:
            ac = self._arg_filter(h, af, operands, cgroup_sites)
            if ac:
                conds.append(ac)
        return conds, uses_bin, bool(s.match_parent_binaries)

    def _pids_cond(self, pf: PidsFilter, needs: set[str], task: bool) -> str | None:
        """matchPIDs as Tetragon's pfilter.h has it. Without followForks: the process's tgid (or, with
        isNamespacePID, its pid in its own pid namespace, 0 in the initial one). With followForks: that
        pid or the pid of any of its first 9 ancestors by `pl_lineage` (each process's parent as recorded
        at its fork, kept while the process lives, so a process whose parent died still leads to its
        grandparent; a dead process's own entry is gone, and the walk ends there); with
        isNamespacePID, the ancestors' namespace pids, and a process of the initial pid namespace never
        passes, whatever the operator."""
        pw = format_path(pf.path)
        if (pf.is_namespace_pid or pf.follow_forks) and not task:
            return None  # refused: a cgroup hook
        if pf.operator not in ("In", "NotIn") or not pf.values:
            self.refuse(f"{pw}: matchPIDs operator {pf.operator!r} (In, NotIn with values)")
            return None
        if any(not 0 <= v < 1 << 32 for v in pf.values):
            self.refuse(f"{pw}: matchPIDs values are 32-bit pids")
            return None
        values = pf.values[:4]
        if len(pf.values) > 4:
            self.notes.append(f"{pw}: only the first 4 values count, as in Tetragon (MAX_SELECTOR_VALUES)")
        if not pf.follow_forks:
            who = "pl_nstgid" if pf.is_namespace_pid else "tgid"
            if pf.is_namespace_pid:
                needs.add("nspid")
            c = " || ".join(f"{who} == {v}" for v in values)
            return f"({c})" if pf.operator == "In" else f"!({c})"
        self.lineage = True
        needs.add("lineage")
        if pf.is_namespace_pid:
            # Tetragon compares each entry's nspid and a parent pid it leaves 0: 0 is always found
            found = " || ".join("1" if v == 0 else f"pl_anc_ns(pl_anc, {v})" for v in values)
            return f"(pl_anc && pl_anc->ns[0] && {'' if pf.operator == 'In' else '!'}({found}))"
        found = " || ".join(f"pl_anc_pid(pl_anc, {v})" for v in values)
        return f"({found})" if pf.operator == "In" else f"!({found})"

    def _ns_cond(self, ns: NamespacesFilter) -> str | None:
        w = format_path(ns.path)
        kind = ns.namespace.lower()
        if kind not in _NAMESPACES:
            self.refuse(f"{w}: namespace {ns.namespace!r} (Tetragon's are {', '.join(_NS_NAMES)})")
            return None
        if ns.operator not in ("In", "NotIn") or not ns.values:
            self.refuse(f"{w}: matchNamespaces operator {ns.operator!r} (In, NotIn with values)")
            return None
        for v in ns.values:
            if v != "host_ns" and not v.isdigit():
                self.refuse(f"{w}: namespace value {v!r} (an inode number, or host_ns)")
                return None
        if len(self.ns_filters) >= 64:
            self.refuse(f"{w}: more than 64 matchNamespaces entries in one policy")
            return None
        bit = len(self.ns_filters)
        self.ns_filters.append(NsEntry(_NAMESPACES[kind], ns.values, bit))
        c = f"(pl_nsb_{kind} & (1ULL << {bit}))"
        return c if ns.operator == "In" else f"!{c}"

    def _in_map_cond(self, af: ArgFilter, var: str, w: str) -> str | None:
        """InMap / NotInMap on an integer: its values, or the syscalls of a `list:<name>` (x86-64 numbers
        outside a compat syscall, ia32 numbers inside one: the two tables number calls differently)."""
        native: list[int] = []
        compat: list[int] = []
        for v in af.values:
            if not v.startswith("list:"):
                try:
                    native.append(int(v, 0))
                except ValueError:
                    self.refuse(f"{w}: {af.operator} value {v!r} (an integer, or list:<name>)")
                    return None
                continue
            cl = self.p.call_list(v.removeprefix("list:"))
            if cl is None or cl.type != "syscalls":
                self.refuse(f"{w}: {v} names no syscalls list of spec.lists")
                return None
            for call in cl.values:
                is_ia32 = call.startswith("__ia32_")
                name = call
                for pre in ("__ia32_compat_sys_", "__ia32_sys_", *SYSCALL_PREFIXES):
                    name = name.removeprefix(pre)
                nr = (ia32.NUMBERS if is_ia32 else x64.NUMBERS).get(name)
                if nr is None:
                    self.refuse(f"{format_path(cl.path)}: {call} is not a {'ia32' if is_ia32 else 'x86-64'} syscall")
                    return None
                (compat if is_ia32 else native).append(nr)
        lists = any(v.startswith("list:") for v in af.values)
        parts = []
        if native:
            c = " || ".join(f"{var} == {n}" for n in native)
            parts.append(f"(!pl_compat() && ({c}))" if lists else f"({c})")
        if compat:
            parts.append("(pl_compat() && (" + " || ".join(f"{var} == {n}" for n in compat) + "))")
        c = "(" + " || ".join(parts) + ")"
        return c if af.operator == "InMap" else f"!{c}"

    def _caps_cond(self, cf: CapabilitiesFilter, needs: set[str], change: bool = False) -> str | None:
        """matchCapabilities (the task's set has one of the values: In, or none: NotIn) or, with `change`,
        matchCapabilityChanges (Tetragon's: In, one of the values differs from the set the process had at its
        exec; NotIn, only other capabilities differ). isNamespaceCapability: only a task outside the node's
        user namespace matches (Tetragon compares with /proc/1/ns/user, resolved at load as host_ns)."""
        w = format_path(cf.path)
        field = "matchCapabilityChanges" if change else "matchCapabilities"
        which = cf.type.lower()
        if which not in _CAP_SETS:
            self.refuse(f"{w}: capability type {cf.type!r} (Effective, Inheritable, Permitted)")
            return None
        if cf.operator not in ("In", "NotIn") or not cf.values:
            self.refuse(f"{w}: {field} operator {cf.operator!r} (In, NotIn with values)")
            return None
        mask = 0
        for v in cf.values:
            name = v if v.startswith("CAP_") else f"CAP_{v}"
            bit = _CAP_BITS.get(name)
            if bit is None:
                self.refuse(f"{w}: unknown capability {v!r}")
                return None
            mask |= 1 << bit
        in_user_ns = ""
        if cf.is_namespace_capability:
            ns = self._ns_cond(NamespacesFilter("User", "NotIn", ("host_ns",), cf.path))
            if ns is None:
                return None
            needs.add("ns:user")
            in_user_ns = f"{ns} && "
        needs.add(f"caps:{which}")
        if change:
            self._exec_state(needs)
            return (f"(pl_b && {in_user_ns}pl_changed_caps(pl_b->caps[{_CAP_SETS[which]}], pl_caps_{which}, "
                    f"{_c(mask)}, {int(cf.operator == 'In')}))")
        c = f"((pl_caps_{which} & {_c(mask)}) != 0)"
        return f"({in_user_ns}{c if cf.operator == 'In' else '!' + c})"

    def _ns_change_cond(self, nc: NamespaceChangesFilter, needs: set[str]) -> str | None:
        """Tetragon's matchNamespaceChanges: In, one of the named namespaces is not the one the process had at
        its exec; NotIn, one of the others is not. A namespace the exec state lacks (0) never counts."""
        w = format_path(nc.path)
        if nc.operator not in ("In", "NotIn") or not nc.values:
            self.refuse(f"{w}: matchNamespaceChanges operator {nc.operator!r} (In, NotIn with values)")
            return None
        named = set()
        for v in nc.values:
            if v.lower() not in _NAMESPACES:
                self.refuse(f"{w}: namespace {v!r} (Tetragon's are {', '.join(_NS_NAMES)})")
                return None
            named.add(v.lower())
        kinds = [k for k in _NAMESPACES if (k in named) == (nc.operator == "In")]
        self._exec_state(needs)
        for k in kinds:
            needs.add(f"nsi:{k}")
        changed = " || ".join(f"pl_changed_ns(pl_b->ns[{_NAMESPACES[k]}], pl_nsi_{k})" for k in kinds) or "0"
        return f"(pl_b && ({changed}))"

    def _exec_state(self, needs: set[str]) -> None:
        """A selector of this hook compares the task with its exec state: the tracking programs keep it."""
        needs.add("base")
        self.exec_state = self.tracking = True

    def _new_str_filter(self, table: str, values: tuple[str, ...], binary: bool = False) -> int:
        bit = len(self.str_filters)
        self.str_filters.append(_StrFilter(bit, table, values, binary))
        return bit

    def _bin_filter(self, bf: BinariesFilter, var: str, exec_hook: bool) -> str | None:
        w = format_path(bf.path)
        if bf.operator not in _BIN_OPS:
            self.refuse(f"{w}: matchBinaries operator {bf.operator!r} (supported: {', '.join(_BIN_OPS)})")
            return None
        if not bf.values:
            self.refuse(f"{w}: matchBinaries needs values")
            return None
        if any(len(v.encode()) >= STRLEN for v in bf.values):
            self.refuse(f"{w}: a value is longer than {STRLEN - 1} bytes")
            return None
        table, negate = _BIN_OPS[bf.operator]
        bit = self._new_str_filter(table, bf.values, binary=True)
        positive = f"({var}_{table} & (1ULL << {bit}))"
        if bf.follow_children:
            fbit = len(self.follow)
            self.follow.append(FollowFilter(fbit, table, bf.values))
            self.tracking = True
            positive = f"({positive} || (fbits & (1ULL << {fbit})))"
        return f"!{positive}" if negate else positive

    def _arg_filter(self, h: Hook, af: ArgFilter, operands: list[Operand],
                    cgroup_sites: tuple[str, ...] | None) -> str | None:
        w = format_path(af.path)
        # Tetragon: for kprobes `index` names the argument's own `index`; for tracepoints it is the
        # position in the hook's args list. Each falls back to the other reading when it names nothing,
        # so a tracepoint filter written against the format index (args [{index: 5}], matchArgs 5) works.
        by_index = next((i for i, a in enumerate(h.args) if a.index == af.index), -1)
        by_position = af.index if 0 <= af.index < len(h.args) else -1
        if h.section in ("kprobes", "uprobes", "usdts"):
            pos = by_index if by_index >= 0 else by_position
        else:
            pos = by_position if by_position >= 0 else by_index
        op = next((o for o in operands if o.position == pos), None)
        if op is None:
            self.refuse(f"{w}: matchArgs index {af.index} does not name a configured argument of {h.target}")
            return None
        if not af.values:
            self.refuse(f"{w}: matchArgs needs values")
            return None
        unfilled = next((v for v in af.values if "${" in v), None)
        if unfilled is not None:
            self.refuse(f"{w}: placeholder {unfilled} is filled on each node from its agent's `placeholders` "
                        "(agent.yaml); the node builds this policy's object")
            return None
        if op.kind == "int":
            return self._int_cond(af, f"a{pos}", w)
        if op.kind == "buf" and op.size_arg == RETURN_COPY:
            self.refuse(f"{w}: matchArgs on a returnCopy buffer: it is read when the function returns, after the "
                        "selectors ran")
            return None
        if op.kind in ("str", "buf"):  # a buffer is matched on its first bytes, as a string of that length
            if af.operator not in _STR_ARG_OPS:
                self.refuse(f"{w}: operator {af.operator!r} on a string argument (supported: "
                            f"{', '.join(_STR_ARG_OPS)})")
                return None
            if any(len(v.encode()) >= STRLEN for v in af.values):
                self.refuse(f"{w}: a value is longer than {STRLEN - 1} bytes")
                return None
            table, negate = _STR_ARG_OPS[af.operator]
            bit = self._new_str_filter(table, af.values)
            c = f"(s{op.slot}_{table} & (1ULL << {bit}))"
            return f"!{c}" if negate else c
        if op.kind in ("cred", "obj"):
            self.refuse(f"{w}: matchArgs on a {op.type_name} argument is outside the engine's subset")
            return None
        return self._sock_cond(af, op, w, cgroup_sites)

    def _int_cond(self, af: ArgFilter, var: str, w: str) -> str | None:
        if af.operator in ("InMap", "NotInMap"):
            return self._in_map_cond(af, var, w)
        if af.operator not in _INT_OPS:
            self.refuse(f"{w}: operator {af.operator!r} on an integer argument (supported: {', '.join(_INT_OPS)})")
            return None
        try:
            if af.operator in ("InRange", "NotInRange"):
                ranges = [_range(v) for v in af.values]
                c = " || ".join(f"({var} >= {lo}LL && {var} <= {hi}LL)" for lo, hi in ranges)
                return f"({c})" if af.operator == "InRange" else f"!({c})"
            vals = [int(v, 0) for v in af.values]
        except ValueError as e:
            self.refuse(f"{w}: {e}")
            return None
        if af.operator == "Equal":
            return "(" + " || ".join(f"{var} == {_c(v)}" for v in vals) + ")"
        if af.operator == "NotEqual":
            return "(" + " && ".join(f"{var} != {_c(v)}" for v in vals) + ")"
        if af.operator == "Mask":
            return "(" + " || ".join(f"((u64){var} & {_c(v)}) != 0" for v in vals) + ")"
        if len(vals) != 1:
            self.refuse(f"{w}: {af.operator} takes exactly one value")
            return None
        return f"({var} {'>' if af.operator == 'GT' else '<'} {_c(vals[0])})"

    def _sock_cond(self, af: ArgFilter, op: Operand, w: str, cgroup_sites: tuple[str, ...] | None) -> str | None:
        v = f"s{op.slot}"
        o = af.operator
        allowed = (_SOCKADDR_OPS if op.type_name == "sockaddr" else _STRUCT_SOCK_OPS if op.kind == "sock" else
                   _SKB_OPS if op.kind == "skb" else _SOCK_OPS)
        if o not in allowed:
            self.refuse(f"{w}: operator {o!r} on a {op.type_name or 'socket'} argument (Tetragon's loader takes "
                        f"{', '.join(allowed)} there)")
            return None
        neg = o.startswith("Not")
        name = o[3:] if neg else o
        # a struct sock has both ends: its source operators read the local address and port (`s<slot>_sip4`,
        # `_sport`); a sockaddr has one address, which both spellings read
        pre = f"{v}_s" if op.kind in ("sock", "skb") and name in ("SAddr", "SPort") else f"{v}_"
        if name == "State" and op.kind == "sock":
            try:
                states = [f"{v}_state == {_TCP_STATE.get(val) or int(val, 0)}" for val in af.values]
            except ValueError as e:
                self.refuse(f"{w}: {e}")
                return None
            c = "(" + " || ".join(states) + ")"
            return f"!{c}" if neg else c
        base = {"SAddr": "DAddr", "SPort": "DPort"}.get(name, name)
        parts: list[str] = []
        try:
            if base == "DAddr":
                for val in af.values:
                    net = ipaddress.ip_network(val, strict=False)
                    if net.version == 4:
                        mask = (0xFFFFFFFF << (32 - net.prefixlen)) & 0xFFFFFFFF
                        parts.append(f"({v}_fam == 2 && ({pre}ip4 & {mask}U) == {int(net.network_address)}U)")
                        # the same IPv4 peer reached from an IPv6 socket, as ::ffff:a.b.c.d
                        parts.append(f"({v}_fam == 10 && {pre}ip6_0 == 0 && {pre}ip6_1 == 0 && {pre}ip6_2 == 0xffffU "
                                     f"&& ({pre}ip6_3 & {mask}U) == {int(net.network_address)}U)")
                    else:
                        words = int(net.network_address).to_bytes(16, "big")
                        conds = [f"{v}_fam == 10"]
                        bits = net.prefixlen
                        for k in range(4):
                            m = (0xFFFFFFFF << (32 - min(32, max(0, bits - 32 * k)))) & 0xFFFFFFFF \
                                if bits > 32 * k else 0
                            if m:
                                wv = int.from_bytes(words[4 * k:4 * k + 4], "big") & m
                                conds.append(f"({pre}ip6_{k} & {m}U) == {wv}U")
                        parts.append("(" + " && ".join(conds) + ")")
            elif base == "DPort":
                for val in af.values:
                    lo, hi = _range(val) if ":" in val else (int(val, 0), int(val, 0))
                    parts.append(f"({pre}port >= {lo} && {pre}port <= {hi})")
            elif base == "Family":
                for val in af.values:
                    parts.append(f"{v}_fam == {_FAMILIES.get(val) or int(val, 0)}")
            else:  # Protocol
                if cgroup_sites is None and op.kind not in ("sock", "skb"):
                    self.refuse(f"{w}: Protocol is only known on the cgroup connect hooks")
                    return None
                for val in af.values:
                    parts.append(f"{v}_proto == {_PROTOCOLS.get(val) or int(val, 0)}")
        except ValueError as e:
            self.refuse(f"{w}: {e}")
            return None
        c = "(" + " || ".join(parts) + ")"
        return f"!{c}" if neg else c

    def _sock_actions(self, h: Hook, s: Selector, operands: list[Operand]) -> list[tuple[bool, int]]:
        """A selector's TrackSock/UntrackSock actions: (track, position of the sock operand `argSock` names, by its
        `index` as matchArgs does, else by position; Tetragon's default is 0)."""
        out = []
        for a in s.match_actions:
            if a.action not in ("TrackSock", "UntrackSock"):
                continue
            idx = a.arg_sock or 0
            by_index = next((k for k, x in enumerate(h.args) if x.index == idx), -1)
            pos = by_index if by_index >= 0 else (idx if 0 <= idx < len(h.args) else -1)
            op = next((o for o in operands if o.position == pos), None)
            if op is None or op.kind != "sock":
                self.refuse(f"{format_path(a.path)}: {a.action} argSock {idx} names no sock argument of {h.target}")
                continue
            out.append((a.action == "TrackSock", pos))
        return out

    def _actions(self, h: Hook, s: Selector, cgroup_sites: tuple[str, ...] | None, *, denies: str = ""
                 ) -> tuple[int, int, bool, int] | None:
        """(action code, signal, post, errno to deny with or 0) of a selector. `denies`: the kind of site whose
        program's return denies the call ("lsm", "fmod_ret"), as the cgroup hooks do. An fmod_ret program
        returns what it is given (argError 1 makes security_inode_copy_up_xattr skip the attribute): its
        `deny` is then negative."""
        act, sig, post, deny = _ACT_POST, 0, True, 0
        ok = True
        for a in s.match_actions:
            w = format_path(a.path)
            name = a.action
            if (a.kernel_stack or a.user_stack) and (name != "Post" or cgroup_sites is not None):
                self.refuse(f"{w}: kernelStackTrace/userStackTrace " + (
                    "go with a Post action (Tetragon takes them there only)" if name != "Post" else
                    f"on {h.target}: its cgroup socket hooks cannot read stacks"))
                ok = False
            if "imaHash" in a.extra and h.section == "lsmhooks":
                # an enrichment of the event only: the hook acts (and reports) without it
                self.notes.append(f"{w}: imaHash: events carry no ima_hash (IMA hashes need sleepable LSM programs)")
            if a.extra and any(k != CALLOUT_ARGS.get(name)
                               and not (k == "argSock" and name in ("TrackSock", "UntrackSock"))
                               and not (k == "imaHash" and h.section == "lsmhooks") for k in a.extra):
                self.refuse(f"{w}: action fields {', '.join(a.extra)} are outside the engine's subset")
                ok = False
            if name in ("Post", "TrackSock", "UntrackSock"):  # socket tracking: `_sock_actions`
                continue
            if name == "NoPost":
                post = False
            elif name in ("Sigkill", "Signal"):
                if not self.f.send_signal:
                    self.refuse(f"{w}: {name} needs bpf_send_signal, which this kernel lacks")
                    ok = False
                    continue
                if name == "Signal":
                    if not a.arg_sig or not 0 < a.arg_sig < 65:
                        self.refuse(f"{w}: Signal needs argSig (1-64)")
                        ok = False
                        continue
                    act, sig = (_ACT_SIGKILL if a.arg_sig == 9 else _ACT_SIGNAL), a.arg_sig
                else:
                    act, sig = _ACT_SIGKILL, 9
                if cgroup_sites is not None and sig == 9:
                    # the kill lands when the call returns: deny the call as well, so nothing leaves first
                    deny = deny or 1
            elif name == "Override":
                if cgroup_sites is None and not denies:
                    where_ = (h.target if h.section == "tracepoints" or (not h.syscall and h.section == "kprobes")
                              else f"{h.target} (syscall tracepoint)")
                    self.refuse(f"{w}: Override on {where_} needs bpf_override_return on a kprobe or a BPF LSM "
                                "hook, which this kernel lacks; use Sigkill")
                    ok = False
                    continue
                if a.arg_error is not None and (a.arg_error == 0 or (a.arg_error > 0 and denies != "fmod_ret")):
                    self.refuse(f"{w}: Override argError must be a negative errno"
                                + (" or, on a kernel function, a value it returns" if denies == "fmod_ret" else ""))
                    ok = False
                    continue
                act, deny = _ACT_OVERRIDE, (-a.arg_error if a.arg_error is not None else 1)
            elif name in CALLOUT_ARGS:
                ok = self._callout_ok(h, a, w) and ok
            elif name == "Set" and h.section == "usdts":  # checked and placed by `_usdt`
                act = _ACT_SET
            else:
                self.refuse(f"{w}: action {name} is outside the engine's subset "
                            "(Post, NoPost, Sigkill, Signal, Override, GetUrl, DnsLookup)")
                ok = False
        if not post and act == _ACT_POST:
            act = _ACT_NOPOST
        return (act, sig, post, deny) if ok else None

    def _callout_ok(self, h: Hook, a: Action, w: str) -> bool:
        """A GetUrl needs an http(s) URL, a DnsLookup a DNS name; neither runs on uprobes (as in Tetragon)."""
        if h.section in ("uprobes", "usdts"):
            self.refuse(f"{w}: {a.action} on a {h.section[:-1]}: Tetragon takes GetUrl and DnsLookup on kprobes, "
                        "tracepoints and LSM hooks only")
            return False
        if a.action == "GetUrl":
            url = urllib.parse.urlsplit(a.arg_url or "")
            if url.scheme not in ("http", "https") or not url.hostname:
                self.refuse(f"{w}: GetUrl needs argUrl, an http:// or https:// URL with a host")
                return False
            return True
        name = (a.arg_fqdn or "").removesuffix(".")
        if not name or len(name) > 253 or not all(_FQDN_LABEL.fullmatch(lb) for lb in name.split(".")):
            self.refuse(f"{w}: DnsLookup needs argFqdn, a DNS name (labels of 1-63 letters, digits, - or _)")
            return False
        return True

    # ------------------------------------------------------------------ C generation

    def _program(self, i: int, h: Hook, site: Site, operands: list[Operand],
                 sels: list[tuple[list[str], int, int, bool, int]], index_map: dict[int, int],
                 fields: tuple[Field, ...], exec_hook: bool, uses_bin: bool, uses_parent: bool,
                 mask_type: bool, guards: tuple[str, ...], *, mark_loader: bool = False, ldso: bool = False,
                 stash: bool = False) -> str:
        """One program of a hook. `mark_loader`: an exec hook that notes processes started without an ELF
        interpreter (a loader run as a program, or a static binary) in `pl_ldso`. `ldso`: the program on
        sys_enter_mmap that judges the first executable file such a process maps as its binary."""
        cg = site.kind == "cgroup"
        #: an LSM or fmod_ret program denies by returning the errno, negated (see _TRAMPOLINE_SITES)
        traced = site.kind in _TRAMPOLINE_SITES
        allow, deny_rv = ("1", "0") if cg else ("0", "0")
        if site.attach == "sock_create":
            ctx_t = "struct bpf_sock"
        elif cg:
            ctx_t = "struct bpf_sock_addr"
        else:
            ctx_t = "void"
        need_strings = bool(self.str_filters)
        L: list[str] = [f"int {site.function}({ctx_t} *ctx) {{"]
        # Each helper call costs tens of ns here (an exec check is about fifteen of them), so the prologue
        # makes as few as it can: one pid, and the engine's own exemption only once something matched.
        L += ["    u64 pid_tgid = bpf_get_current_pid_tgid();", "    u32 tgid = pid_tgid >> 32;"]
        if ldso:  # runs on every mmap of the node: out at once unless a loader-run process awaits its program
            L += ["    struct pl_ld *ld = bpf_map_lookup_elem(&pl_ldso, &tgid);",
                  "    if (!ld || !pl_ld_current(ld)) return 0;"]
        L += ["    int z = 0;",
                        "    struct pl_cfg *cfg = bpf_map_lookup_elem(&pl_cfg, &z);",
                        f"    if (!cfg || cfg->mode >= {MODE_OFF}) return {allow};"]
        if not cg:
            if self.socktrack and any(o.kind == "sock" for o in operands):
                # a tracked socket is in scope wherever it is used (softirq too): it was tracked in scope
                L.append("    u32 pl_out = cfg->scoped && !pl_in_scope_of(tgid);")
            else:
                L.append(f"    if (cfg->scoped && !pl_in_scope_of(tgid)) return {allow};")
        L += ["    struct pl_scratch *sc = bpf_map_lookup_elem(&pl_scratch, &z);",
              f"    if (!sc) return {allow};",
              "    u32 act = 0, sig = 0, sel = 0, acted = 0; int post = 1, deny = 0;",
              "    u64 fbits = 0;",
              "    struct pl_proc *proc = 0;"]
        tracked = self.socktrack and not cg and any(o.kind == "sock" for o in operands)
        if tracked:
            L.append("    struct pl_owner *own = 0;  /* the process that tracked a sock argument (TrackSock) */")
        if self.tracking:
            L += ["    proc = bpf_map_lookup_elem(&pl_procs, &tgid);", "    if (proc) fbits = proc->bits;"]
        L += [f"    {g}" for g in guards]
        L += _task_reads(self.hook_needs.get(i, set()))
        # the process binary
        bin_slot = sum(1 for o in operands if o.slot >= 0)
        if ldso:
            prot, fd = fields[5 + 2], fields[5 + 4]  # mmap(addr, len, prot, flags, fd, off)
            L += [f"    if (!(*(u64 *)((char *)ctx + {prot.offset}) & 4)) return 0;  /* PROT_EXEC */",
                  f"    s64 mfd = *(s64 *)((char *)ctx + {fd.offset});",
                  "    if (mfd < 0) return 0;",
                  "    ld->exec = 0;  /* the first executable file mapping is the program; later ones are libraries */",
                  f"    char *bin = sc->str[{bin_slot}].s;",
                  "    int blen = pl_file_path(pl_fd_file(mfd), bin);"]
        elif exec_hook:
            # the file the new image was loaded from (mm->exe_file is already it here), not `filename`
            L += [f"    char *bin = sc->str[{bin_slot}].s;",
                  "    int blen = pl_exe_path(bin);"]
            if mark_loader:
                L += ["    if (pl_no_interp()) pl_ld_mark(tgid);"]
        else:
            L += ["    char *bin = proc ? proc->bin : 0;", "    int blen = proc ? proc->blen : 0;"]
        if uses_bin and need_strings:
            L += ["    u64 b_eq = 0, b_pre = 0, b_post = 0;",
                  "    if (bin) pl_str_bits(sc, bin, blen, &b_eq, &b_pre, &b_post);"]
        if uses_parent and need_strings:
            L += ["    u64 pb_eq = 0, pb_pre = 0, pb_post = 0;",
                  "    if (proc) pl_str_bits(sc, proc->parent, proc->plen, &pb_eq, &pb_pre, &pb_post);"]
        # operands
        for o in operands:
            L += self._read_operand(h, site, o, index_map, fields, mask_type, need_strings)
        if tracked:
            L.append(f"    if (pl_out && !own) return {allow};")
        # selectors, first match wins
        for k, (conds, act, sig, post, deny) in enumerate(sels):
            cond = " && ".join(conds) if conds else "1"
            L.append(f"    if ({cond}) {{ sel = {k}; act = {act}; sig = {sig}; post = {int(post)}; "
                     f"deny = {int(deny)}; goto matched; }}")
        L += [f"    return {allow};", "matched:",
              f"    if (bpf_map_lookup_elem(&pl_self, &tgid)) return {allow};  /* the engine itself */"]
        for k, acts in enumerate(self.sock_acts.get(i, [])):
            for track, pos in acts:  # TrackSock names the process that runs, as Tetragon's does
                L.append(f"    if (sel == {k}) " + (f"pl_track((u64)sk{pos}, tgid, (u32)pid_tgid, bin);" if track
                                                    else f"pl_untrack((u64)sk{pos});"))
        # a selector that matched a change since exec takes the task's present state as the new one, once the
        # event goes out (Tetragon's generic_output): the next call reports only a further change
        changes = [k for k, (conds, *_) in enumerate(sels) if any("pl_changed_" in c for c in conds)]
        if changes:
            which = " || ".join(f"sel == {k}" for k in changes)
            L.append(f"    if (pl_b && post && ({which})) pl_base_of(bpf_get_current_task_btf(), pl_b);")
        if stash:
            # a kretprobe's entry: the event waits for the return (pl_ret<i>, by thread), which acts and posts
            rv = "(deny && acted) ? -deny : 0" if traced else "0"
            if traced:  # an fmod_ret entry denies (the function does not run); its fexit signals and posts
                L += ["    if (deny) {",
                      "        if (cfg->mode == 2) { acted = 1; pl_count(1); } else { pl_count(2); }",
                      "    }"]
            L += ["    struct pl_event *e = bpf_map_lookup_elem(&pl_evbuf, &z);",
                  f"    if (!e) return {rv};",
                  *self._event_fields(i, site, operands, "    "),
                  "    e->pad |= post | (deny ? 2 : 0);  /* 2: the entry counted the enforcement */",
                  "    u64 rk = pl_ret_key(pid_tgid);",
                  f"    if (bpf_map_update_elem(&pl_ret{i}, &rk, e, BPF_ANY)) pl_count(3);",
                  f"    return {rv};", "}\n"]
            return "\n".join(L)
        for k, note_arg, value in self.usdt_sets.get(i, ()):
            # Set: the int the probe's argument is in memory becomes `value`, in enforced mode only
            L += [f"    if (sel == {k}) {{",
                  "        if (cfg->mode == 2) {",
                  f"            if (!pl_usdt_set(ctx, {note_arg}, {value})) acted = 1;",
                  "            pl_count(1);",
                  "        } else pl_count(2);",
                  "    }"]
        # a denial acts only where the hook can deny (a tracepoint next to a cgroup hook cannot)
        L += ["    if (sig || deny) {" if cg or traced else "    if (sig) {",
              "        if (cfg->mode == 2) {"]
        L.append("            if (sig) bpf_send_signal(sig);")
        L += ["            acted = 1; pl_count(1);",
              "        } else {",
              "            pl_count(2);",
              "        }",
              "    }",
              *_post_open(),
              *self._event_fields(i, site, operands, "            "),
              *self._submit(i, "            "),
              "        }",
              "    }"]
        if cg and any(d > 1 for *_, d in sels):
            # an errno other than EPERM (argError), where the hook lets the program choose it
            L.append("    if (deny > 1 && acted) bpf_set_retval(-deny);")
        if traced:
            L.append("    return (deny && acted) ? -deny : 0;")
        else:
            L.append(f"    return (deny && acted) ? {deny_rv} : {allow};" if cg else f"    return {allow};")
        L.append("}\n")
        return "\n".join(L)

    def _rate_limit(self, h: Hook, sel: Selector) -> tuple[int, int] | None:
        """Post's `rateLimit` in ns and its scope (0 thread, 1 process, 2 global), or None; refused if malformed."""
        for a in sel.match_actions:
            if a.rate_limit is None and a.rate_limit_scope is None:
                continue
            w = format_path(a.path)
            if a.action != "Post":
                self.refuse(f"{w}: rateLimit goes with a Post action (Tetragon takes it there only)")
                return None
            m = re.fullmatch(r"(\d+)\s*([smh]?)", a.rate_limit or "")
            if m is None or int(m.group(1)) == 0:
                self.refuse(f"{w}: rateLimit {a.rate_limit!r}: expected a time, in seconds or with s, m or h "
                            "(30, 30s, 5m, 1h)")
                return None
            scope = _RATE_LIMIT_SCOPES.get(a.rate_limit_scope or "thread")
            if scope is None:
                self.refuse(f"{w}: rateLimitScope {a.rate_limit_scope!r}: expected thread, process or global")
                return None
            return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)] * 10**9, scope
        return None

    def _submit(self, i: int, ind: str) -> list[str]:
        """C posting the event `e` of hook `i`, unless its selector's rateLimit saw the same within its window."""
        if i not in self.rate_limits:
            return [f"{ind}bpf_ringbuf_submit(e, 0);", f"{ind}pl_count(0);"]
        limits, strs = self.rate_limits[i]
        L = [f"{ind}u64 rl_ns = 0; u32 rl_scope = 0;"]
        L += [f"{ind}if (e->sel == {k}) {{ rl_ns = {ns}ULL; rl_scope = {scope}; }}"
              for k, lim in enumerate(limits) if lim is not None for ns, scope in (lim,)]
        L += [f"{ind}if (rl_ns && pl_rl_skip(e, rl_ns, rl_scope, {strs})) {{",
              f"{ind}    bpf_ringbuf_discard(e, 0);",
              f"{ind}}} else {{",
              f"{ind}    bpf_ringbuf_submit(e, 0);",
              f"{ind}    pl_count(0);",
              f"{ind}}}"]
        return L

    def _event_fields(self, i: int, site: Site, operands: list[Operand], ind: str) -> list[str]:
        """C filling the event record `e` of hook `i` from what the program read."""
        # a rate-limited hook's events are compared by their arguments: no stale bytes in the unused ones
        L = [f"{ind}__builtin_memset(e->ints, 0, sizeof(e->ints));"] if i in self.rate_limits else []
        L += [f"{ind}e->ktime = bpf_ktime_get_ns();",
             f"{ind}e->cgroup = bpf_get_current_cgroup_id();",
             f"{ind}e->pid = tgid; e->tid = (u32)pid_tgid;",
             f"{ind}e->uid = (u32)bpf_get_current_uid_gid();",
             f"{ind}e->hook = {i}; e->sel = sel; e->action = act; e->mode = cfg->mode; e->acted = acted;",
             f"{ind}e->sig = sig;",
             # flags: 4 = a 32-bit call (the ia32 copy of a syscall tracepoint's program runs this same code)
             f"{ind}e->pad = pl_compat() ? 4 : 0;" if site.kind == "tracepoint" and site.subsystem == "syscalls"
             else f"{ind}e->pad = 0;"]
        for o in operands:
            if o.kind == "int":
                L.append(f"{ind}e->ints[{o.position % 8}] = (s64)a{o.position};")
            elif o.kind == "sockaddr":
                L.append(f"{ind}e->ints[{o.position % 8}] = ((s64)s{o.slot}_fam << 16) | s{o.slot}_port;")
                if o.slot < 2:
                    L.append(f"{ind}__builtin_memcpy(e->strs[{o.slot}], s{o.slot}_raw, 16);")
            elif o.slot < 2:
                L.append(f"{ind}PL_COPY(e->strs[{o.slot}], sc->str[{o.slot}].s, {STRLEN});")
                if site.kind in _OBJECT_SITES and o.type_name in _PATH_TYPES:
                    L.append(f"{ind}e->ints[{o.position % 8}] = a{o.position};  /* i_mode */")
            if o.kind == "buf":  # bytes read << 48 | the buffer's size (a returnCopy's address, until it returns)
                L.append(f"{ind}e->ints[{o.position % 8}] = a{o.position};")
        if i in self.sysid_hooks:
            L.append(f"{ind}e->ints[{RET_SLOT}] = pl_sysid;")
        if i in self.func_ip_hooks:  # the function this kprobe of a generated_ftrace list is on
            L.append(f"{ind}e->ints[{RET_SLOT}] = (s64)bpf_get_func_ip(ctx);")
        L += self._stack_fields(i, site, ind)
        if site.kind == "cgroup":  # no task BTF there: the process map's binary or none
            L.append(f"{ind}if (bin) PL_COPY(e->bin, bin, {STRLEN}); else e->bin[0] = 0;")
        else:  # the file that runs, also when nothing asked for it (a short-lived process is gone from /proc)
            L.append(f"{ind}if (bin) PL_COPY(e->bin, bin, {STRLEN}); else pl_exe_path(e->bin);")
        if self.socktrack and site.kind != "cgroup" and any(o.kind == "sock" for o in operands):
            # Tetragon: the event of a tracked socket names the process that tracked it, not the one that runs
            # (softirq runs whichever task it interrupted)
            L.append(f"{ind}if (own) pl_owned(e, own);")
        return L

    def _stack_fields(self, i: int, site: Site, ind: str) -> list[str]:
        """C setting the event's stack ids: for the selectors whose Post asks for them, the kernel and user
        stacks of the call in `pl_stacks`, as id + 1 (bpf_get_stackid's ids count from 0; a failure is
        negative), 0 otherwise: a zeroed record (bpf/scope.py's) carries no stack."""
        flags = self.stacks.get(i, ())
        kernel = [k for k, (kf, _) in enumerate(flags) if kf]
        user = [k for k, (_, uf) in enumerate(flags) if uf]
        none = [f"{ind}e->kstack = 0; e->ustack = 0;"]
        if not (kernel or user) or site.kind == "cgroup":
            return none

        def pick(sels: list[int], flag: str) -> str:
            cond = " || ".join(f"sel == {k}" for k in sels) or "0"
            return f"({cond}) ? (s32)bpf_get_stackid(ctx, &pl_stacks, {flag}) + 1 : 0"
        return ["#ifdef PL_NO_STACKS", *none, "#else",
                f"{ind}e->kstack = {pick(kernel, '0')};",
                f"{ind}e->ustack = {pick(user, 'BPF_F_USER_STACK')};",
                "#endif"]

    def _return_program(self, i: int, site: Site, ret_type: str, ret_conds: list[list[str]],
                        ret_offset: int | None = None) -> str:
        """A kretprobe's return: the entry's event (if its selectors matched), the return value read and
        filtered by matchReturnArgs, then the selector's action and the event. `ret_offset`: the return is
        a field of a tracepoint record (a syscall's sys_exit), not the return register."""
        ctype = _INT_TYPES.get(ret_type, "s64")
        if ret_offset is not None:
            read_ret = [f"    {ctype} r = ({ctype})*(s64 *)((char *)ctx + {ret_offset});"]
        elif site.kind == "fexit":
            read_ret = [f"    u64 rv = 0; bpf_get_func_ret(ctx, &rv); {ctype} r = ({ctype})rv;"]
        else:
            read_ret = [f"    {ctype} r = ({ctype})*(u64 *)((char *)ctx + {_PT_REGS_RC});"]
        L = [f"int {site.function}(void *ctx) {{",
             "    u64 pid_tgid = bpf_get_current_pid_tgid();",
             "    u64 rk = pl_ret_key(pid_tgid);",
             f"    struct pl_event *st = bpf_map_lookup_elem(&pl_ret{i}, &rk);",
             "    if (!st) return 0;",
             "    int z = 0;",
             "    struct pl_cfg *cfg = bpf_map_lookup_elem(&pl_cfg, &z);",
             *read_ret,
             "    u32 sig = st->sig, post = st->pad & 1, acted = st->acted;"]
        for k, conds in enumerate(ret_conds):
            if conds:
                L.append(f"    if (st->sel == {k} && !({' && '.join(conds)})) goto done;")
        ret_slot, ret_action = self.ret_socks.get(i, (-1, None))
        L += [f"    if (!cfg || cfg->mode >= {MODE_OFF}) goto done;",
              # returnArgAction: the returned socket belongs to the process the event names (the owner of a
              # tracked sock argument: an accepted connection is its listener's)
              *(["    if (r) pl_track_as((u64)r, st);"] if ret_action == "TrackSock" else
                ["    if (r) pl_untrack((u64)r);"] if ret_action == "UntrackSock" else []),
              "    if (sig) {",
              "        if (cfg->mode == 2) { bpf_send_signal(sig); acted = 1; }",
              "        if (!(st->pad & 2)) pl_count(cfg->mode == 2 ? 1 : 2);  /* unless the entry counted it */",
              "    }",
              *_post_open(),
              "            bpf_probe_read_kernel(e, sizeof(*e), st);",
              *([f"            pl_sock((struct sock *)r, (struct pl_sk *)__builtin_assume_aligned(e->strs[{ret_slot}], "
                 "8));"] if ret_slot >= 0 else []),
              *(f"            e->ints[{pos % 8}] = pl_ret_copy(e->strs[{slot}], st->ints[{pos % 8}], (s64)r);"
                for pos, slot in self.ret_copies.get(i, ())),
              f"            e->ints[{RET_SLOT}] = (s64)r; e->acted = acted; e->mode = cfg->mode;",
              *self._submit(i, "            "),
              "        }",
              "    }",
              "done:",
              f"    bpf_map_delete_elem(&pl_ret{i}, &rk);",
              "    return 0;", "}\n"]
        return "\n".join(L)

    def _read_operand(self, h: Hook, site: Site, o: Operand, index_map: dict[int, int],
                      fields: tuple[Field, ...], mask_type: bool, need_strings: bool) -> list[str]:
        p = o.position
        if site.attach == "sock_create":
            name = ("family", "type", "protocol")[o.index]
            return [f"    s64 a{p} = ctx->{name};"]
        if o.kind == "sockaddr" and site.kind == "cgroup":
            v = f"s{o.slot}"
            L = [f"    u32 {v}_fam = ctx->user_family;",
                 f"    u32 {v}_port = __builtin_bswap16((u16)ctx->user_port);",
                 f"    u32 {v}_proto = ctx->protocol;",
                 f"    u32 {v}_ip4 = 0, {v}_ip6_0 = 0, {v}_ip6_1 = 0, {v}_ip6_2 = 0, {v}_ip6_3 = 0;",
                 f"    u32 {v}_raw[4] = {{}};"]
            if site.attach in ("connect4", "sendmsg4"):
                L += [f"    {v}_raw[0] = ctx->user_ip4;", f"    {v}_ip4 = __builtin_bswap32({v}_raw[0]);"]
            else:
                for k in range(4):
                    L += [f"    {v}_raw[{k}] = ctx->user_ip6[{k}];",
                          f"    {v}_ip6_{k} = __builtin_bswap32({v}_raw[{k}]);"]
            return L
        if site.kind == "cgroup":
            return [f"    s64 a{p} = 0;  /* not available on this hook */"]
        if o.member >= 0:
            f = self._field(index_map, o.index, fields)
            assert f is not None
            return [f"    u64 a{p} = 0;",
                    f"    bpf_probe_read_user(&a{p}, sizeof(a{p}), *(char **)((char *)ctx + {f.offset}) + {o.member});"]
        f = self._field(index_map, o.index, fields)
        assert f is not None
        if site.kind in (*_TRAMPOLINE_SITES, "fentry"):
            return self._read_traced(h, site, o, f, need_strings)
        if site.kind == "kprobe" and o.type_name in _KERNEL_TYPES:
            return self._read_kernel_object(o, f"*(u64 *)((char *)ctx + {f.offset})", need_strings,
                                            arg=lambda k: f"*(u64 *)((char *)ctx + {_PT_REGS_ARGS[k]})")
        if site.kind == "raw_tracepoint" and o.type_name in _KERNEL_TYPES:  # args[k] of the TP_PROTO
            return self._read_kernel_object(o, f"*(u64 *)((char *)ctx + {f.offset})", need_strings,
                                            arg=lambda k: f"*(u64 *)((char *)ctx + {8 * k})")
        if o.kind == "buf":  # a syscall's buffer in user memory, its size another of the call's arguments
            def field_of(k: int) -> str:
                sized = self._field(index_map, k, fields)
                assert sized is not None
                return f"*(u64 *)((char *)ctx + {sized.offset})"

            return self._read_object(o, f"*(u64 *)((char *)ctx + {f.offset})", need_strings, field_of)
        if o.kind == "sockaddr":
            return _sockaddr_lines(f"s{o.slot}", f"*(void **)((char *)ctx + {f.offset})", "bpf_probe_read_user")
        if o.kind == "str":
            buf = f"sc->str[{o.slot}].s"
            if f.data_loc:
                L = [f"    u32 loc{p} = *(u32 *)((char *)ctx + {f.offset});"]
                read = f"bpf_probe_read_kernel_str({buf}, {STRLEN}, (char *)ctx + (loc{p} & 0xffff))"
                size = STRLEN
            elif f.ctype.startswith("char["):
                L = []
                size = min(STRLEN, f.size + 1)
                read = f"bpf_probe_read_kernel_str({buf}, {size}, (char *)ctx + {f.offset})"
            else:
                L = []
                user = site.kind not in ("kprobe", "raw_tracepoint") and (h.subsystem in (None, "syscalls")
                                                                          or h.section == "kprobes")
                fn = "bpf_probe_read_user_str" if user else "bpf_probe_read_kernel_str"
                ptr = (f"(const char *)pl_usdt_arg(ctx, {o.index})" if h.usdt is not None
                       else f"*(const char **)((char *)ctx + {f.offset})")
                read = f"{fn}({buf}, {STRLEN}, {ptr})"
                size = STRLEN
            # a key is the string zero-padded to its table's key size (pl_str_bits): pad the short key
            # first, and only for a long string the whole buffer, reading it again into the clean buffer
            L += [f"    PL_ZERO({buf}, {SHORT_STRLEN});", f"    int n{p} = {read};"]
            if size > SHORT_STRLEN:
                L.append(f"    if (n{p} > {SHORT_STRLEN}) {{ PL_ZERO({buf}, {STRLEN}); n{p} = {read}; }}")
            L.append(f"    int l{p} = n{p} > 0 ? n{p} - 1 : 0;")
            if need_strings:
                s = f"s{o.slot}"
                L += [f"    u64 {s}_eq = 0, {s}_pre = 0, {s}_post = 0;",
                      f"    pl_str_bits(sc, {buf}, l{p}, &{s}_eq, &{s}_pre, &{s}_post);"]
            return L
        t = _INT_TYPES.get(o.type_name) if o.type_name in _INT_TYPES else None
        raw = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}[f.size]
        if f.signed:
            raw = "s" + raw[1:]
        ctype = t or raw
        # a USDT argument as its site's note says (sized and signed there), then as the policy types it
        read = f"pl_usdt_arg(ctx, {o.index})" if h.usdt is not None else f"*({raw} *)((char *)ctx + {f.offset})"
        L = [f"    {ctype} a{p} = ({ctype}){read};"]
        if mask_type and o.index == 1:
            L.append(f"    a{p} &= 0xf;  /* SOCK_TYPE_MASK: the security hook sees the type without flags */")
        return L

    def _read_kernel_object(self, o: Operand, ptr: str, need_strings: bool,
                            arg: Callable[[int], str] | None = None) -> list[str]:
        """C reading an argument that points to a kernel object, through BTF (CO-RE). `ptr` is the C expression
        of the raw argument, a u64: a kprobe's register in its pt_regs, a trampoline program's context slot;
        `arg(k)` is that of the function's argument k (a buffer's size)."""
        p, buf = o.position, f"sc->str[{o.slot}].s"
        if o.type_name in _OBJECT_KINDS and o.type_name != "socket":
            return self._read_object(o, ptr, need_strings, arg)
        if o.kind == "sock":
            v = f"s{o.slot}"
            sk = f"BPF_CORE_READ((struct socket *){ptr}, sk)" if o.type_name == "socket" else f"(struct sock *){ptr}"
            L = [f"    struct sock *sk{p} = {sk};",
                 f"    struct pl_sk *{v}_sk = (struct pl_sk *)__builtin_assume_aligned({buf}, 8);",
                 f"    pl_sock(sk{p}, {v}_sk);",
                 *([f"    {{ struct pl_owner *ow = bpf_map_lookup_elem(&pl_socks, &sk{p}); if (ow) own = ow; }}"]
                   if self.socktrack else []),
                 f"    u32 {v}_fam = {v}_sk->family, {v}_proto = {v}_sk->protocol, {v}_state = {v}_sk->state;",
                 f"    u32 {v}_port = {v}_sk->dport, {v}_sport = {v}_sk->sport;",
                 f"    u32 {v}_ip4 = __builtin_bswap32({v}_sk->daddr[0]), "
                 f"{v}_sip4 = __builtin_bswap32({v}_sk->saddr[0]);"]
            L += [f"    u32 {v}_ip6_{k} = __builtin_bswap32({v}_sk->daddr[{k}]), "
                  f"{v}_sip6_{k} = __builtin_bswap32({v}_sk->saddr[{k}]);" for k in range(4)]
            return L
        if o.kind == "cred":
            return [f"    pl_cred((struct cred *){ptr}, (struct pl_cr *)__builtin_assume_aligned({buf}, 8));"]
        t = o.type_name
        if t == "file":
            L = [f"    struct file *fl{p} = (struct file *){ptr};"]
        elif t == "linux_binprm":
            L = [f"    struct file *fl{p} = BPF_CORE_READ((struct linux_binprm *){ptr}, file);"]
        elif t == "kiocb":
            L = [f"    struct file *fl{p} = BPF_CORE_READ((struct kiocb *){ptr}, ki_filp);"]
        elif t == "dentry":  # its path within its file system, as Tetragon's: no mount is known
            L = [f"    struct dentry *de{p} = (struct dentry *){ptr};",
                 f"    int l{p} = pl_dentry_path(de{p}, {buf});",
                 f"    s64 a{p} = de{p} ? BPF_CORE_READ(de{p}, d_inode, i_mode) : 0;"]
        else:  # path
            L = [f"    struct path *pa{p} = (struct path *){ptr};",
                 f"    struct pl_at at{p} = {{ BPF_CORE_READ(pa{p}, mnt), BPF_CORE_READ(pa{p}, dentry), "
                 f"BPF_CORE_READ(pa{p}, mnt, mnt_root) }};",
                 f"    int l{p} = pl_path(&at{p}, {buf});",
                 f"    s64 a{p} = BPF_CORE_READ(pa{p}, dentry, d_inode, i_mode);"]
        if t not in ("path", "dentry"):
            L += [f"    int l{p} = pl_file_path(fl{p}, {buf});",
                  f"    s64 a{p} = fl{p} ? BPF_CORE_READ(fl{p}, f_inode, i_mode) : 0;"]
        if need_strings:
            s_ = f"s{o.slot}"
            L += [f"    u64 {s_}_eq = 0, {s_}_pre = 0, {s_}_post = 0;",
                  f"    pl_str_bits(sc, {buf}, l{p}, &{s_}_eq, &{s_}_pre, &{s_}_post);"]
        return L

    def _read_object(self, o: Operand, ptr: str, need_strings: bool, arg: Callable[[int], str] | None) -> list[str]:
        """C reading the kernel objects of `_OBJECT_KINDS` (other than socket, a sock's), each into the
        variables its kind's filters and `_event_fields` use: `a<pos>` for ints and buffers, the slot's
        struct (zero-initialised) for the others."""
        p, t, v = o.position, o.type_name, f"s{o.slot}"
        buf = f"sc->str[{o.slot}].s"
        aligned = f"__builtin_assume_aligned({buf}, 8)"
        if t == "capability":  # an int in a 64-bit register: its upper half is not the caller's
            return [f"    s64 a{p} = (s32){ptr};"]
        if t == "sockaddr":  # a kernel function's sockaddr is the kernel's copy of the caller's
            return _sockaddr_lines(v, f"(void *){ptr}", "bpf_probe_read_kernel")
        if t == "skb":
            L = [f"    struct pl_sb *{v}_sb = (struct pl_sb *){aligned};",
                 f"    pl_skb((struct sk_buff *){ptr}, {v}_sb);",
                 f"    u32 {v}_fam = {v}_sb->family, {v}_proto = {v}_sb->proto;",
                 f"    u32 {v}_port = {v}_sb->dport, {v}_sport = {v}_sb->sport;",
                 f"    u32 {v}_ip4 = __builtin_bswap32({v}_sb->daddr[0]), "
                 f"{v}_sip4 = __builtin_bswap32({v}_sb->saddr[0]);"]
            return L + [f"    u32 {v}_ip6_{k} = __builtin_bswap32({v}_sb->daddr[{k}]), "
                        f"{v}_sip6_{k} = __builtin_bswap32({v}_sb->saddr[{k}]);" for k in range(4)]
        if o.kind == "obj":
            fn, struct_ = _OBJECT_READERS[t]
            return [f"    {fn}((void *){ptr}, (struct {struct_} *){aligned});"]
        if t == "net_device":
            L = [f"    PL_ZERO({buf}, {SHORT_STRLEN});",
                 f"    int n{p} = bpf_probe_read_kernel_str({buf}, 16, (char *){ptr} + "
                 "bpf_core_field_offset(struct net_device, name));",
                 f"    int l{p} = n{p} > 0 ? n{p} - 1 : 0;"]
        else:  # a buffer: its first bytes, and its size
            if o.size_arg == RETURN_COPY:  # read when the function returns; its address waits in the event
                return [f"    s64 a{p} = (s64){ptr};"]
            if t == "iov_iter":
                read = f"pl_iov_iter({buf}, (struct iov_iter *){ptr}, &z{p})"
            else:
                assert arg is not None and o.size_arg >= 0
                read = (f"pl_iovec({buf}, (void *){ptr}, z{p}, &z{p})" if t == "char_iovec" else
                        f"pl_buf({buf}, (const void *){ptr}, z{p})")
            L = [f"    u64 z{p} = {arg(o.size_arg) if arg is not None and o.size_arg >= 0 else 0};",
                 f"    u32 l{p} = {read};",
                 f"    s64 a{p} = ((s64)l{p} << 48) | (s64)(z{p} & 0xffffffffffffULL);"]
        if need_strings:
            L += [f"    u64 {v}_eq = 0, {v}_pre = 0, {v}_post = 0;",
                  f"    pl_str_bits(sc, {buf}, l{p}, &{v}_eq, &{v}_pre, &{v}_post);"]
        return L

    def _read_traced(self, h: Hook, site: Site, o: Operand, f: Field, need_strings: bool) -> list[str]:
        """C reading an argument of a trampoline program (LSM hook, fmod_ret): its context slot at `f.offset`,
        or, on a syscall's entry, the caller's register at `f.offset` in the struct pt_regs of slot 0 (strings
        in user memory there, kernel memory elsewhere)."""
        p = o.position
        syscall = h.syscall and h.section == "kprobes"
        L: list[str] = []
        raw = f"*(u64 *)((char *)ctx + {f.offset})"
        if syscall:
            L += [f"    u64 r{p} = 0;", f"    bpf_probe_read_kernel(&r{p}, 8, (char *)*(u64 *)ctx + {f.offset});"]
            if (site.attach or "").startswith("__ia32_"):
                L.append(f"    r{p} &= 0xffffffff;  /* a 32-bit call's arguments are 32 bits wide */")
            raw = f"r{p}"
        if o.kind not in ("int", "str") or o.type_name in _KERNEL_TYPES:
            return L + self._read_kernel_object(o, raw, need_strings, arg=lambda k: f"*(u64 *)((char *)ctx + {8 * k})")
        if o.kind == "int":
            ctype = _INT_TYPES.get(o.type_name, "s64")
            return [*L, f"    {ctype} a{p} = ({ctype}){raw};"]
        buf = f"sc->str[{o.slot}].s"
        read = f"bpf_probe_read_{'user' if syscall else 'kernel'}_str({buf}, {STRLEN}, (const char *){raw})"
        # zero-padded to its table's key size, as `_read_operand` does
        L += [f"    PL_ZERO({buf}, {SHORT_STRLEN});", f"    int n{p} = {read};",
              f"    if (n{p} > {SHORT_STRLEN}) {{ PL_ZERO({buf}, {STRLEN}); n{p} = {read}; }}",
              f"    int l{p} = n{p} > 0 ? n{p} - 1 : 0;"]
        if need_strings:
            s = f"s{o.slot}"
            L += [f"    u64 {s}_eq = 0, {s}_pre = 0, {s}_post = 0;",
                  f"    pl_str_bits(sc, {buf}, l{p}, &{s}_eq, &{s}_pre, &{s}_post);"]
        return L

    # ------------------------------------------------------------------ 32-bit compat syscalls

    def _ia32_variant(self, name: str, fn: str, exit_fn: str | None = None) -> None:
        """Call before appending `fn`'s body (and then `exit_fn`'s, the same hook's sys_exit program)."""
        # the 16-bit-id calls have a 32-bit-id twin on ia32 (setuid and setuid32): both are the call
        if not self.f.ia32_syscalls:
            return
        nrs = tuple(ia32.NUMBERS[n] for n in (name, f"{name}32") if n in ia32.NUMBERS)
        if nrs or name in ia32.SOCKETCALL:
            self.ia32.append((nrs, fn, len(self.functions)))
        if nrs and exit_fn is not None:
            self.ia32_exit.append((nrs, exit_fn, len(self.functions) + 1))
        if name in ia32.SOCKETCALL:
            self.socketcall.append((*ia32.SOCKETCALL[name], fn))

    def _ia32_source(self, bodies: list[str]) -> str:
        """Each syscall hook again, for its ia32 number on the raw `sys_enter` tracepoint (bpf/ia32.py).

        Syscall tracepoints never see a compat call, and the 64-bit numbers mean other calls
        there, so one program per policy takes every syscall, keeps those whose number a hook
        has in the ia32 table, and runs the hook's own code on them once the task is in a compat
        syscall (TS_COMPAT in thread_info.status, whose offset the engine reads from BTF). It is
        a raw tracepoint program, because it runs on every syscall of the node: no event record
        is built for it (a perf-event tracepoint program there costs ~30 ns a syscall, measured).
        The arguments are copied from the registers into a record laid out like a syscall
        tracepoint's (field 5 + i at offset 16 + 8i), so the hook's code reads them unchanged;
        compat arguments are 32 bits wide, zero-extended, which the int/uint casts absorb.
        """
        def inlined(fn: str, k: int) -> str:
            # the program again as a function (without the maps its text may define in front of it)
            head = f"int {fn}(void *ctx) {{"
            assert head in bodies[k], bodies[k][:80]
            return f"static __always_inline int {fn}_ia32(void *ctx) {{" + bodies[k].partition(head)[2]

        out = [inlined(fn, k) for _, fn, k in self.ia32]
        # a raw tracepoint: (struct pt_regs *regs, long id); the ia32 arguments are in bx, cx, dx, si,
        # di, bp (uapi pt_regs offsets), copied into a record laid out like a syscall tracepoint's
        out += ["int pl_ia32(struct bpf_raw_tracepoint_args *ctx) {",
                "    long id = ctx->args[1];",
                "    if (" + " && ".join(f"id != {n}" for nrs, _, _ in self.ia32 for n in nrs)
                + (f" && id != {ia32.NUMBERS['socketcall']}" if self.socketcall else "") + ") return 0;",
                "    if (!pl_compat()) return 0;",
                "    char *regs = (char *)ctx->args[0];",
                "    u64 rec[8] = {};"]
        for k, off in enumerate((40, 88, 96, 104, 112, 32)):
            out.append(f"    bpf_probe_read_kernel(&rec[{2 + k}], 8, regs + {off});")
        out.append("    for (int k = 2; k < 8; k++) rec[k] &= 0xffffffff;")
        for nrs, fn, _ in self.ia32:
            if nrs:
                cond = " || ".join(f"id == {n}" for n in nrs)
                out.append(f"    if ({cond}) return {fn}_ia32(rec);")
        if self.socketcall:
            # socketcall(call, u32 *args): the socket calls through one entry, their arguments in user memory
            out += [f"    if (id == {ia32.NUMBERS['socketcall']}) {{",
                    "        u32 call = rec[2];",
                    "        void *ua = (void *)rec[3];",
                    "        u32 a[6] = {};",
                    "        u64 sock[8] = {};"]
            for call, nargs, fn in self.socketcall:
                out += [f"        if (call == {call}) {{",
                        f"            bpf_probe_read_user(a, {4 * nargs}, ua);",
                        *[f"            sock[{2 + k}] = a[{k}];" for k in range(nargs)],
                        f"            return {fn}_ia32(sock);",
                        "        }"]
            out.append("    }")
        out += ["    return 0;", "}"]
        if self.ia32_exit:
            # raw sys_exit: (struct pt_regs *regs, long ret); the call's number is regs->orig_ax, the return
            # goes where a sys_exit record has it (offset 16)
            out += [inlined(fn, k) for _, fn, k in self.ia32_exit]
            out += ["int pl_ia32x(struct bpf_raw_tracepoint_args *ctx) {",
                    "    if (!pl_compat()) return 0;",
                    "    long id = 0;",
                    "    bpf_probe_read_kernel(&id, 8, (char *)ctx->args[0] + 120);  /* orig_ax */",
                    "    u64 rec[3] = {0, 0, ctx->args[1]};"]
            for nrs, fn, _ in self.ia32_exit:
                out.append(f"    if ({' || '.join(f'id == {n}' for n in nrs)}) return {fn}_ia32(rec);")
            out += ["    return 0;", "}"]
        return "\n" + "\n".join(out) + "\n"

    # ------------------------------------------------------------------ maps and tracking

    def _string_entries(self) -> tuple[StringEntry, ...]:
        acc: dict[tuple[str, bytes], int] = {}
        for sf in self.str_filters:
            values = list(sf.values)
            if sf.binary and sf.table != "post":
                values += [r for r in map(self.real_path, sf.values) if r not in values and len(r.encode()) < STRLEN]
            for v in values:
                b = v.encode()
                if sf.table == "post":
                    b = b[::-1]
                acc[(sf.table, b)] = acc.get((sf.table, b), 0) | (1 << sf.bit)
        # an LPM lookup returns only the longest stored prefix: fold every shorter prefix's bits into it
        for (table, b), bits in list(acc.items()):
            if table in ("pre", "post"):
                for (t2, b2), bits2 in acc.items():
                    if t2 == table and b2 != b and b.startswith(b2):
                        bits |= bits2
                acc[(table, b)] = bits
        return tuple(StringEntry(t, b, bits) for (t, b), bits in sorted(acc.items()))

    def _table_sizes(self) -> dict[str, int]:
        # from the policy alone (each binary twice, for its real path), so the source, and the object
        # built from it, are the same on every node whatever its file system holds
        return {t: max(8, sum(len(sf.values) * (2 if sf.binary else 1) for sf in self.str_filters if sf.table == t))
                for t in ("eq", "pre", "post")}

    def _self_exit_source(self) -> str:
        # the whole process is gone when its last thread exits: signal->live has dropped to 0 by the time
        # sched_process_exit fires (read through BTF, so the source is the same whether or not the
        # kernel's tracepoint reports group_dead)
        return ("int pl_self_exit(void *ctx) {\n"
                "    u64 pid_tgid = bpf_get_current_pid_tgid();\n"
                "    u32 tgid = pid_tgid >> 32;\n"
                "    if (pl_group_dead()) bpf_map_delete_elem(&pl_self, &tgid);\n"
                "    return 0;\n"
                "}\n")

    def _tracking_source(self) -> str:
        follow = []
        for ff in self.follow:
            bits = " | ".join(f"(1ULL << {sf.bit})" for sf in self.str_filters
                              if sf.table == ff.table and sf.values == ff.values) or "0"
            follow.append(f"    if (e_{ff.table} & ({bits})) p->bits |= (1ULL << {ff.bit});")
        strings = bool(self.str_filters)
        source = _TRACKING
        for mark, c in _EXEC_STATE_TRACKING.items():
            source = source.replace(mark, c if self.exec_state else "")
        return source.replace("/*FOLLOW*/", "\n".join(follow) if strings else "").replace(
            "/*STRBITS*/",
            "    u64 e_eq = 0, e_pre = 0, e_post = 0;\n    pl_str_bits(sc, p->bin, p->blen, &e_eq, &e_pre, &e_post);"
            if strings and self.follow else "")


_EXEC_STATE = r"""
/* tgid -> the capability sets (effective, inheritable, permitted) and namespace inode numbers (bpf/compile.py
   _NS_NAMES order) the process had at its exec, or at its fork until it execs, or when the policy was loaded
   (the engine seeds it from /proc): what matchCapabilityChanges and matchNamespaceChanges compare with */
struct pl_base { u64 caps[3]; u32 ns[10]; };
PL_MAP(pl_base, BPF_MAP_TYPE_LRU_HASH, u32, struct pl_base, 65536);
/* t may be any task (a fork's child): read through bpf_probe_read_kernel, not as a BTF pointer */
static __always_inline void pl_base_of(struct task_struct *t, struct pl_base *b) {
    b->caps[0] = pl_caps(t, bpf_core_field_offset(struct cred, cap_effective));
    b->caps[1] = pl_caps(t, bpf_core_field_offset(struct cred, cap_inheritable));
    b->caps[2] = pl_caps(t, bpf_core_field_offset(struct cred, cap_permitted));
    struct nsproxy *n = BPF_CORE_READ(t, nsproxy);
    b->ns[0] = BPF_CORE_READ(n, uts_ns, ns.inum);
    b->ns[1] = BPF_CORE_READ(n, ipc_ns, ns.inum);
    b->ns[2] = BPF_CORE_READ(n, mnt_ns, ns.inum);
    b->ns[3] = pl_pid_ns(t);
    b->ns[4] = BPF_CORE_READ(n, pid_ns_for_children, ns.inum);
    b->ns[5] = BPF_CORE_READ(n, net_ns, ns.inum);
    b->ns[6] = BPF_CORE_READ(n, time_ns, ns.inum);
    b->ns[7] = BPF_CORE_READ(n, time_ns_for_children, ns.inum);
    b->ns[8] = BPF_CORE_READ(n, cgroup_ns, ns.inum);
    b->ns[9] = BPF_CORE_READ(t, cred, user_ns, ns.inum);
}
/* Tetragon's capability change: In, a capability of `mask` differs; NotIn, only others do */
static __always_inline int pl_changed_caps(u64 was, u64 now, u64 mask, int in) {
    if ((was & mask) != (now & mask)) return in;
    return was != now ? !in : 0;
}
/* a namespace the exec state does not know (0) never counts as changed */
static __always_inline int pl_changed_ns(u32 was, u32 now) {
    return was && was != now;
}
"""
#: C the tracking programs (`_TRACKING`) run when a policy keeps exec state: a new image's state at exec, a
#: child process's (not a thread's) at fork, dropped at exit.
_EXEC_STATE_TRACKING = {
    "/*BASE_EXEC*/": """    struct pl_base pb = {};
    pl_base_of(bpf_get_current_task_btf(), &pb);
    bpf_map_update_elem(&pl_base, &tgid, &pb, BPF_ANY);""",
    "/*BASE_FORK*/": """    if (BPF_CORE_READ(ct, tgid) == child) {
        struct pl_base cb = {};
        pl_base_of(ct, &cb);
        bpf_map_update_elem(&pl_base, &child, &cb, BPF_ANY);
    }""",
    "/*BASE_EXIT*/": "    bpf_map_delete_elem(&pl_base, &tid);",
}

#: A kretprobe's events wait here from entry to return, per thread; built in pl_evbuf (too big for a stack).
_RET_STASH = """
/* LRU: the entry of a call that never returns (its thread killed inside it) is evicted, not kept forever;
   1024 threads inside one hooked function at once is far more than a node has */
PL_MAP(pl_ret%(i)d, BPF_MAP_TYPE_LRU_HASH, u64, struct pl_event, 1024);
"""
_RET_BUF = """
PL_MAP(pl_evbuf, BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct pl_event, 1);
/* The stash key of a call: its thread; in softirq on an idle CPU, where every CPU's task is pid 0, the CPU (a
   softirq does not migrate between a function's entry and its return: tcp_create_openreq_child runs there) */
static __always_inline u64 pl_ret_key(u64 pid_tgid) {
    return pid_tgid ? pid_tgid : ~0ULL - bpf_get_smp_processor_id();
}
"""
#: TrackSock/UntrackSock: the process each tracked socket belongs to, by the sock's address.
_SOCKTRACK = r"""
/* sock address -> the process that tracked it, until UntrackSock; LRU, so a socket freed without UntrackSock
   is evicted in time, not kept */
struct pl_owner { u64 cgroup; u32 pid; u32 tid; u32 uid; u32 pad; char bin[PL_STRLEN]; };
PL_MAP(pl_socks, BPF_MAP_TYPE_LRU_HASH, u64, struct pl_owner, SOCK_TRACK_ENTRIES);
PL_MAP(pl_ownbuf, BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct pl_owner, 1);  /* too big for the stack */
static __always_inline void pl_track(u64 sk, u32 pid, u32 tid, char *bin) {
    u32 z = 0;
    struct pl_owner *o = bpf_map_lookup_elem(&pl_ownbuf, &z);
    if (!sk || !o) return;
    o->cgroup = bpf_get_current_cgroup_id();
    o->pid = pid; o->tid = tid; o->uid = (u32)bpf_get_current_uid_gid();
    if (bin) PL_COPY(o->bin, bin, PL_STRLEN); else pl_exe_path(o->bin);
    bpf_map_update_elem(&pl_socks, &sk, o, BPF_ANY);
}
/* the process an event names (a kretprobe's entry) */
static __always_inline void pl_track_as(u64 sk, struct pl_event *ev) {
    u32 z = 0;
    struct pl_owner *o = bpf_map_lookup_elem(&pl_ownbuf, &z);
    if (!sk || !o) return;
    o->cgroup = ev->cgroup; o->pid = ev->pid; o->tid = ev->tid; o->uid = ev->uid;
    PL_COPY(o->bin, ev->bin, PL_STRLEN);
    bpf_map_update_elem(&pl_socks, &sk, o, BPF_ANY);
}
static __always_inline void pl_untrack(u64 sk) {
    bpf_map_delete_elem(&pl_socks, &sk);
}
static __always_inline void pl_owned(struct pl_event *e, struct pl_owner *o) {
    e->cgroup = o->cgroup; e->pid = o->pid; e->tid = o->tid; e->uid = o->uid;
    PL_COPY(e->bin, o->bin, PL_STRLEN);
}
""".replace("SOCK_TRACK_ENTRIES", str(SOCK_TRACK_ENTRIES))

#: Stack traces of the calls whose events ask for them (kernelStackTrace/userStackTrace), by id; 127 frames (the
#: kernel's default perf_event_max_stack). Identical stacks share one id; bpf/events.py reads them by the ids
#: in the events and symbolizes them.
STACK_DEPTH = 127
_STACKS = f"""
struct {{ __uint(type, BPF_MAP_TYPE_STACK_TRACE); __uint(key_size, 4); __uint(value_size, {STACK_DEPTH} * 8);
         __uint(max_entries, 4096); }} pl_stacks SEC(".maps");
"""

#: A USDT probe's arguments, read as its site's note says (bpf/usdt.py): the engine writes each site's specs
#: into pl_usdt at the key its link's BPF cookie holds. Sizes and signs are the note's, as Tetragon reads them.
_USDT = r"""
struct pl_usdt_arg {
    s64 val;       /* the constant, or the displacement of a memory operand */
    u16 reg_off;   /* pt_regs offset of the register, or of a memory operand's base */
    s16 idx_off;   /* pt_regs offset of a memory operand's index register; -1: none */
    u8 kind;       /* 1 constant, 2 register, 3 memory; 0: no such argument */
    u8 size;       /* bytes: 1, 2, 4 or 8 */
    u8 sign;
    u8 shift;      /* log2 of the index's scale */
};
struct pl_usdt_spec { struct pl_usdt_arg a[USDT_ARGS]; };
PL_MAP(pl_usdt, BPF_MAP_TYPE_ARRAY, u32, struct pl_usdt_spec, USDT_SITES);
static __always_inline u64 pl_usdt_arg(void *ctx, u32 k) {
    u32 key = (u32)bpf_get_attach_cookie(ctx);
    struct pl_usdt_spec *sp = bpf_map_lookup_elem(&pl_usdt, &key);
    if (!sp || k >= USDT_ARGS) return 0;
    struct pl_usdt_arg *a = &sp->a[k];
    if (a->kind == 1) return (u64)a->val;
    if (a->kind != 2 && a->kind != 3) return 0;
    u64 v = 0, r = 0, x = 0;
    bpf_probe_read_kernel(&r, sizeof(r), (char *)ctx + (a->reg_off & 0xff));
    u32 n = a->size;
    if (n == 0 || n > 8) return 0;
    if (a->kind == 2) {
        v = r;
    } else {
        if (a->idx_off >= 0) {
            bpf_probe_read_kernel(&x, sizeof(x), (char *)ctx + (a->idx_off & 0xff));
            r += x << (a->shift & 3);
        }
        /* only the operand's bytes: a wider read could run off the end of its page */
        bpf_probe_read_user(&v, n, (void *)(r + a->val));
    }
    u32 sh = 64 - 8 * n;
    v <<= sh;
    return a->sign ? (u64)((s64)v >> sh) : v >> sh;
}
""".replace("USDT_ARGS", str(USDT_ARGS)).replace("USDT_SITES", str(USDT_SITES))
#: Set on a usdt: `value` written over the 4-byte memory operand of argument k (bpf/usdt.py's DEREF), in the
#: current process at the probe, as Tetragon's Set does; 0 when written.
_USDT_SET = r"""
static __always_inline long pl_usdt_set(void *ctx, u32 k, s32 value) {
    u32 key = (u32)bpf_get_attach_cookie(ctx);
    struct pl_usdt_spec *sp = bpf_map_lookup_elem(&pl_usdt, &key);
    if (!sp || k >= USDT_ARGS) return -1;
    struct pl_usdt_arg *a = &sp->a[k];
    if (a->kind != 3 || a->size != 4) return -1;
    u64 r = 0, x = 0;
    bpf_probe_read_kernel(&r, sizeof(r), (char *)ctx + (a->reg_off & 0xff));
    if (a->idx_off >= 0) {
        bpf_probe_read_kernel(&x, sizeof(x), (char *)ctx + (a->idx_off & 0xff));
        r += x << (a->shift & 3);
    }
    return bpf_probe_write_user((void *)(r + a->val), &value, sizeof(value));
}
""".replace("USDT_ARGS", str(USDT_ARGS))

_LDSO = r"""
/* tgid -> the exec (start of the process, exec count of the task) that ran without an ELF interpreter and
   has not mapped its program yet (bpf/compile.py). An entry of an earlier exec or process is stale by
   those two numbers, so an exec with an interpreter need not look for one to delete. */
struct pl_ld { u64 start; u64 exec; };
PL_MAP(pl_ldso, BPF_MAP_TYPE_LRU_HASH, u32, struct pl_ld, 4096);
static __always_inline int pl_ld_current(struct pl_ld *ld) {
    struct task_struct *t = bpf_get_current_task_btf();
    return ld->exec && ld->exec == t->self_exec_id && ld->start == t->group_leader->start_time;
}
static __always_inline void pl_ld_mark(u32 tgid) {
    struct task_struct *t = bpf_get_current_task_btf();
    struct pl_ld v = { .start = t->group_leader->start_time, .exec = t->self_exec_id };
    bpf_map_update_elem(&pl_ldso, &tgid, &v, BPF_ANY);
}
/* No AT_BASE in the new image's auxiliary vector: the kernel started no interpreter, so the file that ran
   is a static binary or a loader (ld.so) run as a program, which will map the real program itself. */
static __always_inline int pl_no_interp(void) {
    struct mm_struct *mm = bpf_get_current_task_btf()->mm;
    /* binfmt_elf writes the arch entries (x86-64: AT_SYSINFO_EHDR when there is a vDSO, AT_MINSIGSTKSZ
       since 5.14), then six fixed ones, then AT_BASE: it is the 7th to 9th pair */
#pragma unroll
    for (int k = 6; k < 9; k++)
        if (mm->saved_auxv[2 * k] == 7) return mm->saved_auxv[2 * k + 1] == 0;  /* AT_BASE */
    return 1;
}
"""
_RATE_LIMIT_SCOPES = {"thread": 0, "process": 1, "global": 2}
#: Post's rateLimit, as Tetragon's: the same hook and selector, by the same thread (process, or anyone:
#: rateLimitScope), with the same arguments (their first 40 bytes), is posted once per window.
_RATE_LIMIT = r"""
struct pl_rl_key { u32 hook, sel, id, pad; s64 ints[8]; char s[2][40]; };
PL_MAP(pl_rl, BPF_MAP_TYPE_LRU_HASH, struct pl_rl_key, u64, 8192);
PL_MAP(pl_rlk, BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct pl_rl_key, 1);
static __always_inline int pl_rl_skip(struct pl_event *e, u64 window, u32 scope, u32 strs) {
    int z = 0;
    struct pl_rl_key *k = bpf_map_lookup_elem(&pl_rlk, &z);
    if (!k) return 0;
    k->hook = e->hook; k->sel = e->sel; k->pad = 0;
    k->id = scope == 0 ? e->tid : scope == 1 ? e->pid : 0;
    __builtin_memcpy(k->ints, e->ints, sizeof(k->ints));
    __builtin_memset(k->s, 0, sizeof(k->s));
    if (strs & 1) __builtin_memcpy(k->s[0], e->strs[0], 40);
    if (strs & 2) __builtin_memcpy(k->s[1], e->strs[1], 40);
    u64 now = e->ktime;  /* on the stack: before 6.2 a ring buffer record cannot be a helper's value */
    u64 *last = bpf_map_lookup_elem(&pl_rl, k);
    if (last && now - *last < window) return 1;
    bpf_map_update_elem(&pl_rl, k, &now, BPF_ANY);
    return 0;
}
"""
#: The file a descriptor of the current task names (the ld.so mark and the loader read mmap's fd).
_FD_FILE = r"""
static __always_inline struct file *pl_fd_file(s64 fd) {
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
    u32 max = BPF_CORE_READ(fdt, max_fds);
    if (fd < 0 || (u64)fd >= max) return 0;
    struct file **fds = BPF_CORE_READ(fdt, fd);
    struct file *f = 0;
    bpf_probe_read_kernel(&f, sizeof(f), &fds[fd & 0xffffff]);
    return f;
}
"""


#: C for the inode number of each namespace kind of the current task `pl_t` (a BTF pointer).
_NS_INUM = {"uts": "pl_t->nsproxy->uts_ns->ns.inum", "ipc": "pl_t->nsproxy->ipc_ns->ns.inum",
            "mnt": "pl_t->nsproxy->mnt_ns->ns.inum", "pid": "pl_pid_ns(pl_t)",
            "pidforchildren": "pl_t->nsproxy->pid_ns_for_children->ns.inum",
            "net": "pl_t->nsproxy->net_ns->ns.inum", "time": "pl_t->nsproxy->time_ns->ns.inum",
            "timeforchildren": "pl_t->nsproxy->time_ns_for_children->ns.inum",
            "cgroup": "pl_t->nsproxy->cgroup_ns->ns.inum", "user": "pl_t->cred->user_ns->ns.inum"}


def _task_reads(needs: set[str]) -> list[str]:
    """C reading what a hook's selectors look at of the current task (namespaces, capabilities, its pid as
    its own pid namespace numbers it)."""
    if not needs:
        return []
    L = ["    struct task_struct *pl_t = bpf_get_current_task_btf();"]
    for n in sorted(needs):
        if n.startswith("ns:"):
            kind = n[3:]
            L.append(f"    u64 pl_nsb_{kind} = pl_ns_bits({_NAMESPACES[kind]}, {_NS_INUM[kind]});")
        elif n.startswith("caps:"):
            which = n[5:]
            L.append(f"    u64 pl_caps_{which} = pl_caps(pl_t, bpf_core_field_offset(struct cred, cap_{which}));")
        elif n == "nspid":
            L.append("    u32 pl_nstgid = pl_vnr(pl_t);")
        elif n == "lineage":
            L.append("    struct pl_anc *pl_anc = pl_lineage_walk(pl_t);")
        elif n.startswith("nsi:"):
            L.append(f"    u32 pl_nsi_{n[4:]} = {_NS_INUM[n[4:]]};")
        elif n == "base":
            L.append("    struct pl_base *pl_b = bpf_map_lookup_elem(&pl_base, &tgid);")
    return L


def _ret_type(h: Hook) -> str | None:
    """The type of a kretprobe's returnArg (the parser requires one with `return: true`)."""
    return (h.return_arg.type or "int").strip() if h.return_probe and h.return_arg is not None else None


def _tracks_socks(p: TracingPolicy) -> bool:
    """Some hook of `p` tracks sockets (returnArgAction or a matchActions TrackSock/UntrackSock)."""
    acts = ("TrackSock", "UntrackSock")
    return any(h.return_arg_action in acts or any(a.action in acts for s in h.selectors for a in s.match_actions)
               for h in p.hooks)


def _overrides(h: Hook) -> bool:
    return any(a.action == "Override" for s in h.selectors for a in s.match_actions)


def _traced_fields(h: Hook, offsets: tuple[int, ...]) -> tuple[Field, ...]:
    """The arguments of a trampoline program as fields at `offsets` (context slots, or pt_regs registers),
    each a u64: pointers where the policy types them as anything but an integer."""
    out = []
    for k, off in enumerate(offsets):
        t = (a.type or "") if (a := h.arg(k)) is not None else ""
        out.append(Field(f"arg{k}", "long" if a is None or t in _INT_TYPES else "void *", off, 8, t not in _UNSIGNED))
    return tuple(out)


def _post_open() -> list[str]:
    """C opening the posting of an event: a ring buffer record `e`, or the lost counter."""
    return ["    if (post) {",
            "        struct pl_event *e = bpf_ringbuf_reserve(&pl_events, sizeof(struct pl_event), 0);",
            "        if (!e) {",
            "            pl_count(3);",
            "        } else {"]


def _section(site: Site) -> str:
    """The ELF section libbpf reads a program's type (and a cgroup program's attach type) from."""
    if site.kind == "tracepoint":
        return f"tracepoint/{site.subsystem}/{site.event}"
    if site.kind == "raw_tracepoint":
        return f"raw_tp/{site.event}"
    if site.kind == "uprobe":
        return "uprobe"  # libbpf's section for a uprobe its loader attaches itself (a KPROBE program)
    if site.kind == "kprobe" and site.pattern is not None:
        return "kprobe"  # attached by the engine to each function the pattern matches
    return f"{site.kind}/{site.attach}"  # cgroup/connect4, kprobe/fd_install, kretprobe/fd_install


def _sections(source: str, sites: tuple[Site, ...]) -> str:
    """Every program of `sites` put in its section (programs are generated as `int <fn>(...)` lines)."""
    for site in sites:
        head = f"\nint {site.function}("
        assert source.count(head) == 1, site.function
        source = source.replace(head, f'\nSEC("{_section(site)}") int {site.function}(')
    return source


def _sockaddr_lines(v: str, src: str, read: str) -> list[str]:
    """C reading the sockaddr at `src` with the helper `read` into the variables of sockaddr operand `v`."""
    return [f"    struct pl_sa {v}_sa = {{}};",
            f"    {read}(&{v}_sa, sizeof({v}_sa), {src});",
            f"    u32 {v}_fam = {v}_sa.fam;",
            f"    u32 {v}_port = __builtin_bswap16({v}_sa.port);",
            f"    u32 {v}_ip4 = __builtin_bswap32({v}_sa.w1);",
            *[f"    u32 {v}_ip6_{k} = __builtin_bswap32({v}_sa.a6[{k}]);" for k in range(4)],
            f"    u32 *{v}_raw = {v}_sa.fam == 2 ? &{v}_sa.w1 : {v}_sa.a6;",
            f"    u32 {v}_proto = 0;  /* not in the sockaddr; only the cgroup hooks know it */"]


def _c(v: int) -> str:
    return f"{v}LL" if v < 0x8000000000000000 else f"{v}ULL"


def _range(v: str) -> tuple[int, int]:
    lo, sep, hi = v.partition(":")
    if not sep:
        raise ValueError(f"range {v!r} must be written low:high")
    return int(lo, 0), int(hi, 0)


_PRELUDE = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
char LICENSE[] SEC("license") = "GPL";
#define PL_STRLEN %(strlen)d
#define PL_SHORT %(short)d
#define PL_MAP(name, kind, key_t, value_t, n) \
    struct { __uint(type, kind); __type(key, key_t); __type(value, value_t); __uint(max_entries, n); } name SEC(".maps")
#define PL_TRIE(name, key_t, value_t, n) \
    struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __type(key, key_t); __type(value, value_t); \
             __uint(max_entries, n); __uint(map_flags, BPF_F_NO_PREALLOC); } name SEC(".maps")
struct pl_cfg { u32 mode; u32 scoped; };
struct pl_proc { u64 bits; u32 blen; u32 plen; char bin[PL_STRLEN]; char parent[PL_STRLEN]; };
/* Strings are 8-byte aligned wherever they live, and zeroed and copied through PL_ZERO/PL_COPY, which say
   so: clang otherwise zeroes a char buffer a byte at a time (256 stores for one key). */
#define PL_ZERO(p, n) __builtin_memset(__builtin_assume_aligned(p, 8), 0, n)
#define PL_COPY(d, s, n) __builtin_memcpy(__builtin_assume_aligned(d, 8), __builtin_assume_aligned(s, 8), n)
struct pl_str { char s[PL_STRLEN]; } __attribute__((aligned(8)));
struct pl_str64 { char s[PL_SHORT]; };
struct pl_lpm { u32 plen; char s[PL_STRLEN]; };
/* lpm after a u32, so that its string is 8-byte aligned too */
struct pl_scratch { struct pl_str str[%(nstr)d]; struct pl_proc proc; u32 pad; struct pl_lpm lpm; };
struct pl_sa { u16 fam; u16 port; u32 w1; u32 a6[4]; };
struct pl_event {
    u64 ktime; u64 cgroup;
    u32 pid; u32 tid; u32 uid; u32 hook; u32 sel; u32 action; u32 mode; u32 acted; u32 sig; u32 pad;
    s64 ints[8];
    char strs[2][PL_STRLEN];
    char bin[PL_STRLEN];
    s32 kstack; s32 ustack;  /* 1 + the ids in pl_stacks of the call's kernel and user stacks; 0 or less: none */
};
/* the policy document and load parameters, for adoption; the engine sizes the value before load */
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(key_size, 4); __uint(value_size, 8); __uint(max_entries, 1); }
    pl_meta SEC(".maps");  /* no BTF type: its value size is set at load */
PL_MAP(pl_cfg, BPF_MAP_TYPE_ARRAY, u32, struct pl_cfg, 1);
PL_MAP(pl_counters, BPF_MAP_TYPE_PERCPU_ARRAY, u32, u64, 4);
PL_MAP(pl_scratch, BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct pl_scratch, 1);
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, %(pages)d * 4096); } pl_events SEC(".maps");
PL_MAP(pl_scope, BPF_MAP_TYPE_HASH, u64, u8, 1024);
/* tgid -> start time of the engines that load policies; one map shared by every policy of a pin root
   (the engine hands libbpf the pinned map before load) */
PL_MAP(pl_self, BPF_MAP_TYPE_HASH, u32, u64, %(self_entries)d);
%(tables)s
static __always_inline void pl_count(int idx) {
    u64 *v = bpf_map_lookup_elem(&pl_counters, &idx);
    if (v) *v += 1;
}
/* pl_cfg.scoped says at which levels of the hierarchy scope cgroups are (bpf/scope.py level_mask): only
   the task's ancestors at those levels are looked up, one helper call each, not every level there is */
static __always_inline int pl_in_cgroups(void) {
    u64 id = bpf_get_current_cgroup_id();
    if (bpf_map_lookup_elem(&pl_scope, &id)) return 1;
    int z = 0;
    struct pl_cfg *cfg = bpf_map_lookup_elem(&pl_cfg, &z);
    u32 levels = cfg ? cfg->scoped : 0;
#pragma unroll
    for (int l = 0; l < %(max_level)d; l++) {
        if (!(levels & (1U << l))) continue;
        id = bpf_get_current_ancestor_cgroup_id(l);
        if (id && bpf_map_lookup_elem(&pl_scope, &id)) return 1;
    }
    return 0;
}
#if PL_SCOPED
/* bpf/scope.py: tasks of the scope wherever they are moved (1), or moved out by the workload (2) */
PL_MAP(pl_members, BPF_MAP_TYPE_HASH, u32, u8, %(members)d);
PL_TRIE(pl_cgpaths, struct pl_lpm, u8, 1024);
#endif
static __always_inline int pl_in_scope_of(u32 tgid) {
#if PL_SCOPED
    if (bpf_map_lookup_elem(&pl_members, &tgid)) return 1;
#endif
    return pl_in_cgroups();
}
static __always_inline int pl_in_scope(void) {
    return pl_in_scope_of(bpf_get_current_pid_tgid() >> 32);
}
%(strfn)s
/* At sched_process_exit: the exiting thread is the last of its process. */
static __always_inline int pl_group_dead(void) {
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    return BPF_CORE_READ(t, signal, live.counter) == 0;
}
/* The path of the file a process runs (its mm->exe_file: for a script, the interpreter the kernel
   really started), walked to the root of the process's mount tree, across mounts. So a binary is
   judged by the file that runs, not by the path its caller typed. One walk from the file up writes
   each name in front of the last into a buffer, which holds every path of up to PL_PATHBUF bytes; a
   longer path (only deep directories make one) is walked a second time, placing each name at its
   offset from the root, so it keeps its true beginning (what Prefix filters and directory blocks read). */
#define PL_PATHBUF 1024
struct pl_pathbuf { u32 start; u32 total; u32 over; u32 pad; char out[PL_PATHBUF + 256]; };
PL_MAP(pl_pathbuf, BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct pl_pathbuf, 1);
struct pl_walk { struct vfsmount *vfs; struct mount *mnt; struct dentry *dentry; struct dentry *root;
                 struct pl_pathbuf *buf; u64 place; };
/* d_parent and d_name side by side (every kernel so far): one read a level instead of three */
struct pl_dname { struct dentry *parent; u64 hash_len; const unsigned char *name; };
/* One level up: 1 at the root of the mount tree (or a detached root), 2 after crossing to the parent
   mount, 0 with the name of the level in q. */
static __always_inline int pl_walk_up(struct pl_walk *w, struct pl_dname *q) {
    struct dentry *d = w->dentry;
    struct mount *mnt = w->mnt;
    if (d == w->root) {
        struct mount *up = BPF_CORE_READ(mnt, mnt_parent);
        if (up == mnt) return 1;  /* the root of the mount tree */
        w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
        w->mnt = up;
        /* locals only in BPF_CORE_READ: a field of struct pl_walk would become a relocation itself */
        struct vfsmount *v = (struct vfsmount *)((char *)up + bpf_core_field_offset(struct mount, mnt));
        w->vfs = v;
        w->root = BPF_CORE_READ(v, mnt_root);
        return 2;
    }
    if (bpf_core_field_offset(struct dentry, d_name) == bpf_core_field_offset(struct dentry, d_parent) + 8) {
        bpf_probe_read_kernel(q, sizeof(*q), (char *)d + bpf_core_field_offset(struct dentry, d_parent));
        q->hash_len >>= 32;  /* the length is the high half of qstr.hash_len */
    } else {
        q->parent = BPF_CORE_READ(d, d_parent);
        q->hash_len = BPF_CORE_READ(d, d_name.len);
        q->name = BPF_CORE_READ(d, d_name.name);
    }
    if (q->parent == d) return 1;  /* a detached root: the walk ends outside the mount tree */
    q->hash_len &= 255;  /* NAME_MAX */
    w->dentry = q->parent;
    return 0;
}
/* First walk: each name goes in front of the last, from the end of the buffer down. Second walk (place,
   for a path longer than the buffer): start counts down from the total, and the names that begin in
   the first PL_STRLEN bytes land at their offset from the root. */
static long pl_walk_step(u64 i, void *arg) {
    struct pl_walk *w = arg;
    struct pl_dname q = {};
    int r = pl_walk_up(w, &q);
    if (r) return r == 1;
    struct pl_pathbuf *buf = w->buf;
    u32 len = q.hash_len;
    u32 start = buf->start;
    if (w->place) {
        start -= len + 1;
        buf->start = start;
        if (start >= PL_STRLEN - 1) return start > 0x80000000;  /* not yet in the first PL_STRLEN bytes */
    } else {
        buf->total += len + 1;
        if (len + 1 > start) { buf->over = 1; return 0; }  /* keep counting: the second walk needs the total */
        start -= len + 1;
        buf->start = start;
    }
    asm volatile("" : "+r"(start), "+r"(len));  /* keep the masks below: the verifier needs them */
    start &= PL_PATHBUF - 1;
    len &= 255;
    buf->out[start] = '/';
    bpf_probe_read_kernel(&buf->out[start + 1], len, q.name);
    return w->place && start == 0;
}
struct pl_at { struct vfsmount *vfs; struct dentry *dentry; struct dentry *root; };
static __always_inline void pl_walk_begin(struct pl_walk *w, struct pl_at *at) {
    w->vfs = at->vfs;
    w->dentry = at->dentry;
    w->mnt = (struct mount *)((char *)at->vfs - bpf_core_field_offset(struct mount, mnt));
    w->root = at->root;
}
/* Writes the path at `at` into dst (PL_STRLEN bytes), zero-padded as a string key (pl_str_bits); returns
   its length (at most PL_STRLEN - 1: longer paths keep their beginning), 0 when there is no file. */
static __always_inline int pl_path(struct pl_at *at, char *dst) {
    PL_ZERO(dst, PL_SHORT);
    if (!at->vfs) return 0;
    u32 z = 0;
    struct pl_pathbuf *buf = bpf_map_lookup_elem(&pl_pathbuf, &z);
    if (!buf) return 0;
    struct pl_walk w = {};
    w.buf = buf;
    buf->start = PL_PATHBUF;
    buf->total = 0;
    buf->over = 0;
    pl_walk_begin(&w, at);
    bpf_loop(4096, pl_walk_step, &w, 0);
    u32 total = buf->total;
    if (total == 0) { dst[0] = '/'; return 1; }
    u32 from = buf->start;
    if (buf->over) {
        buf->start = total;
        pl_walk_begin(&w, at);
        w.place = 1;
        bpf_loop(4096, pl_walk_step, &w, 0);
        from = 0;
    }
    u32 len = total;
    if (len > PL_STRLEN - 1) len = PL_STRLEN - 1;
    asm volatile("" : "+r"(len), "+r"(from));
    len &= PL_STRLEN - 1;
    from &= PL_PATHBUF - 1;
    if (len < PL_SHORT) {
        /* a short path ends at PL_PATHBUF, past which the buffer is never written: a fixed copy of
           PL_SHORT bytes brings its zero padding with it, and costs no helper call */
        u64 *to = __builtin_assume_aligned(dst, 8);
#pragma unroll
        for (int k = 0; k < PL_SHORT / 8; k++) to[k] = *(u64 *)&buf->out[from + 8 * k];
        return len;
    }
    PL_ZERO(dst, PL_STRLEN);
    bpf_probe_read_kernel(dst, len, &buf->out[from]);
    return len;
}
/* A socket as Tetragon's sock_arg shows it (kprobe arguments of type sock; bpf/events.py reads it back).
   Addresses stay in network order, ports in host order. */
struct pl_sk { u16 family; u16 type; u16 protocol; u16 state; u16 sport; u16 dport; u32 mark; u32 priority;
               u32 pad; u64 cookie; u32 saddr[4]; u32 daddr[4]; };
static __always_inline void pl_sock(struct sock *sk, struct pl_sk *o) {
    __builtin_memset(o, 0, sizeof(*o));
    if (!sk) return;
    o->family = BPF_CORE_READ(sk, __sk_common.skc_family);
    o->type = BPF_CORE_READ(sk, sk_type);
    o->protocol = BPF_CORE_READ(sk, sk_protocol);
    o->state = BPF_CORE_READ(sk, __sk_common.skc_state);
    o->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
    o->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
    o->mark = BPF_CORE_READ(sk, sk_mark);
    o->priority = BPF_CORE_READ(sk, sk_priority);
    o->cookie = (u64)sk;  /* Tetragon's cookie: the socket's address, the same for every event of it */
    if (o->family == 2) {
        o->saddr[0] = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
        o->daddr[0] = BPF_CORE_READ(sk, __sk_common.skc_daddr);
    } else if (o->family == 10) {
        BPF_CORE_READ_INTO(&o->saddr, sk, __sk_common.skc_v6_rcv_saddr);
        BPF_CORE_READ_INTO(&o->daddr, sk, __sk_common.skc_v6_daddr);
    }
}
/* Credentials as Tetragon's process_credentials_arg shows them (kprobe arguments of type cred). */
struct pl_cr { u32 uid; u32 gid; u32 suid; u32 sgid; u32 euid; u32 egid; u32 fsuid; u32 fsgid; u32 securebits;
               u32 pad; u64 permitted; u64 effective; u64 inheritable; };
static __always_inline void pl_cred(struct cred *c, struct pl_cr *o) {
    __builtin_memset(o, 0, sizeof(*o));
    if (!c) return;
    o->uid = BPF_CORE_READ(c, uid.val);
    o->gid = BPF_CORE_READ(c, gid.val);
    o->suid = BPF_CORE_READ(c, suid.val);
    o->sgid = BPF_CORE_READ(c, sgid.val);
    o->euid = BPF_CORE_READ(c, euid.val);
    o->egid = BPF_CORE_READ(c, egid.val);
    o->fsuid = BPF_CORE_READ(c, fsuid.val);
    o->fsgid = BPF_CORE_READ(c, fsgid.val);
    o->securebits = BPF_CORE_READ(c, securebits);
    /* kernel_cap_t is two u32 before 6.3 and one u64 after: eight bytes either way */
    bpf_probe_read_kernel(&o->permitted, 8, (char *)c + bpf_core_field_offset(struct cred, cap_permitted));
    bpf_probe_read_kernel(&o->effective, 8, (char *)c + bpf_core_field_offset(struct cred, cap_effective));
    bpf_probe_read_kernel(&o->inheritable, 8, (char *)c + bpf_core_field_offset(struct cred, cap_inheritable));
}
/* The current task is in a 32-bit compat syscall (TS_COMPAT in thread_info.status). */
static __always_inline int pl_compat(void) {
    return bpf_get_current_task_btf()->thread_info.status & 0x0002;
}
/* A capability set of the task's credentials: kernel_cap_t is two u32 before 6.3 and one u64 after, eight
   bytes either way, read at the field's (relocated) offset. */
static __always_inline u64 pl_caps(struct task_struct *t, u32 off) {
    u64 cred = (u64)BPF_CORE_READ(t, cred), v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(cred + off));
    return v;
}
/* The task's pid as numbered in its own pid namespace, and that namespace: pid->numbers[pid->level]. */
static __always_inline u64 pl_upid(struct pid *p, int ns) {
    u32 level = BPF_CORE_READ(p, level);
    struct upid u = {};
    bpf_probe_read_kernel(&u, sizeof(u), (char *)p + bpf_core_field_offset(struct pid, numbers)
                          + (level & 31) * bpf_core_type_size(struct upid));
    return ns ? BPF_CORE_READ(u.ns, ns.inum) : (u64)u.nr;
}
static __always_inline u32 pl_pid_ns(struct task_struct *t) {
    return pl_upid(BPF_CORE_READ(t, thread_pid), 1);
}
static __always_inline u32 pl_ns_tgid(struct task_struct *t) {
    return pl_upid(BPF_CORE_READ(t, group_leader, thread_pid), 0);
}
/* isNamespacePID's pid: the process's number in its own pid namespace, 0 in the initial one (Tetragon's
   nspid, which no process of the host has) */
static __always_inline u32 pl_vnr(struct task_struct *t) {
    struct pid *p = BPF_CORE_READ(t, group_leader, thread_pid);
    return BPF_CORE_READ(p, level) ? pl_upid(p, 0) : 0;
}
#if PL_HAVE_NS
struct pl_nskey { u32 kind; u32 inum; };
PL_MAP(pl_ns, BPF_MAP_TYPE_HASH, struct pl_nskey, u64, PL_HAVE_NS);
static __always_inline u64 pl_ns_bits(u32 kind, u32 inum) {
    struct pl_nskey k = { kind, inum };
    u64 *v = bpf_map_lookup_elem(&pl_ns, &k);
    return v ? *v : 0;
}
#endif
/* the path of a file known only by its address (read through bpf_probe_read_kernel) */
static __always_inline int pl_file_path(struct file *f, char *dst) {
    struct pl_at at = {};
    if (f) {
        struct path fp = {};
        bpf_probe_read_kernel(&fp, sizeof(fp), (char *)f + bpf_core_field_offset(struct file, f_path));
        at.vfs = fp.mnt;
        at.dentry = fp.dentry;
        at.root = BPF_CORE_READ(fp.mnt, mnt_root);
    }
    return pl_path(&at, dst);
}
/* Fields of the current task are read as BTF pointers (plain loads the JIT checks), not through
   bpf_probe_read_kernel calls: each call costs tens of ns, and they were most of an exec check. */
static __always_inline int pl_exe_path(char *dst) {
    struct file *f = bpf_get_current_task_btf()->mm->exe_file;
    struct pl_at at = {};
    if (f) {
        at.vfs = f->f_path.mnt;
        at.dentry = f->f_path.dentry;
        at.root = f->f_path.mnt->mnt_root;
    }
    return pl_path(&at, dst);
}
"""

_OBJECTS = r"""
/* Kernel objects of kprobe arguments (bpf/compile.py _OBJECT_KINDS), each read through BTF into the operand's
   string slot in the shape of Tetragon's argument; bpf/events.py reads them back. */
/* From user memory, or kernel memory where that fails: a kernel function's buffer may be either. */
static __always_inline long pl_read_any(void *dst, u32 n, const void *src) {
    long r = bpf_probe_read_user(dst, n, src);
    return r < 0 ? bpf_probe_read_kernel(dst, n, src) : r;
}
/* The first bytes (at most PL_STRLEN) of a buffer of `size` bytes into dst, zero-padded as a string key
   (pl_str_bits); returns how many were read. */
static __always_inline u32 pl_buf(char *dst, const void *src, u64 size) {
    PL_ZERO(dst, PL_STRLEN);
    u32 n = size > PL_STRLEN ? PL_STRLEN : (u32)size;
    asm volatile("" : "+r"(n));  /* keep the bound below: the verifier needs it */
    if (n > PL_STRLEN || !n || !src) return 0;
    return pl_read_any(dst, n, src) < 0 ? 0 : n;
}
/* A returnCopy buffer when its function returns: as many bytes as it returned; bytes read << 48 | that. */
static __always_inline s64 pl_ret_copy(char *dst, s64 addr, s64 ret) {
    u64 size = ret > 0 ? (u64)ret : 0;
    u32 n = pl_buf(dst, (const void *)addr, size);
    return ((s64)n << 48) | (s64)(size & 0xffffffffffffULL);
}
/* An iovec array of `cnt` entries: its first segment's first bytes, and in *total the size of the data of its
   first eight segments. */
struct pl_iov { u64 base; u64 len; };
static __always_inline u32 pl_iovec(char *dst, const struct pl_iov *v, u64 cnt, u64 *total) {
    struct pl_iov first = {}, iv = {};
    u64 sum = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        if (k >= cnt || pl_read_any(&iv, sizeof(iv), &v[k]) < 0) break;
        if (k == 0) first = iv;
        sum += iv.len;
    }
    *total = sum;
    return pl_buf(dst, (const void *)first.base, first.len);
}
/* iov_iter's iovec array is `__iov` since 6.4, `iov` before */
struct iov_iter___pl_new { const struct iovec *__iov; } __attribute__((preserve_access_index));
struct iov_iter___pl_old { const struct iovec *iov; } __attribute__((preserve_access_index));
/* The data an iov_iter walks: the first bytes of its user buffer, or of its iovec or kvec array's first segment,
   and in *total its size. */
static __always_inline u32 pl_iov_iter(char *dst, struct iov_iter *it, u64 *total) {
    *total = 0;
    if (!it) return pl_buf(dst, 0, 0);
    u8 ty = BPF_CORE_READ(it, iter_type);
    u64 count = BPF_CORE_READ(it, count), off = BPF_CORE_READ(it, iov_offset), len = count;
    const char *base = 0;
    *total = count;
    if (ty == bpf_core_enum_value(enum iter_type, ITER_UBUF)) {
        base = (const char *)BPF_CORE_READ(it, ubuf) + off;
    } else if (ty == bpf_core_enum_value(enum iter_type, ITER_IOVEC) ||
               ty == bpf_core_enum_value(enum iter_type, ITER_KVEC)) {
        const void *v;
        if (bpf_core_field_exists(((struct iov_iter___pl_new *)it)->__iov))
            v = BPF_CORE_READ((struct iov_iter___pl_new *)it, __iov);
        else
            v = BPF_CORE_READ((struct iov_iter___pl_old *)it, iov);
        struct pl_iov iv = {};
        bpf_probe_read_kernel(&iv, sizeof(iv), v);
        base = (const char *)iv.base + off;
        if (iv.len - off < len) len = iv.len - off;
    }
    return pl_buf(dst, base, len);
}
/* A packet as Tetragon's skb_arg shows it: addresses and ports from its IP and TCP/UDP headers (skb->head plus
   network_header/transport_header), addresses in network order; IPv6 extension headers are walked to the
   transport protocol. */
struct pl_sb { u32 hash; u32 len; u32 priority; u32 mark; u16 family; u16 proto; u16 sport; u16 dport;
               u32 saddr[4]; u32 daddr[4]; };
static __always_inline void pl_skb(struct sk_buff *skb, struct pl_sb *o) {
    __builtin_memset(o, 0, sizeof(*o));
    if (!skb) return;
    o->hash = BPF_CORE_READ(skb, hash);
    o->len = BPF_CORE_READ(skb, len);
    o->priority = BPF_CORE_READ(skb, priority);
    o->mark = BPF_CORE_READ(skb, mark);
    unsigned char *head = BPF_CORE_READ(skb, head);
    u32 l3 = BPF_CORE_READ(skb, network_header), l4 = BPF_CORE_READ(skb, transport_header);
    u32 w[10] = {};  /* the IP header, as the wire has it */
    if (!head || bpf_probe_read_kernel(w, 20, head + l3)) return;
    u32 ver = (w[0] >> 4) & 0xf, proto;
    if (ver == 4) {
        o->family = 2;
        proto = (w[2] >> 8) & 0xff;
        o->saddr[0] = w[3];
        o->daddr[0] = w[4];
        if (l4 == 0xffff || l4 <= l3) l4 = l3 + (w[0] & 0xf) * 4;  /* no transport header set: after the IP one */
    } else if (ver == 6) {
        if (bpf_probe_read_kernel(w, 40, head + l3)) return;
        o->family = 10;
        proto = (w[1] >> 16) & 0xff;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            o->saddr[k] = w[2 + k];
            o->daddr[k] = w[6 + k];
        }
        u32 off = l3 + 40;
        /* hop-by-hop (0), routing (43), fragment (44), authentication (51), destination options (60) */
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (proto != 0 && proto != 43 && proto != 44 && proto != 51 && proto != 60) break;
            u8 ext[2] = {};
            if (bpf_probe_read_kernel(ext, 2, head + off)) return;
            off += proto == 44 ? 8 : proto == 51 ? (ext[1] + 2) * 4 : (ext[1] + 1) * 8;
            proto = ext[0];
        }
        if (l4 == 0xffff || l4 <= l3) l4 = off;
    } else {
        return;  /* not IP */
    }
    o->proto = proto;
    if (proto == 6 || proto == 17) {
        u16 ports[2] = {};
        bpf_probe_read_kernel(ports, sizeof(ports), head + l4);
        o->sport = __builtin_bswap16(ports[0]);
        o->dport = __builtin_bswap16(ports[1]);
    }
}
/* The path of a dentry within its file system, as Tetragon's dentry argument: with no mount, pl_path's walk ends
   at the file system's root (a dentry that is its own parent); the mount fields are never read (the root dentry
   it compares with is none). */
static __always_inline int pl_dentry_path(struct dentry *d, char *dst) {
    struct pl_at at = { (struct vfsmount *)d, d, 0 };
    return pl_path(&at, dst);
}
/* bpf_attr_arg, perf_event_arg, bpf_map_arg, module_arg (module and load_info), user_ns_arg */
struct pl_ba { u32 prog_type; u32 insn_cnt; char name[16]; };
static __always_inline void pl_bpf_attr(void *p, struct pl_ba *o) {
    union bpf_attr *a = p;
    __builtin_memset(o, 0, sizeof(*o));
    if (!a) return;
    o->prog_type = BPF_CORE_READ(a, prog_type);
    o->insn_cnt = BPF_CORE_READ(a, insn_cnt);
    bpf_probe_read_kernel(o->name, sizeof(o->name), (char *)a + bpf_core_field_offset(union bpf_attr, prog_name));
}
struct pl_pe { u32 type; u32 pad; u64 config; u64 probe_offset; char func[232]; };
static __always_inline void pl_perf_event(void *p, struct pl_pe *o) {
    struct perf_event *e = p;
    __builtin_memset(o, 0, sizeof(*o));
    if (!e) return;
    o->type = BPF_CORE_READ(e, attr.type);
    o->config = BPF_CORE_READ(e, attr.config);
    o->probe_offset = BPF_CORE_READ(e, attr.probe_offset);
    /* a kprobe's function (config1 of a dynamic PMU: kprobe, uprobe): the caller's string while the event is made */
    u64 fn = o->type > 5 ? BPF_CORE_READ(e, attr.kprobe_func) : 0;
    if (fn && bpf_probe_read_user_str(o->func, sizeof(o->func), (void *)fn) < 0)
        bpf_probe_read_kernel_str(o->func, sizeof(o->func), (void *)fn);
}
struct pl_bm { u32 map_type; u32 key_size; u32 value_size; u32 max_entries; char name[16]; };
static __always_inline void pl_bpf_map(void *p, struct pl_bm *o) {
    struct bpf_map *m = p;
    __builtin_memset(o, 0, sizeof(*o));
    if (!m) return;
    o->map_type = BPF_CORE_READ(m, map_type);
    o->key_size = BPF_CORE_READ(m, key_size);
    o->value_size = BPF_CORE_READ(m, value_size);
    o->max_entries = BPF_CORE_READ(m, max_entries);
    bpf_probe_read_kernel(o->name, sizeof(o->name), (char *)m + bpf_core_field_offset(struct bpf_map, name));
}
struct pl_md { u64 taints; u32 sig_ok; u32 pad; char name[56]; };
static __always_inline void pl_module(void *p, struct pl_md *o) {
    struct module *m = p;
    __builtin_memset(o, 0, sizeof(*o));
    if (!m) return;
    o->taints = BPF_CORE_READ(m, taints);
    bpf_probe_read_kernel_str(o->name, sizeof(o->name), (char *)m + bpf_core_field_offset(struct module, name));
}
/* struct load_info is the module loader's own (absent from a kernel without modules), sig_ok only with
   CONFIG_MODULE_SIG: both are looked up at load */
struct load_info___pl { const char *name; struct module *mod; bool sig_ok; } __attribute__((preserve_access_index));
static __always_inline void pl_load_info(void *p, struct pl_md *o) {
    struct load_info___pl *info = p;
    __builtin_memset(o, 0, sizeof(*o));
    if (!info || !bpf_core_type_exists(struct load_info___pl)) return;
    bpf_probe_read_kernel_str(o->name, sizeof(o->name), BPF_CORE_READ(info, name));
    o->taints = BPF_CORE_READ(info, mod, taints);
    if (bpf_core_field_exists(info->sig_ok)) o->sig_ok = BPF_CORE_READ(info, sig_ok);
}
struct pl_un { s32 level; u32 uid; u32 gid; u32 inum; };
static __always_inline void pl_user_ns(void *p, struct pl_un *o) {
    struct user_namespace *ns = p;
    __builtin_memset(o, 0, sizeof(*o));
    if (!ns) return;
    o->level = BPF_CORE_READ(ns, level);
    o->uid = BPF_CORE_READ(ns, owner.val);
    o->gid = BPF_CORE_READ(ns, group.val);
    o->inum = BPF_CORE_READ(ns, ns.inum);
}
"""

_STRFN = r"""
/* s is zero-padded to PL_SHORT bytes when len < PL_SHORT, else to PL_STRLEN: the key of its table */
static __always_inline void pl_str_bits(struct pl_scratch *sc, char *s, int len, u64 *eq, u64 *pre, u64 *post) {
    u32 n = len;
    u64 *v;
    /* two calls the verifier can each inline: merged into one, the map would be a variable and the
       lookup an indirect call */
    if (n < PL_SHORT) {
        v = bpf_map_lookup_elem(&pl_str_eq64, (struct pl_str64 *)s);
        asm volatile("" : "+r"(v));
    } else {
        v = bpf_map_lookup_elem(&pl_str_eq, (struct pl_str *)s);
    }
    if (v) *eq = *v;
    if (n > PL_STRLEN - 1) n = PL_STRLEN - 1;
#if PL_HAVE_PRE
    PL_COPY(sc->lpm.s, s, PL_STRLEN);
    sc->lpm.plen = n * 8;
    v = bpf_map_lookup_elem(&pl_str_pre, &sc->lpm);
    if (v) *pre = *v;
#endif
#if PL_HAVE_POST
    sc->lpm.plen = n * 8;
    for (u32 i = 0; i < PL_STRLEN; i++) {
        if (i >= n) break;
        u32 src = n - 1 - i;
        u32 dst = i;
        /* keep the masks: the verifier needs both indexes bounded */
        asm volatile("" : "+r"(src), "+r"(dst));
        sc->lpm.s[dst & (PL_STRLEN - 1)] = s[src & (PL_STRLEN - 1)];
    }
    v = bpf_map_lookup_elem(&pl_str_post, &sc->lpm);
    if (v) *post = *v;
#endif
}
"""

#: matchPIDs followForks (`_pids_cond`): Tetragon's execve_map lineage, kept by this policy. Each process's
#: parent is recorded when it forks (the child's real_parent, which CLONE_PARENT makes the forker's own
#: parent) and kept until the process's last thread exits, when its entry goes. Tetragon also rewrites it
#: at exec with the real_parent of that moment, which cuts a process that execs after its parent died
#: from its lineage; here the forker stays, so timing an exec cannot leave a tree. The engine fills the
#: map from /proc for what ran before the policy (`engine._seed_lineage`). A hook walks it up from the
#: current process: its tgid, then each recorded parent, at most 10 pids and 9 entries, as far as
#: Tetragon's FIND_PIDSET10 reaches; nine map lookups, no loop the verifier must bound.
_LINEAGE = r"""
struct pl_lin { u32 ppid; u32 nspid; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, u32); __type(value, struct pl_lin);
         __uint(max_entries, 65536); __uint(map_flags, BPF_F_NO_PREALLOC); } pl_lineage SEC(".maps");
#define PL_ANC 10
/* pid[0..n) the process and its ancestors; ns[0..nns) their namespace pids (an entry's, so one fewer) */
struct pl_anc { u32 n; u32 nns; u32 pid[PL_ANC]; u32 ns[PL_ANC]; };
PL_MAP(pl_ancbuf, BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct pl_anc, 1);
int pl_track_lfork(void *ctx) {
    struct task_struct *ct = (struct task_struct *)((struct bpf_raw_tracepoint_args *)ctx)->args[1];
    u32 tgid = BPF_CORE_READ(ct, tgid);
    if (BPF_CORE_READ(ct, pid) != tgid) return 0;  /* a thread: its process has its entry */
    struct pl_lin v = { .ppid = BPF_CORE_READ(ct, real_parent, tgid), .nspid = pl_vnr(ct) };
    bpf_map_update_elem(&pl_lineage, &tgid, &v, BPF_ANY);
    return 0;
}
int pl_track_lexit(void *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (pl_group_dead()) bpf_map_delete_elem(&pl_lineage, &tgid);
    return 0;
}
static __always_inline struct pl_anc *pl_lineage_walk(struct task_struct *t) {
    int z = 0;
    struct pl_anc *a = bpf_map_lookup_elem(&pl_ancbuf, &z);
    if (!a) return 0;
    u32 pid = BPF_CORE_READ(t, tgid);
    a->pid[0] = pid;
    a->ns[0] = pl_vnr(t);
    a->n = 1;
    a->nns = 1;
    struct pl_lin *l = bpf_map_lookup_elem(&pl_lineage, &pid);
    /* a process the map missed (it filled up) still has its live parent */
    pid = l ? l->ppid : BPF_CORE_READ(t, real_parent, tgid);
#pragma unroll
    for (int k = 1; k < PL_ANC; k++) {
        a->pid[k] = pid;
        a->n = k + 1;
        if (k == PL_ANC - 1) break;
        l = bpf_map_lookup_elem(&pl_lineage, &pid);
        if (!l) break;  /* it exited: Tetragon's walk ends there too */
        a->ns[k] = l->nspid;
        a->nns = k + 1;
        pid = l->ppid;
    }
    return a;
}
static __always_inline int pl_anc_pid(struct pl_anc *a, u32 v) {
    if (!a) return 0;
#pragma unroll
    for (int k = 0; k < PL_ANC; k++)
        if (k < a->n && a->pid[k] == v) return 1;
    return 0;
}
static __always_inline int pl_anc_ns(struct pl_anc *a, u32 v) {
    if (!a) return 0;
#pragma unroll
    for (int k = 0; k < PL_ANC; k++)
        if (k < a->nns && a->ns[k] == v) return 1;
    return 0;
}
"""

_TRACKING = r"""
int pl_track_exec(void *ctx) {
    int z = 0;
    struct pl_scratch *sc = bpf_map_lookup_elem(&pl_scratch, &z);
    if (!sc) return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct pl_proc *p = &sc->proc;
    struct pl_proc *old = bpf_map_lookup_elem(&pl_procs, &tgid);
    if (old) {
        PL_COPY(p->parent, old->parent, PL_STRLEN);
        p->plen = old->plen;
        p->bits = old->bits;
    } else {
        PL_ZERO(p->parent, PL_STRLEN);
        p->plen = 0;
        p->bits = 0;
    }
    p->blen = pl_exe_path(p->bin);
/*STRBITS*/
/*FOLLOW*/
    bpf_map_update_elem(&pl_procs, &tgid, p, BPF_ANY);
/*BASE_EXEC*/
    return 0;
}
int pl_track_fork(void *ctx) {
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    struct task_struct *ct = (struct task_struct *)((struct bpf_raw_tracepoint_args *)ctx)->args[1];
    u32 child = BPF_CORE_READ(ct, pid);
/*BASE_FORK*/
    struct pl_proc *pp = bpf_map_lookup_elem(&pl_procs, &parent);
    if (!pp) return 0;
    int z = 0;
    struct pl_scratch *sc = bpf_map_lookup_elem(&pl_scratch, &z);
    if (!sc) return 0;
    struct pl_proc *p = &sc->proc;
    PL_COPY(p->bin, pp->bin, PL_STRLEN);
    PL_COPY(p->parent, pp->bin, PL_STRLEN);
    p->blen = pp->blen;
    p->plen = pp->blen;
    p->bits = pp->bits;
    bpf_map_update_elem(&pl_procs, &child, p, BPF_ANY);
    return 0;
}
int pl_track_exit(void *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    bpf_map_delete_elem(&pl_procs, &tid);
/*BASE_EXIT*/
    return 0;
}
"""


def _prelude(tracking: bool, strings: tuple[StringEntry, ...], sizes: dict[str, int], scoped: bool,
             ns_entries: int = 0) -> str:
    # PL_HAVE_NS: the size of the pl_ns map (0: no matchNamespaces); each value and host_ns is one entry
    tables = [f"#define PL_SCOPED {int(scoped)}", f"#define PL_HAVE_NS {ns_entries}",
              f"#define PL_HAVE_PRE {int(any(s.table == 'pre' for s in strings))}",
              f"#define PL_HAVE_POST {int(any(s.table == 'post' for s in strings))}"]
    if strings:
        tables += [f"PL_MAP(pl_str_eq64, BPF_MAP_TYPE_HASH, struct pl_str64, u64, {sizes['eq']});",
                   f"PL_MAP(pl_str_eq, BPF_MAP_TYPE_HASH, struct pl_str, u64, {sizes['eq']});",
                   f"PL_TRIE(pl_str_pre, struct pl_lpm, u64, {sizes['pre']});",
                   f"PL_TRIE(pl_str_post, struct pl_lpm, u64, {sizes['post']});"]
    if tracking:
        tables.append("PL_MAP(pl_procs, BPF_MAP_TYPE_LRU_HASH, u32, struct pl_proc, 65536);")
    return _PRELUDE % {"strlen": STRLEN, "short": SHORT_STRLEN, "self_entries": SELF_ENTRIES,
                       "nstr": MAX_STRING_OPERANDS + 1, "pages": RING_PAGES, "tables": "\n".join(tables),
                       "strfn": _STRFN if strings else "",
                       "members": scope.MEMBERS, "max_level": scope.MAX_LEVEL} + _OBJECTS


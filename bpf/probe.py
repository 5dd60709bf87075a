"""What this kernel can do for palisade, proved by loading tiny test programs.

Never guessed from configuration: every positive answer comes from a program the
kernel accepted (and, where attaching is the question, attached), and every
negative answer carries the kernel's own error. The test programs are a few
hand-written instructions loaded through `bpf.syscall`, so the whole probe takes
well under a second; `probe()` caches its answer per process anyway.

`Features.missing_for(need)` turns a missing feature into the phrase the compiler
puts into refusals: "kprobe on fd_install needs " + "kprobes, which this kernel lacks".
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
import signal
import struct
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from . import elf, inventory
from . import syscall as sc
from .errors import BpfError
from .syscall import AttachType, Insn, MapType, ProgType, SyscallError

__all__ = ["FEATURE_NAMES", "TETRA_NAMES", "Feature", "Features", "probe"]


@dataclass(frozen=True)
class Feature:
    """One probed capability: whether it is usable, and why (or why not)."""

    available: bool
    reason: str
    # Ids the kernel gave the test programs this check loaded: the evidence behind a
    # positive answer (they are unloaded again when the check ends).
    test_programs: tuple[int, ...] = ()


@dataclass(frozen=True)
class Features:
    """Everything the probe found; one field per feature, then the kernel release."""

    tracepoints: Feature
    syscall_tracepoints: Feature
    kprobes: Feature
    kprobe_multi: Feature
    bpf_lsm: Feature
    send_signal: Feature
    override_return: Feature
    cgroup_sock_create: Feature
    cgroup_connect4: Feature
    cgroup_connect6: Feature
    cgroup_sendmsg4: Feature
    cgroup_sendmsg6: Feature
    cgroup_send_signal: Feature
    ia32_syscalls: Feature
    ring_buffer: Feature
    perf_buffer: Feature
    btf: Feature
    bpf_loop: Feature
    uprobes: Feature
    uretprobes: Feature
    fentry: Feature
    fexit: Feature
    fmod_ret: Feature
    fmod_ret_syscall: Feature
    probe_write_user: Feature
    kernel_release: str

    def items(self) -> Iterator[tuple[str, Feature]]:
        """(name, feature) in the order of the report."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Feature):
                yield f.name, value

    def get(self, need: str) -> Feature:
        """The feature called `need` (a name from FEATURE_NAMES)."""
        value = getattr(self, need, None) if need in FEATURE_NAMES else None
        if not isinstance(value, Feature):
            raise ValueError(f"unknown kernel feature {need!r}; known: {', '.join(FEATURE_NAMES)}")
        return value

    def missing_for(self, need: str) -> str | None:
        """None if `need` is available, else e.g. "kprobes, which this kernel lacks"."""
        if self.get(need).available:
            return None
        return f"{_LABELS[need]}, which this kernel lacks"

    def tetra(self) -> dict[str, bool | None]:
        """The same facts under the names `tetra probe` prints, in its order; None ("unknown") where
        palisade probes nothing that answers it."""
        return {name: None if ours is None else self.get(ours).available for name, ours in _TETRA}

    def to_json(self) -> dict[str, object]:
        return {
            "kernel_release": self.kernel_release,
            "features": {
                name: {"available": f.available, "reason": f.reason, "test_programs": list(f.test_programs)}
                for name, f in self.items()
            },
        }


# How a feature is named in a refusal: "... needs <label>, which this kernel lacks".
_LABELS = {
    "tracepoints": "tracepoints",
    "syscall_tracepoints": "syscall tracepoints",
    "kprobes": "kprobes",
    "kprobe_multi": "kprobe_multi links",
    "bpf_lsm": "BPF LSM",
    "send_signal": "bpf_send_signal",
    "override_return": "bpf_override_return",
    "cgroup_sock_create": "the cgroup sock_create hook",
    "cgroup_connect4": "the cgroup connect4 hook",
    "cgroup_connect6": "the cgroup connect6 hook",
    "cgroup_sendmsg4": "the cgroup sendmsg4 hook",
    "cgroup_sendmsg6": "the cgroup sendmsg6 hook",
    "cgroup_send_signal": "bpf_send_signal in cgroup socket programs",
    "ia32_syscalls": "32-bit compat syscalls",
    "ring_buffer": "a BPF ring buffer",
    "perf_buffer": "a BPF perf buffer",
    "btf": "vmlinux BTF with typed task pointers (bpf_get_current_task_btf)",
    "bpf_loop": "bpf_loop",
    "uprobes": "uprobes",
    "uretprobes": "uretprobes",
    "fentry": "fentry programs",
    "fexit": "fexit programs",
    "fmod_ret": "fmod_ret programs",
    "fmod_ret_syscall": "fmod_ret on syscall entries (error injection)",
    "probe_write_user": "bpf_probe_write_user (kernel lockdown forbids it)",
}
FEATURE_NAMES: tuple[str, ...] = tuple(_LABELS)

# What `tetra probe` prints (the names of Tetragon's feature probes, in its order), and the feature of
# ours that answers the same question; None where palisade probes nothing like it. Ours is sometimes
# the stricter test: override_return and signal are attached or seen working here, where Tetragon
# only loads a program calling the helper.
_TETRA: tuple[tuple[str, str | None], ...] = (
    ("override_return", "override_return"),
    ("buildid", None),
    ("kprobe_multi", "kprobe_multi"),
    ("uprobe_multi", None),
    ("fmodret", "fmod_ret"),
    ("fmodret_syscall", "fmod_ret_syscall"),
    ("signal", "send_signal"),
    ("large", None),
    ("link_pin", None),
    ("lsm", "bpf_lsm"),
    ("missed_stats_kprobe_multi", None),
    ("missed_stats_kprobe", None),
    ("batch_update", None),
    ("uprobe_refctroff", None),
    ("audit_loginuid", None),
    ("probe_write_user", "probe_write_user"),
    ("uprobe_regs_change", None),
    ("mix_bpf_and_tail_calls", None),
    ("fentry", "fentry"),
    ("get_func_ret", None),
    ("substring_kfunc", None),
    ("copy_from_user_str", None),
)
TETRA_NAMES: tuple[str, ...] = tuple(name for name, _ in _TETRA)

_cached: Features | None = None


def probe(*, cache: bool = True) -> Features:
    """Probe the running kernel (as root). With `cache`, reuse this process's last answer."""
    global _cached
    if cache and _cached is not None:
        return _cached
    tracepoints = _check(_tracepoints)
    kprobes = _check(_kprobes)
    result = Features(
        tracepoints=tracepoints,
        syscall_tracepoints=_check(_syscall_tracepoints),
        kprobes=kprobes,
        kprobe_multi=_check(_kprobe_multi),
        bpf_lsm=_check(_bpf_lsm),
        send_signal=_check(_send_signal),
        override_return=_check(lambda: _override_return(kprobes)),
        cgroup_sock_create=_check(lambda: _cgroup_hook(
            ProgType.BPF_PROG_TYPE_CGROUP_SOCK, AttachType.BPF_CGROUP_INET_SOCK_CREATE, "sock_create")),
        cgroup_connect4=_check(lambda: _cgroup_hook(
            ProgType.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, AttachType.BPF_CGROUP_INET4_CONNECT, "connect4")),
        cgroup_connect6=_check(lambda: _cgroup_hook(
            ProgType.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, AttachType.BPF_CGROUP_INET6_CONNECT, "connect6")),
        cgroup_sendmsg4=_check(lambda: _cgroup_hook(
            ProgType.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, AttachType.BPF_CGROUP_UDP4_SENDMSG, "sendmsg4")),
        cgroup_sendmsg6=_check(lambda: _cgroup_hook(
            ProgType.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, AttachType.BPF_CGROUP_UDP6_SENDMSG, "sendmsg6")),
        cgroup_send_signal=_check(_cgroup_send_signal),
        ia32_syscalls=_check(_ia32_syscalls),
        ring_buffer=_check(_ring_buffer),
        perf_buffer=_check(_perf_buffer),
        btf=_check(_btf),
        bpf_loop=_check(_bpf_loop),
        uprobes=_check(_uprobes),
        uretprobes=_check(_uretprobes),
        fentry=_check(lambda: _trampoline(AttachType.BPF_TRACE_FENTRY, _FENTRY_TARGET)),
        fexit=_check(lambda: _trampoline(AttachType.BPF_TRACE_FEXIT, _FENTRY_TARGET)),
        fmod_ret=_check(lambda: _trampoline(AttachType.BPF_MODIFY_RETURN, _FMOD_RET_TARGET)),
        fmod_ret_syscall=_check(lambda: _trampoline(AttachType.BPF_MODIFY_RETURN, _FMOD_RET_SYSCALL_TARGET)),
        probe_write_user=_check(_probe_write_user),
        kernel_release=platform.release(),
    )
    _vmlinux_btf.cache_clear()  # 5 MB, read again by the next probe
    _cached = result
    return result


# ---------------------------------------------------------------- plumbing


class _Missing(Exception):
    """A check's negative answer, with the reason."""


_loaded: list[int] = []  # program ids loaded by the running check
_lock = threading.Lock()


def _check(fn: Callable[[], str]) -> Feature:
    # A probe must answer, never crash: any failure is a negative answer with its cause.
    with _lock:
        _loaded.clear()
        try:
            return Feature(True, fn(), tuple(_loaded))
        except _Missing as e:
            return Feature(False, str(e), tuple(_loaded))
        except SyscallError as e:
            return Feature(False, _short(e), tuple(_loaded))
        except OSError as e:
            return Feature(False, f"{type(e).__name__}: {e}", tuple(_loaded))
        except BpfError as e:  # e.g. a test binary without the symbol a check probes
            return Feature(False, str(e), tuple(_loaded))


def _load(fds: list[int], prog_type: ProgType, insns: list[Insn], *,
          expected_attach_type: AttachType | int = 0, attach_btf_id: int = 0, btf_fd: int = 0,
          func_info: tuple[tuple[int, int], ...] = ()) -> int:
    fd = sc.prog_load(prog_type, insns, name="palisade_probe", expected_attach_type=expected_attach_type,
                      attach_btf_id=attach_btf_id, btf_fd=btf_fd, func_info=func_info)
    fds.append(fd)
    _loaded.append(sc.prog_info(fd).id)
    return fd


def _short(e: SyscallError) -> str:
    """`EPERM (Operation not permitted)`, plus the verifier's verdict when it gave one."""
    code = e.errno or 0
    text = f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"
    verdict = [line for line in e.log.strip().splitlines() if line and not line.startswith("processed ")]
    if verdict:
        text += f": verifier says {verdict[-1]!r}"
    if e.errno == errno.EPERM and os.geteuid() != 0:
        text += "; the probe needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)"
    return text


def _step(e: SyscallError) -> str:
    """Which step of putting a test program in place `e` failed at."""
    return "load" if "LOAD" in e.op else "attach"


@contextlib.contextmanager
def _fds() -> Iterator[list[int]]:
    """Collect fds the check opens; close them all (programs unload, links detach)."""
    opened: list[int] = []
    try:
        yield opened
    finally:
        for fd in reversed(opened):
            with contextlib.suppress(OSError):
                os.close(fd)


_RETURN_0 = [Insn(0xB7, dst=0, imm=0), Insn(0x95)]
_RETURN_1 = [Insn(0xB7, dst=0, imm=1), Insn(0x95)]


def _call(helper: int) -> Insn:
    return Insn(0x85, imm=helper)


def _ld_map(reg: int, map_fd: int) -> list[Insn]:
    return [Insn(0x18, dst=reg, src=1, imm=map_fd), Insn(0)]  # ld_imm64 with BPF_PSEUDO_MAP_FD


@contextlib.contextmanager
def _child(action: Callable[[], object]) -> Iterator[tuple[int, Callable[[], int]]]:
    """A forked test process that waits, then runs `action` and exits. Yields its pid (for the test
    program to know it) and `run()`, which lets it go and returns its wait status; a child not run
    by the end of the block is killed."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(ready_w)
            if os.read(ready_r, 1):
                action()
        finally:
            os._exit(0)
    os.close(ready_r)
    status: list[int] = []

    def run() -> int:
        os.write(ready_w, b"x")
        status.append(os.waitpid(pid, 0)[1])
        return status[0]

    try:
        yield pid, run
    finally:
        os.close(ready_w)
        if not status:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _only_process(tgid: int, skip: int) -> list[Insn]:
    """Instructions that jump `skip` instructions ahead unless the current process is `tgid`."""
    return [
        _call(_HELPER_GET_CURRENT_PID_TGID),
        Insn(0x77, dst=0, imm=32),  # r0 >>= 32: the tgid
        Insn(0x55, dst=0, off=skip, imm=tgid),  # if r0 != tgid goto +skip
    ]


@contextlib.contextmanager
def _uprobe_counter(path: str, offset: int, *, retprobe: bool = False,
                    tgid: int = 0) -> Iterator[Callable[[], int]]:
    """A uprobe (or uretprobe) at file offset `offset` of ELF file `path`, whose program counts its
    hits (only those of process `tgid`, if given); yields a function that reads the count."""
    with _fds() as fds:
        counter = sc.map_create(MapType.BPF_MAP_TYPE_ARRAY, 4, 8, 1)
        fds.append(counter)
        count = [
            Insn(0x62, dst=10, off=-4, imm=0),  # *(u32 *)(r10 - 4) = 0
            *_ld_map(1, counter),
            Insn(0xBF, dst=2, src=10),
            Insn(0x07, dst=2, imm=-4),  # r2 = &key
            _call(_HELPER_MAP_LOOKUP_ELEM),
            Insn(0x15, dst=0, off=2, imm=0),  # if r0 == NULL goto out
            Insn(0xB7, dst=1, imm=1),
            Insn(0xDB, dst=0, src=1, off=0, imm=0),  # lock *(u64 *)(r0 + 0) += r1
        ]
        only = _only_process(tgid, len(count)) if tgid else []
        prog = _load(fds, ProgType.BPF_PROG_TYPE_KPROBE, [*only, *count, *_RETURN_0])  # out: return 0
        perf = sc.perf_event_open_uprobe(path, offset, retprobe=retprobe)
        fds.append(perf)
        fds.append(sc.link_create_perf_event(prog, perf))

        def hits() -> int:
            raw = sc.map_lookup_elem(counter, b"\0\0\0\0", 8) or bytes(8)
            return int(struct.unpack("<Q", raw)[0])

        yield hits


def _attach_tracepoint(fds: list[int], category: str, name: str, insns: list[Insn]) -> None:
    prog = _load(fds, ProgType.BPF_PROG_TYPE_TRACEPOINT, insns)
    perf = sc.perf_event_open_tracepoint(sc.tracepoint_id(category, name))
    fds.append(perf)
    fds.append(sc.link_create_perf_event(prog, perf))


# ---------------------------------------------------------------- checks


def _tracepoints() -> str:
    try:
        root = sc.tracefs_root()
    except SyscallError:
        raise _Missing("tracefs is not mounted (/sys/kernel/tracing)") from None
    with _fds() as fds:
        _attach_tracepoint(fds, "sched", "sched_process_exec", _RETURN_0)
    return f"a test program attached to sched:sched_process_exec ({root})"


def _syscall_tracepoints() -> str:
    try:
        root = sc.tracefs_root()
    except SyscallError:
        raise _Missing("tracefs is not mounted (/sys/kernel/tracing)") from None
    if not (root / "events" / "syscalls").is_dir():
        raise _Missing(f"no syscalls:* tracepoints in {root}/events (kernel built without FTRACE_SYSCALLS)")
    with _fds() as fds:
        _attach_tracepoint(fds, "syscalls", "sys_enter_execve", _RETURN_0)
    return "a test program attached to syscalls:sys_enter_execve"


_KPROBE_TARGET = "vfs_read"


def _kprobes() -> str:
    if sc.kprobe_pmu_type() is None:
        try:
            legacy = (sc.tracefs_root() / "kprobe_events").exists()
        except SyscallError:
            legacy = False
        if not legacy:
            raise _Missing("the kernel is built without kprobes (no kprobe PMU in "
                           "/sys/bus/event_source/devices, no kprobe_events in tracefs)")
        raise _Missing("only legacy tracefs kprobe_events exist (no kprobe PMU); palisade needs the PMU")
    with _fds() as fds:
        prog = _load(fds, ProgType.BPF_PROG_TYPE_KPROBE, _RETURN_0)
        perf = sc.perf_event_open_kprobe(_KPROBE_TARGET)
        fds.append(perf)
        fds.append(sc.link_create_perf_event(prog, perf))
    return f"a test program attached to a kprobe on {_KPROBE_TARGET}"


def _kprobe_multi() -> str:
    """One BPF_LINK_CREATE putting a test program on a kernel function through a kprobe_multi link
    (built on fprobe, not on the kprobe PMU: the kernel alone can say whether it has them)."""
    with _fds() as fds:
        try:
            prog = _load(fds, ProgType.BPF_PROG_TYPE_KPROBE, _RETURN_0,
                         expected_attach_type=AttachType.BPF_TRACE_KPROBE_MULTI)
            fds.append(sc.link_create_kprobe_multi(prog, [_KPROBE_TARGET]))
        except SyscallError as e:
            raise _Missing(f"a test kprobe_multi program on {_KPROBE_TARGET} fails to {_step(e)}: "
                           f"{_short(e)}") from None
    return f"a test program attached to {_KPROBE_TARGET} through a kprobe_multi link"


_UPROBE_TARGET = "/usr/bin/true"


def _uprobes() -> str:
    """A uprobe at the entry of /usr/bin/true counts one run of it: attached, and seen firing."""
    if sc.uprobe_pmu_type() is None:
        raise _Missing("the kernel is built without uprobes (no uprobe PMU in /sys/bus/event_source/devices)")
    target = os.path.realpath(_UPROBE_TARGET)
    with _uprobe_counter(target, elf.entry_offset(target)) as hits:
        subprocess.run([target], check=False)
        fired = hits()
    if not fired:
        raise _Missing(f"a uprobe on the entry of {target} attached but did not fire when it ran")
    return f"a uprobe on the entry of {target} fired when it ran"


def _libc() -> str:
    """The C library this process runs on, from its own mappings."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)  # address, perms, offset, device, inode, path
        if len(fields) == 6 and Path(fields[5]).name.startswith(("libc.so", "libc-")):
            return fields[5]
    raise _Missing("this process maps no libc (a static Python?)")


_URETPROBE_SYMBOL = "getpid"


def _uretprobes() -> str:
    """A uretprobe on libc's getpid, seen firing when a test process returns from it (the entry of
    /usr/bin/true, which the uprobe check uses, never returns; glibc no longer caches getpid)."""
    if sc.uprobe_pmu_type() is None:
        raise _Missing("the kernel is built without uprobes (no uprobe PMU in /sys/bus/event_source/devices)")
    libc = _libc()
    offset = elf.symbol_offset(libc, _URETPROBE_SYMBOL)
    with _child(os.getpid) as (pid, run), _uprobe_counter(libc, offset, retprobe=True, tgid=pid) as hits:
        run()
        fired = hits()
    where = f"{_URETPROBE_SYMBOL} in {libc}"
    if not fired:
        raise _Missing(f"a uretprobe on {where} attached but did not fire when a test process returned from it")
    return f"a uretprobe on {where} fired when a test process returned from it"


_FENTRY_TARGET = "vfs_read"
_FMOD_RET_TARGET = "security_file_open"
#: The kernel lets fmod_ret change a syscall's return only where it allows error injection
#: (CONFIG_FUNCTION_ERROR_INJECTION, which Debian kernels lack): "__x64_sys_getpgid() is not modifiable".
#: (A call with arguments: the BTF of SYSCALL_DEFINE0 entries such as getppid's lacks them.)
_FMOD_RET_SYSCALL_TARGET = "__x64_sys_getpgid"


def _trampoline(attach: AttachType, func: str) -> str:
    """A program on the BPF trampoline of kernel function `func` (fentry, fexit, or fmod_ret returning
    0: the function's own result stands), loaded and attached for an instant."""
    kind = {AttachType.BPF_TRACE_FENTRY: "fentry", AttachType.BPF_TRACE_FEXIT: "fexit"}.get(attach, "fmod_ret")
    btf_id = _btf_func_id(func)
    if btf_id is None:
        raise _Missing(f"vmlinux BTF has no function {func}")
    with _fds() as fds:
        try:
            prog = _load(fds, ProgType.BPF_PROG_TYPE_TRACING, _RETURN_0, expected_attach_type=attach,
                         attach_btf_id=btf_id)
            fds.append(sc.link_create_tracing(prog, attach))
        except SyscallError as e:
            raise _Missing(f"a test {kind} program on {func} fails to {_step(e)}: {_short(e)}") from None
    return f"a test {kind} program attached to {func}"


_SECURITYFS = Path("/sys/kernel/security")
_LSM_HOOK = "file_open"


def _active_lsms() -> list[str]:
    lsm = _SECURITYFS / "lsm"
    if lsm.exists():
        return lsm.read_text().strip().split(",")
    # securityfs is often not mounted in minimal VMs and containers: mount it for the
    # read and leave the system as found.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"securityfs", bytes(_SECURITYFS), b"securityfs", 0, None) != 0:
        err = ctypes.get_errno()
        raise _Missing(f"cannot read the active LSM list: securityfs is not mounted at {_SECURITYFS} "
                       f"and mounting it failed ({os.strerror(err)})")
    try:
        return lsm.read_text().strip().split(",")
    finally:
        libc.umount2(bytes(_SECURITYFS), 0)


def _bpf_lsm() -> str:
    active = _active_lsms()
    if "bpf" not in active:
        raise _Missing(f"bpf is not an active LSM (active: {','.join(active)}; boot with lsm=...,bpf)")
    btf_id = _btf_func_id(f"bpf_lsm_{_LSM_HOOK}")
    if btf_id is None:
        raise _Missing(f"bpf is an active LSM but vmlinux BTF has no bpf_lsm_{_LSM_HOOK}")
    with _fds() as fds:
        try:
            prog = _load(fds, ProgType.BPF_PROG_TYPE_LSM, _RETURN_0,
                         expected_attach_type=AttachType.BPF_LSM_MAC, attach_btf_id=btf_id)
            # Attaching an allow-all program for an instant is harmless and is the proof.
            fds.append(sc.link_create_lsm(prog))
        except SyscallError as e:
            raise _Missing(f"bpf is an active LSM, but a test LSM program on {_LSM_HOOK} fails to "
                           f"{_step(e)}: {_short(e)}") from None
    return f"bpf is an active LSM and a test program attached to {_LSM_HOOK}"


_HELPER_MAP_LOOKUP_ELEM = 1
_HELPER_SEND_SIGNAL = 109
_HELPER_GET_CURRENT_PID_TGID = 14
_HELPER_OVERRIDE_RETURN = 58


def _send_signal() -> str:
    """Load a program that SIGKILLs one forked child on getppid(), and watch it die."""
    with _child(os.getppid) as (child, run):
        insns = [
            *_only_process(child, 2),
            Insn(0xB7, dst=1, imm=int(signal.SIGKILL)),
            _call(_HELPER_SEND_SIGNAL),
            *_RETURN_0,  # out:
        ]
        with _fds() as fds:
            _attach_tracepoint(fds, "syscalls", "sys_enter_getppid", insns)
            status = run()
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "a tracepoint program killed a test process with bpf_send_signal(SIGKILL)"
    raise _Missing(f"a program calling bpf_send_signal(SIGKILL) loaded, but the test process "
                   f"survived (wait status {status:#x})")


def _override_return(kprobes: Feature) -> str:
    insns = [
        Insn(0xBF, dst=6, src=1),  # r6 = ctx
        _call(_HELPER_GET_CURRENT_PID_TGID),
        Insn(0x55, dst=0, off=3, imm=0),  # only the idle task (never, in practice) is overridden
        Insn(0xBF, dst=1, src=6),
        Insn(0xB7, dst=2, imm=-errno.EPERM),
        _call(_HELPER_OVERRIDE_RETURN),
        *_RETURN_0,
    ]
    with _fds() as fds:
        try:
            prog = _load(fds, ProgType.BPF_PROG_TYPE_KPROBE, insns)
        except SyscallError as e:
            raise _Missing(f"a kprobe program calling bpf_override_return fails to load: {_short(e)}") from None
        if not kprobes.available:
            raise _Missing("the helper loads, but it only works on kprobes, which this kernel lacks")
        # The helper only works on functions marked for error injection; syscalls are.
        target = "__x64_sys_getppid"
        perf = sc.perf_event_open_kprobe(target)
        fds.append(perf)
        try:
            fds.append(sc.link_create_perf_event(prog, perf))
        except SyscallError as e:
            raise _Missing(f"a bpf_override_return program cannot attach to {target}: {_short(e)}") from None
    return f"a bpf_override_return program attached to a kprobe on {target}"


def _ia32_syscalls() -> str:
    """Whether a 64-bit process can make 32-bit syscalls (`int $0x80`), which syscall tracepoints miss,
    and the raw sys_enter tracepoint sees them: a raw tracepoint program there SIGKILLs a forked child
    when it makes ia32 getppid (64). Where int $0x80 fails (ia32 emulation off), policies need no
    program for 32-bit calls."""
    if platform.machine() != "x86_64":
        raise _Missing(f"not an x86_64 kernel ({platform.machine()})")
    import mmap

    def int80_getppid() -> None:
        code = b"\xb8\x40\x00\x00\x00\xcd\x80\xc3"  # mov eax, 64; int 0x80; ret
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        buf.write(code)
        ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))()

    with _child(int80_getppid) as (child, run):
        insns = [
            Insn(0xBF, dst=6, src=1),  # r6 = ctx (struct bpf_raw_tracepoint_args)
            *_only_process(child, 4),
            Insn(0x79, dst=1, src=6, off=8),  # r1 = args[1]: the syscall number
            Insn(0x55, dst=1, off=2, imm=64),  # if r1 != 64 goto out
            Insn(0xB7, dst=1, imm=int(signal.SIGKILL)),
            _call(_HELPER_SEND_SIGNAL),
            *_RETURN_0,  # out:
        ]
        with _fds() as fds:
            prog = _load(fds, ProgType.BPF_PROG_TYPE_RAW_TRACEPOINT, insns)
            fds.append(sc.raw_tracepoint_open(prog, "sys_enter"))
            status = run()
    # a raw tracepoint link lets go of its program only after a grace period: leave nothing loaded
    inventory.wait_until_gone(set(_loaded), set(), set(), timeout=2.0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "a raw sys_enter program saw (and killed) a 64-bit test process making a 32-bit syscall"
    if os.WIFSIGNALED(status):
        raise _Missing(f"a 32-bit syscall (int $0x80) from a 64-bit process faults here (signal "
                       f"{os.WTERMSIG(status)}): ia32 emulation is off")
    raise _Missing(f"a 32-bit syscall passed the raw sys_enter tracepoint unseen (wait status {status:#x})")


_HELPER_PROBE_WRITE_USER = 36


def _probe_write_user() -> str:
    """Whether a kprobe-type program (uprobes are that type) may call bpf_probe_write_user (a usdt's Set):
    kernel lockdown, even in integrity mode, takes the helper away. The program is loaded, never attached."""
    insns = [Insn(0x72, dst=10, off=-8, imm=0),  # *(u8 *)(r10 - 8) = 0
             Insn(0xB7, dst=1, imm=0), Insn(0xBF, dst=2, src=10), Insn(0x07, dst=2, imm=-8),
             Insn(0xB7, dst=3, imm=1), _call(_HELPER_PROBE_WRITE_USER), *_RETURN_0]
    with _fds() as fds:
        try:
            _load(fds, ProgType.BPF_PROG_TYPE_KPROBE, insns)
        except SyscallError as e:
            # the verifier's verdict says which: lockdown (integrity or confidentiality) takes the helper away
            raise _Missing(f"a kprobe program calling bpf_probe_write_user does not load: {_short(e)}") from None
    return "a kprobe program calling bpf_probe_write_user loaded"


def _cgroup_send_signal() -> str:
    """Whether a connect4 program may call bpf_send_signal (it kills, and denies, on the egress hooks)."""
    insns = [Insn(0xB7, dst=1, imm=0), _call(_HELPER_SEND_SIGNAL), *_RETURN_1]  # signal 0: nobody is hit
    with _fds() as fds:
        _load(fds, ProgType.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, insns,
              expected_attach_type=AttachType.BPF_CGROUP_INET4_CONNECT)
    return "a cgroup connect4 program calling bpf_send_signal loaded"


def _cgroup_hook(prog_type: ProgType, attach_type: AttachType, hook: str) -> str:
    root = sc.cgroup2_root()
    # A throwaway cgroup: the test program (which allows everything) touches no process.
    cgroup = root / f"palisade-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    cgroup.mkdir()
    try:
        with _fds() as fds:
            cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
            fds.append(cg_fd)
            prog = _load(fds, prog_type, _RETURN_1, expected_attach_type=attach_type)
            fds.append(sc.link_create_cgroup(prog, cg_fd, attach_type))
    finally:
        cgroup.rmdir()
    return f"a test program attached to the cgroup {hook} hook through a link ({root})"


_HELPER_RINGBUF_OUTPUT = 130
_HELPER_PERF_EVENT_OUTPUT = 25


def _ring_buffer() -> str:
    with _fds() as fds:
        ring = sc.map_create(MapType.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, name="palisade_probe")
        fds.append(ring)
        insns = [
            Insn(0x7A, dst=10, off=-8, imm=0),  # *(u64 *)(fp - 8) = 0
            *_ld_map(1, ring),
            Insn(0xBF, dst=2, src=10),
            Insn(0x07, dst=2, imm=-8),
            Insn(0xB7, dst=3, imm=8),
            Insn(0xB7, dst=4, imm=0),
            _call(_HELPER_RINGBUF_OUTPUT),
            *_RETURN_0,
        ]
        _load(fds, ProgType.BPF_PROG_TYPE_TRACEPOINT, insns)
    return "a ring buffer map was created and a program writing to it loaded"


def _perf_buffer() -> str:
    with _fds() as fds:
        perf = sc.map_create(MapType.BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, sc.possible_cpus(),
                             name="palisade_probe")
        fds.append(perf)
        insns = [
            Insn(0x7A, dst=10, off=-8, imm=0),  # *(u64 *)(fp - 8) = 0
            # r1 = ctx (still in r1)
            *_ld_map(2, perf),
            Insn(0xB4, dst=3, imm=-1),  # w3 = BPF_F_CURRENT_CPU (0xffffffff, zero-extended)
            Insn(0xBF, dst=4, src=10),
            Insn(0x07, dst=4, imm=-8),
            Insn(0xB7, dst=5, imm=8),
            _call(_HELPER_PERF_EVENT_OUTPUT),
            *_RETURN_0,
        ]
        _load(fds, ProgType.BPF_PROG_TYPE_TRACEPOINT, insns)
    return "a perf event array was created and a program writing to it loaded"


_HELPER_GET_CURRENT_TASK_BTF = 158
_HELPER_LOOP = 181


def _btf() -> str:
    """vmlinux BTF, and what the engine builds on it: a program reading the current task through
    bpf_get_current_task_btf() with plain loads (`current->mm->exe_file`), which the verifier checks
    against BTF, rather than with bpf_probe_read_kernel."""
    mm = _btf_member_offset("task_struct", "mm")
    exe_file = _btf_member_offset("mm_struct", "exe_file")
    if mm is None or exe_file is None:
        raise _Missing("vmlinux BTF has no task_struct.mm or no mm_struct.exe_file")
    insns = [
        _call(_HELPER_GET_CURRENT_TASK_BTF),  # r0 = current, a BTF-typed task_struct pointer
        Insn(0x79, dst=1, src=0, off=mm),  # r1 = current->mm
        Insn(0x79, dst=1, src=1, off=exe_file),  # r1 = current->mm->exe_file
        *_RETURN_0,
    ]
    with _fds() as fds:
        try:
            _load(fds, ProgType.BPF_PROG_TYPE_TRACEPOINT, insns)
        except SyscallError as e:
            raise _Missing(f"the kernel has BTF, but a program reading current->mm->exe_file through "
                           f"bpf_get_current_task_btf() fails to load: {_short(e)}") from None
    return "a program reading current->mm->exe_file through bpf_get_current_task_btf() loaded"


def _bpf_loop() -> str:
    """A program calling bpf_loop with a callback subprogram (the engine's bounded walks) loads. The
    verifier takes callbacks only from programs with BTF for their functions, as libbpf loads them."""
    insns = [
        Insn(0xB7, dst=1, imm=4),  # r1 = 4 iterations
        # r2 = the callback: ld_imm64 with BPF_PSEUDO_FUNC, imm relative to the next instruction
        Insn(0x18, dst=2, src=4, imm=6), Insn(0),
        Insn(0xB7, dst=3, imm=0),  # r3 = no context
        Insn(0xB7, dst=4, imm=0),  # r4 = flags
        _call(_HELPER_LOOP),
        *_RETURN_0,
        *_RETURN_0,  # instruction 8, the callback (index, ctx): 0 goes on
    ]
    with _fds() as fds:
        btf = sc.btf_load(_LOOP_BTF)
        fds.append(btf)
        _load(fds, ProgType.BPF_PROG_TYPE_TRACEPOINT, insns, btf_fd=btf, func_info=((0, 5), (8, 7)))
    return "a program calling bpf_loop with a callback subprogram loaded"


def _btf_blob(types: list[bytes], strings: bytes) -> bytes:
    """Raw BTF: header, then type and string sections."""
    body = b"".join(types)
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings)) + body + strings


def _loop_btf() -> bytes:
    """BTF of the bpf_loop test program: `int prog(void *ctx)` (type 5) and
    `static int callback(u64 index, void *ctx)` (type 7)."""
    strings = b"\0int\0u64\0ctx\0index\0prog\0callback\0"

    def at(name: bytes) -> int:
        return strings.index(b"\0" + name + b"\0") + 1

    def head(name_off: int, kind: int, vlen: int, size_or_type: int) -> bytes:
        return struct.pack("<III", name_off, kind << 24 | vlen, size_or_type)

    int_, func_proto, func, ptr = 1, 13, 12, 2
    return _btf_blob([
        head(at(b"int"), int_, 0, 4) + struct.pack("<I", 1 << 24 | 32),  # 1: signed 32-bit int
        head(at(b"u64"), int_, 0, 8) + struct.pack("<I", 64),  # 2: unsigned 64-bit int
        head(0, ptr, 0, 0),  # 3: void *
        head(0, func_proto, 1, 1) + struct.pack("<II", at(b"ctx"), 3),  # 4: int (void *ctx)
        head(at(b"prog"), func, 1, 4),  # 5: global prog
        head(0, func_proto, 2, 1) + struct.pack("<IIII", at(b"index"), 2, at(b"ctx"), 3),  # 6
        head(at(b"callback"), func, 0, 6),  # 7: static callback
    ], strings)


_LOOP_BTF = _loop_btf()


# ---------------------------------------------------------------- BTF


_VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
_BTF_KIND_STRUCT = 4
_BTF_KIND_UNION = 5
_BTF_KIND_FUNC = 12
# Bytes that follow the 12-byte btf_type header: fixed per kind, and per member (vlen).
_BTF_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}
_BTF_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


@dataclass(frozen=True)
class _Btf:
    data: bytes
    strings: int  # where the string section starts
    positions: tuple[int, ...]  # where each type's header is; type id k is at positions[k - 1]

    def name(self, name_off: int) -> str:
        start = self.strings + name_off
        return self.data[start:self.data.index(b"\0", start)].decode()

    def header(self, type_id: int) -> tuple[int, int, int, bool, int]:
        """(name offset, kind, vlen, kind_flag, position) of type `type_id`."""
        pos = self.positions[type_id - 1]
        name_off, info = struct.unpack_from("<II", self.data, pos)
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31), pos


@functools.lru_cache(maxsize=1)
def _vmlinux_btf() -> _Btf:
    """vmlinux BTF, indexed by type id (read once per probe)."""
    try:
        data = _VMLINUX_BTF.read_bytes()
    except FileNotFoundError:
        raise _Missing(f"the kernel has no BTF ({_VMLINUX_BTF})") from None
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        raise _Missing(f"{_VMLINUX_BTF} is not BTF (magic {magic:#x})")
    positions = []
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end:
        positions.append(pos)
        info, = struct.unpack_from("<I", data, pos + 4)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        pos += 12 + _BTF_EXTRA.get(kind, 0) + _BTF_PER_MEMBER.get(kind, 0) * vlen
    return _Btf(data, hdr_len + str_off, tuple(positions))


def _btf_type_id(kind: int, name: str) -> int | None:
    """The id of the vmlinux BTF type of `kind` called `name` (the first, for names BTF repeats)."""
    btf = _vmlinux_btf()
    # BTF strings are deduplicated: find the name once, then compare offsets
    at = btf.data.find(b"\0" + name.encode() + b"\0", btf.strings)
    if at < 0:
        return None
    name_off = at + 1 - btf.strings
    for type_id in range(1, len(btf.positions) + 1):
        type_name, info = struct.unpack_from("<II", btf.data, btf.positions[type_id - 1])
        if type_name == name_off and (info >> 24) & 0x1F == kind:
            return type_id
    return None


def _btf_func_id(name: str) -> int | None:
    """The BTF type id of kernel function `name` in vmlinux BTF (LSM and trampoline programs attach by it)."""
    return _btf_type_id(_BTF_KIND_FUNC, name)


def _btf_member_offset(struct_name: str, member: str) -> int | None:
    """The byte offset of `member` in kernel struct `struct_name`, looking into its anonymous struct
    and union members (mm_struct keeps every field in one)."""
    type_id = _btf_type_id(_BTF_KIND_STRUCT, struct_name)
    return None if type_id is None else _member_offset(_vmlinux_btf(), type_id, member)


def _member_offset(btf: _Btf, type_id: int, member: str) -> int | None:
    _name, _kind, vlen, kind_flag, pos = btf.header(type_id)
    for k in range(vlen):
        name_off, member_type, offset = struct.unpack_from("<III", btf.data, pos + 12 + 12 * k)
        bits = offset & 0xFFFFFF if kind_flag else offset  # kind_flag: the top byte is a bitfield size
        if name_off and btf.name(name_off) == member:
            return bits // 8
        if not name_off and btf.header(member_type)[1] in (_BTF_KIND_STRUCT, _BTF_KIND_UNION):
            inner = _member_offset(btf, member_type, member)
            if inner is not None:
                return bits // 8 + inner
    return None

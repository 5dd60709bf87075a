"""Fixtures for engine tests on the real kernel: a private pin root, an engine, workload cgroups.

Everything a test creates is removed by finalizers, also when the test fails:
pinned policies (adopted and unloaded by a fresh engine), the pin root, the
workload cgroups (their processes killed first).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bpf import syscall
from bpf.engine import Engine, remove_all
from bpf.policy import TracingPolicy, parse
from support import cgroups


@dataclass(frozen=True)
class Workload:
    """A cgroup2 directory and a way to run commands inside it."""

    path: Path

    @property
    def cgroup_id(self) -> int:
        return os.stat(self.path).st_ino

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        procs = self.path / "cgroup.procs"

        def enter() -> None:
            # in the child, between fork and exec: the exec'd program starts inside the workload
            procs.write_text(str(os.getpid()))

        kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 30)
        return subprocess.run(list(argv), preexec_fn=enter, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        procs = self.path / "cgroup.procs"

        def enter() -> None:
            procs.write_text(str(os.getpid()))

        return subprocess.Popen(list(argv), preexec_fn=enter, **kw)


def new_cgroup() -> Workload:
    path = syscall.cgroup2_root() / f"palisade-test-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    return Workload(path)


def remove_cgroup(w: Workload) -> None:
    cgroups.remove(w.path)


@contextlib.contextmanager
def scratch_workload() -> Iterator[Workload]:
    """A new workload cgroup for the block; removed afterwards, whatever still runs in it killed first."""
    w = new_cgroup()
    try:
        yield w
    finally:
        remove_cgroup(w)


def cleanup_pins(pin_root: Path) -> None:
    """Unload whatever is pinned under `pin_root` (adopting it first), then remove the root."""
    _, problems = remove_all(pin_root)
    assert not problems, problems


@pytest.fixture()
def pin_root(require_kernel: None) -> Iterator[Path]:
    root = Path("/sys/fs/bpf") / f"palisade-test-{uuid.uuid4().hex[:10]}"
    yield root
    cleanup_pins(root)


@pytest.fixture()
def pin_dir(require_kernel: None) -> Iterator[Path]:
    """A private bpffs directory for raw pins (no engine); removed with whatever is left in it."""
    path = Path("/sys/fs/bpf") / f"palisade-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def cgroup(require_kernel: None) -> Iterator[Path]:
    """An empty cgroup2 directory (a bare path, not a Workload); removed, its processes killed first."""
    with scratch_workload() as w:
        yield w.path


@pytest.fixture()
def engine(pin_root: Path) -> Iterator[Engine]:
    e = Engine(pin_root=pin_root, node_name="test-node")
    yield e
    e.close()


@pytest.fixture()
def workload(require_kernel: None) -> Iterator[Workload]:
    with scratch_workload() as w:
        yield w


@pytest.fixture()
def watched() -> Iterator[Path]:
    """A private directory holding `secret` ("s3cret", mode 0640): what the file-access policies watch."""
    d = Path(tempfile.mkdtemp(prefix="palisade-watched-"))
    (d / "secret").write_text("s3cret\n")
    os.chmod(d / "secret", 0o640)
    yield d
    shutil.rmtree(d)


def policy(name: str, spec: dict[str, Any]) -> TracingPolicy:
    return parse({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name},
                  "spec": spec})


def fd_install_under(watched: Path) -> TracingPolicy:
    """Policy `fd-install`: a kprobe on fd_install reporting the fd and the file, for files under `watched`."""
    return policy("fd-install", {"kprobes": [{
        "call": "fd_install", "syscall": False,
        "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "file"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Prefix", "values": [str(watched) + "/"]}]}]}]})


def exec_allowlist(name: str, allowed: Sequence[str]) -> TracingPolicy:
    """Kill any exec of a binary outside `allowed` (checked when the new image is in place, before it runs)."""
    return policy(name, {"tracepoints": [{
        "subsystem": "sched", "event": "sched_process_exec",
        "selectors": [{"matchBinaries": [{"operator": "NotIn", "values": list(allowed)}],
                       "matchActions": [{"action": "Sigkill"}]}],
    }]})


def our_programs() -> set[int]:
    """Ids of every engine program in the kernel (their names start with `pl_`)."""
    from bpf import inventory

    return {p.id for p in inventory.inventory(cgroup_hooks=()).programs if p.name.startswith("pl_")}


def programs_gone(ids: set[int], timeout: float = 5.0) -> bool:
    """True once none of `ids` is loaded (the kernel frees programs after an RCU grace period)."""
    deadline = time.monotonic() + timeout
    while ids & our_programs():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_events(engine: Engine, pred: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Events polled until one satisfies `pred` (or the timeout)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = engine.poll_events(0.2)
        out += batch
        if any(pred(ev) for ev in batch):
            break
    return out


def kprobe_events(engine: Engine, call: str, until: Any = lambda b: True) -> list[dict[str, Any]]:
    """The bodies of the `process_kprobe` events on `call`, polled until one satisfies `until`."""
    def of_call(ev: dict[str, Any]) -> bool:
        body = ev.get("process_kprobe")
        return body is not None and body.get("function_name") == call

    events = wait_events(engine, lambda ev: of_call(ev) and until(ev["process_kprobe"]))
    return [ev["process_kprobe"] for ev in events if of_call(ev)]


def build_c(d: Path, source: str, *cflags: str) -> Path:
    """`source` built with the system C compiler as `d`/prog (its symbols stay in .symtab)."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("these tests build a C program: install a C compiler (cc)")
    (d / "prog.c").write_text(source)
    subprocess.run([cc, *cflags, "-o", str(d / "prog"), str(d / "prog.c")], check=True)
    return d / "prog"


def libc() -> str:
    """The real path of the libc this process maps, which the workload's programs map too."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name == "libc.so.6":
            return os.path.realpath(fields[5])
    pytest.fail("this process maps no libc.so.6")


#: The start of a workload's Python program that changes its own capabilities: `libc` (errno kept) and
#: capget/capset's `Head` and `Data` structures (version 3: two Data, bits 0-31 then 32-63).
CAPS_PRELUDE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class Head(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
"""


#: Calls the 32-bit (ia32) ABI with `int $0x80`, which any 64-bit process may do: `int80(nr, a, b, c)`,
#: and `low(data)`, a copy of `data` below 4 GiB, where 32-bit pointers can reach it.
INT80 = r"""
import mmap
_low = mmap.mmap(-1, 1 << 16, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40,  # MAP_32BIT
                 prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
_used = [4096]
def low(data):
    at = _used[0]
    _low[at:at + len(data)] = data
    _used[0] += (len(data) + 15) // 16 * 16
    return ctypes.addressof(ctypes.c_char.from_buffer(_low)) + at
def int80(nr, a=0, b=0, c=0):
    imm = lambda v: (v & 0xffffffff).to_bytes(4, 'little')
    code = (b'\x53' + b'\xb8' + imm(nr) + b'\xbb' + imm(a) + b'\xb9' + imm(b) + b'\xba' + imm(c)
            + b'\xcd\x80\x5b\xc3')  # push rbx; mov eax/ebx/ecx/edx; int 0x80; pop rbx; ret
    _low[:len(code)] = code
    return ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(_low)))()
"""

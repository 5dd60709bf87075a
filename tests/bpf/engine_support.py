"""Fixtures for engine tests on the real kernel: a private pin root, an engine, workload cgroups.

Everything a test creates is removed by finalizers, also when the test fails:
pinned policies (adopted and unloaded by a fresh engine), the pin root, the
workload cgroups (their processes killed first).
"""
from __future__ import annotations

import os
import shutil
import subprocess
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
    w = new_cgroup()
    yield w.path
    remove_cgroup(w)


@pytest.fixture()
def engine(pin_root: Path) -> Iterator[Engine]:
    e = Engine(pin_root=pin_root, node_name="test-node")
    yield e
    e.close()


@pytest.fixture()
def workload(require_kernel: None) -> Iterator[Workload]:
    w = new_cgroup()
    yield w
    remove_cgroup(w)


def policy(name: str, spec: dict[str, Any]) -> TracingPolicy:
    return parse({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name},
                  "spec": spec})


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

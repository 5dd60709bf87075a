"""A syscall's return (`kprobes` with `syscall: true, return: true`), on any kernel.

The entry runs on the call's sys_enter tracepoint and keeps its event per thread; the
call's sys_exit tracepoint reads the return, filters it with `matchReturnArgs`, acts and
posts the event with `return`, as a kretprobe on the syscall would where kprobes exist.
32-bit calls (int $0x80) take raw_syscalls:sys_enter and sys_exit. The policy is
tracingpolicy/openat_write.yaml of Tetragon's examples.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import INT80, Workload, policy, wait_events

from bpf.engine import Engine
from bpf.policy import TracingPolicy

pytestmark = pytest.mark.kernel

PY = sys.executable
O_WRONLY, O_CREAT = 0o1, 0o100


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    f = tmp_path / "passwd"
    f.write_text("root:x:0:0\n")
    os.chmod(tmp_path, 0o755)
    yield f


def _openat_write(target: Path, returns: dict[str, Any], action: str = "Post") -> TracingPolicy:
    return policy("sys-openat-return", {"kprobes": [{
        "call": "sys_openat", "return": True, "syscall": True,
        "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "string"}, {"index": 2, "type": "int"}],
        "returnArg": {"index": 0, "type": "int"},
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal", "values": [str(target)]},
                                     {"index": 2, "operator": "Mask", "values": ["64", "1", "2"]}],
                       "matchReturnArgs": [returns],
                       "matchActions": [{"action": action}]}]}]})


def _opens(engine: Engine) -> list[dict[str, Any]]:
    events = wait_events(engine, lambda ev: "process_kprobe" in ev, timeout=3)
    return [ev["process_kprobe"] for ev in events if "process_kprobe" in ev]


def _py(workload: Workload, code: str) -> tuple[int, bytes]:
    done = workload.run([PY, "-c", f"import ctypes, os\n{INT80}\n{code}\nprint('ran')"])
    return done.returncode, done.stdout


def test_the_return_is_reported_and_filtered(engine: Engine, workload: Workload, target: Path) -> None:
    res = engine.load(_openat_write(target, {"index": 0, "operator": "GT", "values": ["0"]}), "observe",
                      cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert _py(workload, f"os.close(os.open({str(target)!r}, os.O_WRONLY))") == (0, b"ran\n")
    assert _py(workload, f"os.close(os.open({str(target)!r}, os.O_RDONLY))") == (0, b"ran\n")  # no flag in Mask
    missing = target.parent / "gone" / "passwd"
    # the same arguments, but the call fails: the return (-ENOENT) is not > 0
    assert _py(workload, f"""
try: os.open({str(target)!r}.replace('passwd', 'gone/passwd'), os.O_WRONLY | os.O_CREAT)
except FileNotFoundError: pass""")[0] == 0
    events = _opens(engine)
    assert len(events) == 1, events
    (e,) = events
    assert e["function_name"] == "__x64_sys_openat"
    assert e["args"][1] == {"string_arg": str(target)}
    assert e["args"][2]["int_arg"] & O_WRONLY
    assert e["return"]["int_arg"] > 2  # the descriptor the call returned
    assert e["process"]["binary"] == PY or os.path.realpath(e["process"]["binary"]) == os.path.realpath(PY)
    assert e["action"] == "KPROBE_ACTION_POST"
    assert not missing.exists()


def test_a_kill_judged_on_the_return_comes_after_the_call(engine: Engine, workload: Workload,
                                                          target: Path) -> None:
    # Sigkill only when the open failed: the call returns -ENOENT, then the process dies before its next line
    res = engine.load(_openat_write(target.parent / "gone" / "passwd",
                                    {"index": 0, "operator": "LT", "values": ["0"]}, "Sigkill"),
                      "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    rc, out = _py(workload, f"""
try: os.open({str(target.parent / 'gone' / 'passwd')!r}, os.O_WRONLY | os.O_CREAT)
except FileNotFoundError: print('returned', flush=True)""")
    assert rc == -signal.SIGKILL
    assert out == b""  # killed on the way back to user space, before the except clause ran
    # a call that succeeds is not judged by the same selector
    assert _py(workload, f"os.close(os.open({str(target)!r}, os.O_WRONLY))") == (0, b"ran\n")
    (e,) = [e for e in _opens(engine) if e["action"] == "KPROBE_ACTION_SIGKILL"]
    assert e["return"] == {"int_arg": -2}


def test_a_32_bit_call_is_seen_with_its_return(engine: Engine, workload: Workload, target: Path) -> None:
    res = engine.load(_openat_write(target, {"index": 0, "operator": "GT", "values": ["0"]}), "observe",
                      cgroups=[workload.path])
    assert res.loaded, res.reasons
    # ia32 openat is 295: (dirfd, path, flags) in ebx, ecx, edx; the path below 4 GiB
    rc, out = _py(workload, f"print('fd', int80(295, -100, low({str(target)!r}.encode() + b'\\0'), 1))")
    assert rc == 0, out
    fd = int(out.split()[1])
    assert fd > 2
    events = _opens(engine)
    assert [e["return"] for e in events] == [{"int_arg": fd}]
    assert events[0]["args"][1] == {"string_arg": str(target)}

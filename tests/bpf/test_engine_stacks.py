"""Stack traces: `kernelStackTrace` / `userStackTrace` on Post, as Tetragon's stack_traces example writes them.

The stacks are taken in the kernel (bpf_get_stackid into a stack map) and named here: kernel frames through
/proc/kallsyms, user frames through the process's memory map and the ELF symbols of the mapped file, in the
shape of Tetragon's `kernel_stack_trace` / `user_stack_trace` entries. On this machine (no kprobes) the hooks
are a `syscall: true` kprobe and a tracepoint, both on syscalls:sys_enter_getppid; the VM test loads the
example itself, a kprobe on kfree_skb_reason, and a kprobe on a syscall's kernel entry.

A syscall tracepoint program is handed the registers its stack is unwound from: Debian's 6.1 hands it the
caller's user registers, so the kernel stack there is empty (bpf_get_stackid fails, measured) and events
carry the user stack only; 6.18 hands it the tracepoint's own, which unwind through the syscall entry.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_support import Workload, build_c, policy

from bpf.engine import Engine
from bpf.policy import TracingPolicy, parse

pytestmark = pytest.mark.kernel

CORPUS = Path("/work/shared/tetragon-corpus/examples/tracingpolicy/stack_traces.yaml")

#: getppid made by a `syscall` instruction inside pl_stack_marker itself (libc is built without frame
#: pointers, so a call through its wrapper would hide the caller), then a wait on stdin: the process lives
#: until its events are read, as the user frames are named from its memory map.
_PROGRAM = r"""
#include <sys/syscall.h>
#include <unistd.h>
__attribute__((noinline)) long pl_stack_marker(void) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"((long)SYS_getppid) : "rcx", "r11", "memory");
    return ret;
}
int main(void) {
    char b;
    pl_stack_marker();
    return read(0, &b, 1) == 1 ? 0 : 1;
}
"""

#: Whether this kernel unwinds a syscall tracepoint's kernel stack (see above: measured on 6.1 and 6.18).
SYSCALL_TP_KERNEL_STACK = tuple(int(x) for x in os.uname().release.split(".")[:2]) > (6, 1)

_POST = [{"matchActions": [{"action": "Post", "kernelStackTrace": True, "userStackTrace": True}]}]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c(tmp_path_factory.mktemp("stack-prog"), _PROGRAM, "-O0", "-fno-omit-frame-pointer")


def _run(workload: Workload, engine: Engine, program: Path, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """The first `count` events of kind `kind` of one run of the program (read while it waits on stdin)."""
    child = workload.popen([str(program)], stdin=subprocess.PIPE)
    bodies: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 5
        while len(bodies) < count and time.monotonic() < deadline:
            bodies += [ev[kind] for ev in engine.poll_events(0.2)
                       if ev.get(kind, {}).get("process", {}).get("pid") == child.pid]
        assert child.stdin is not None
        child.stdin.write(b"x")
        child.stdin.close()
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert len(bodies) == count, bodies
    return bodies


def _load_and_run(engine: Engine, workload: Workload, program: Path, doc: TracingPolicy, kind: str,
                  count: int = 1) -> list[dict[str, Any]]:
    """`doc` loaded in observe mode on the workload, then the first `count` `kind` events of one run of the program."""
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    return _run(workload, engine, program, kind, count)


def _check_stacks(body: dict[str, Any], program: Path, kernel_stack: bool = True) -> None:
    if not kernel_stack:
        assert "kernel_stack_trace" not in body
        _check_user_stack(body, program)
        return
    kernel = body["kernel_stack_trace"]
    assert all(set(f) <= {"offset", "symbol"} and f["symbol"] for f in kernel), kernel
    # the syscall entry is on the way in (entry_SYSCALL_64 -> do_syscall_64 -> the tracepoint)
    assert {"do_syscall_64", "entry_SYSCALL_64_after_hwframe"} & {f["symbol"] for f in kernel}, kernel
    _check_user_stack(body, program)


def _check_user_stack(body: dict[str, Any], program: Path) -> None:
    user = body["user_stack_trace"]
    assert user[0]["module"] == str(program)
    assert user[0]["symbol"] == "pl_stack_marker"
    assert int(user[0]["offset"]) > 0
    assert any(f.get("symbol") == "main" for f in user), user


def test_a_syscall_kprobe_posts_the_kernel_and_user_stacks_of_the_call(
        engine: Engine, workload: Workload, program: Path) -> None:
    doc = policy("stacks-kprobe", {"kprobes": [{"call": "sys_getppid", "syscall": True, "selectors": _POST}]})
    (body,) = _load_and_run(engine, workload, program, doc, "process_kprobe")
    assert body["function_name"].endswith("sys_getppid")
    _check_stacks(body, program, SYSCALL_TP_KERNEL_STACK)


def test_a_tracepoint_posts_the_stacks_only_for_the_selector_that_asks(
        engine: Engine, workload: Workload, program: Path) -> None:
    doc = policy("stacks-tracepoint", {"tracepoints": [{
        "subsystem": "syscalls", "event": "sys_enter_getppid", "selectors": _POST}, {
        "subsystem": "syscalls", "event": "sys_enter_getppid"}]})
    bodies = _load_and_run(engine, workload, program, doc, "process_tracepoint", count=2)
    with_stacks = [b for b in bodies if "user_stack_trace" in b]
    assert len(with_stacks) == 1
    _check_stacks(with_stacks[0], program, SYSCALL_TP_KERNEL_STACK)
    assert not any("kernel_stack_trace" in b for b in bodies if b is not with_stacks[0])


def test_stack_traces_on_an_action_other_than_post_are_refused(engine: Engine, workload: Workload) -> None:
    doc = policy("stacks-sigkill", {"kprobes": [{"call": "sys_getppid", "syscall": True, "selectors": [
        {"matchActions": [{"action": "Sigkill", "kernelStackTrace": True}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert not res.loaded
    assert "kernelStackTrace/userStackTrace go with a Post action" in " ".join(res.reasons)


@pytest.mark.stock_kernel
def test_the_stack_traces_example_loads_on_kfree_skb_reason(engine: Engine, workload: Workload) -> None:
    doc = parse(yaml.safe_load(CORPUS.read_text()))
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert [s.label for h in engine.loaded()[doc.key].plan.hooks for s in h.sites] == ["kprobe/kfree_skb_reason"]


@pytest.mark.stock_kernel
def test_a_kprobe_on_the_syscall_entry_posts_its_kernel_and_user_stacks(
        engine: Engine, workload: Workload, program: Path) -> None:
    doc = policy("stacks-entry", {"kprobes": [{"call": "__x64_sys_getppid", "syscall": False, "selectors": _POST}]})
    (body,) = _load_and_run(engine, workload, program, doc, "process_kprobe")
    assert body["function_name"] == "__x64_sys_getppid"
    _check_stacks(body, program)


@pytest.mark.stock_kernel
def test_the_stack_traces_example_reports_a_dropped_packet_with_its_stacks(engine: Engine, workload: Workload) -> None:
    doc = parse(yaml.safe_load(CORPUS.read_text()))
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    # a datagram to a port nobody listens on is dropped (SKB_DROP_REASON_NO_SOCKET) in the sender's context
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    child = workload.popen([sys.executable, "-c", "import socket, sys; s = socket.socket(socket.AF_INET, "
                            f"socket.SOCK_DGRAM); s.sendto(b'x', ('127.0.0.1', {closed})); sys.stdin.read(1)"],
                           stdin=subprocess.PIPE)
    try:
        bodies: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while not bodies and time.monotonic() < deadline:
            bodies = [ev["process_kprobe"] for ev in engine.poll_events(0.2)
                      if ev.get("process_kprobe", {}).get("process", {}).get("pid") == child.pid]
        assert child.stdin is not None
        child.stdin.write(b"x")
        child.stdin.close()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert bodies, "no kfree_skb_reason event"
    body = bodies[0]
    assert body["function_name"] == "kfree_skb_reason"
    assert body["args"][1]["label"] == "reason"
    symbols = [f["symbol"] for f in body["kernel_stack_trace"]]
    assert any(sym.startswith(("udp", "__udp")) for sym in symbols), symbols
    assert any(f.get("module", "").endswith(".so.1.0") or "libc" in f.get("module", "") or "python" in
               f.get("module", "") for f in body["user_stack_trace"]), body["user_stack_trace"]

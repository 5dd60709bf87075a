"""A process in a scoped workload cannot leave the scope and run on unseen (bpf/scope.py), on the real kernel.

The workload is a cgroup with an enforced scoped policy (block-memfd-create: any
memfd_create() dies); `outside` is another cgroup. Root inside the workload writes a
pid into `outside/cgroup.procs`: the writer is killed, a moved child is killed too,
the escape is an event; a move by someone outside the workload keeps the process under
the policy, the engine's own moves leave it, and moves inside the workload are no escape.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import Workload, scratch_workload, wait_events

from bpf import templates
from bpf.engine import Engine
from bpf.policy import parse

pytestmark = pytest.mark.kernel

#: Reads "<cgroup.procs path> <pid|self|child>" lines on stdin and moves that process there; "memfd"
#: creates a memfd (what the policy forbids). Answers each line with "ok <pid>".
_WORKER = r"""
import os, subprocess, sys
child = None
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "memfd":
        os.memfd_create("x")
        print("ok", os.getpid(), flush=True)
        continue
    if cmd[1] == "child":
        child = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("child", child.pid, flush=True)
    pid = child.pid if cmd[1] == "child" else os.getpid()
    with open(cmd[0], "w") as f:
        f.write(str(pid))
    print("ok", pid, flush=True)
"""


@pytest.fixture()
def outside(require_kernel: None) -> Iterator[Workload]:
    """A second workload, outside the policies' scope."""
    with scratch_workload() as w:
        yield w


@pytest.fixture()
def scoped(engine: Engine, workload: Workload) -> Engine:
    res = engine.load(parse(templates.render("block-memfd-create", "no-memfd")), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    return engine


class Worker:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def say(self, line: str) -> list[str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split()

    def died_of(self) -> int:
        return self.proc.wait(timeout=10)


@pytest.fixture()
def worker(workload: Workload) -> Iterator[Worker]:
    proc = workload.popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield Worker(proc)
    proc.kill()
    proc.wait(timeout=10)


def _escapes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("process_tracepoint", {}).get("event") == "cgroup_attach_task"]


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """True once `pid` has exited (gone, or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_process_moving_itself_out_of_an_enforced_scope_is_killed_and_reported(
        scoped: Engine, worker: Worker, outside: Workload) -> None:
    assert worker.say(f"{outside.path}/cgroup.procs self") == []  # no answer: killed by the write
    assert worker.died_of() == -signal.SIGKILL
    [ev] = _escapes(wait_events(scoped, lambda e: bool(_escapes([e]))))
    body = ev["process_tracepoint"]
    assert (body["subsys"], body["policy_name"], body["action"]) == ("cgroup", "no-memfd", "KPROBE_ACTION_SIGKILL")
    assert body["args"] == [{"int_arg": worker.proc.pid, "label": "pid"},
                            {"string_arg": f"/{outside.path.name}", "label": "dst_path"}]
    assert ev["palisade"]["acted"] is True
    assert str(worker.proc.pid) not in (outside.path / "cgroup.procs").read_text().split()


def test_a_child_moved_out_by_the_workload_is_killed_with_the_writer(
        scoped: Engine, worker: Worker, outside: Workload) -> None:
    assert worker.proc.stdin and worker.proc.stdout
    worker.proc.stdin.write(f"{outside.path}/cgroup.procs child\n")
    worker.proc.stdin.flush()
    kind, child = worker.proc.stdout.readline().split()
    assert kind == "child"
    assert worker.died_of() == -signal.SIGKILL
    [ev] = _escapes(wait_events(scoped, lambda e: bool(_escapes([e]))))
    assert ev["process_tracepoint"]["args"][0]["int_arg"] == int(child)
    assert ev["palisade"]["moved_killed"] is True
    assert _gone(int(child))


def test_a_process_moved_out_by_someone_else_stays_under_the_policy(
        scoped: Engine, worker: Worker, outside: Workload) -> None:
    pid = str(worker.proc.pid)
    # an operator's shell (not the engine, not the workload) moves it
    subprocess.run(["sh", "-c", f"echo {pid} > {outside.path}/cgroup.procs"], check=True, timeout=10)
    assert pid in (outside.path / "cgroup.procs").read_text().split()
    [ev] = _escapes(wait_events(scoped, lambda e: bool(_escapes([e]))))
    assert (ev["process_tracepoint"]["action"], ev["palisade"]["acted"]) == ("KPROBE_ACTION_POST", False)
    assert worker.say("memfd") == []  # still judged by the policy: killed
    assert worker.died_of() == -signal.SIGKILL


def test_the_engines_own_moves_and_moves_inside_the_workload_are_not_escapes(
        scoped: Engine, worker: Worker, workload: Workload, outside: Workload) -> None:
    sub = workload.path / "sub"
    sub.mkdir()
    assert worker.say(f"{sub}/cgroup.procs self") == ["ok", str(worker.proc.pid)]  # within the workload
    (outside.path / "cgroup.procs").write_text(str(worker.proc.pid))  # this process is the engine
    assert worker.say("memfd") == ["ok", str(worker.proc.pid)]  # left the scope for good
    assert _escapes(wait_events(scoped, lambda e: bool(_escapes([e])), timeout=1.0)) == []
    os.kill(worker.proc.pid, signal.SIGKILL)


def test_observe_mode_reports_the_escape_without_killing(engine: Engine, workload: Workload,
                                                         outside: Workload) -> None:
    res = engine.load(parse(templates.render("block-memfd-create", "no-memfd")), "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    proc = workload.popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    w = Worker(proc)
    try:
        assert w.say(f"{outside.path}/cgroup.procs self") == ["ok", str(proc.pid)]
        [ev] = _escapes(wait_events(engine, lambda e: bool(_escapes([e]))))
        assert ev["palisade"]["would_have_acted"] is True
        assert ev["palisade"]["mode"] == "observe"
    finally:
        proc.kill()
        proc.wait(timeout=10)


_CLONE_INTO = r"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
args = struct.pack("<11Q", 1 << 33, 0, 0, 0, 17, 0, 0, 0, 0, 0, fd)  # CLONE_INTO_CGROUP, SIGCHLD, cgroup fd
pid = libc.syscall(435, args, len(args))
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("cloned", pid)
"""


def test_clone3_into_another_cgroup_is_an_escape_too(scoped: Engine, workload: Workload, outside: Workload) -> None:
    argv = [sys.executable, "-c", _CLONE_INTO, str(outside.path)]
    assert subprocess.run(argv, capture_output=True, timeout=30).stdout.startswith(b"cloned ")  # outside: works
    inside = workload.run(argv)
    assert (inside.returncode, inside.stdout) == (-signal.SIGKILL, b""), inside  # killed before any child
    [ev] = [e for e in wait_events(scoped, lambda e: "process_tracepoint" in e) if "process_tracepoint" in e]
    body = ev["process_tracepoint"]
    assert (body["event"], body["action"], body["args"]) == (
        "sys_enter_clone3", "KPROBE_ACTION_SIGKILL", [{"size_arg": 1 << 33, "label": "flags"}])

"""`spec.lists`: a kprobe on `list:<name>` and `InMap` on syscall numbers, as Tetragon's list examples write them."""
from __future__ import annotations

import signal
import sys

import pytest
from engine_support import INT80, Workload, policy, wait_events

from bpf.engine import Engine

pytestmark = pytest.mark.kernel

PY = sys.executable
DUPS = {"name": "dups", "type": "syscalls", "values": ["sys_dup", "sys_dup2", "__ia32_sys_dup"]}


def _py(workload: Workload, code: str) -> tuple[int, bytes]:
    done = workload.run([PY, "-c", f"import ctypes, os\n{INT80}\n{code}\nprint('ran')"])
    return done.returncode, done.stdout


def test_a_kprobe_on_a_syscalls_list_hooks_each_call(engine: Engine, workload: Workload) -> None:
    doc = policy("list-syscalls", {"lists": [DUPS], "kprobes": [{
        "call": "list:dups", "selectors": [{"matchActions": [{"action": "Sigkill"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    # libc's dup and dup2 make those syscalls (Python's os.dup uses fcntl)
    assert _py(workload, "ctypes.CDLL(None).dup(1)") == (-signal.SIGKILL, b"")
    assert _py(workload, "ctypes.CDLL(None).dup2(1, 9)") == (-signal.SIGKILL, b"")
    assert _py(workload, "int80(41, 1)")[0] == -signal.SIGKILL  # __ia32_sys_dup: the compat twin of sys_dup
    assert _py(workload, "os.pipe()") == (0, b"ran\n")
    events = wait_events(engine, lambda ev: ev.get("process_kprobe", {}).get("function_name") == "__ia32_sys_dup")
    names = {ev["process_kprobe"]["function_name"] for ev in events if "process_kprobe" in ev}
    # named by the entry each call took, as Tetragon names them
    assert names == {"__x64_sys_dup", "__x64_sys_dup2", "__ia32_sys_dup"}


def test_in_map_on_raw_syscall_numbers_tells_ia32_from_x86_64(engine: Engine, workload: Workload) -> None:
    doc = policy("list-syscalls-tracepoint", {"lists": [DUPS], "tracepoints": [{
        "subsystem": "raw_syscalls", "event": "sys_enter", "args": [{"index": 4, "type": "uint64"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "InMap", "values": ["list:dups"]}],
                       "matchActions": [{"action": "Sigkill"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert _py(workload, "ctypes.CDLL(None).dup(1)")[0] == -signal.SIGKILL
    assert _py(workload, "int80(41, 1)")[0] == -signal.SIGKILL  # ia32 dup is 41
    # x86-64 call 41 is socket(2), not dup: it is not in the list
    assert _py(workload, "import socket; socket.socket().close()") == (0, b"ran\n")


def test_a_kprobe_on_every_syscall_names_each_call(engine: Engine, workload: Workload) -> None:
    doc = policy("all-syscalls", {"lists": [{"name": "all", "type": "generated_syscalls"}], "kprobes": [{
        "call": "list:all", "selectors": [{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/true"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run(["/usr/bin/true"]).returncode == 0
    events = wait_events(engine, lambda ev: ev.get("process_kprobe", {}).get("function_name")
                         == "__x64_sys_exit_group")
    names = {ev["process_kprobe"]["function_name"] for ev in events if "process_kprobe" in ev}
    assert "__x64_sys_exit_group" in names
    assert {"__x64_sys_mmap", "__x64_sys_close"} & names
    assert all(ev["process_kprobe"]["process"]["binary"] == "/usr/bin/true" for ev in events if "process_kprobe" in ev)


def test_a_list_that_is_not_defined_or_not_buildable_is_refused(engine: Engine, workload: Workload) -> None:
    doc = policy("bad-lists", {"lists": [{"name": "ksys", "type": "generated_ftrace", "pattern": "^ksys_*"}],
                               "kprobes": [{"call": "list:nope"}, {"call": "list:ksys"}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert not res.loaded
    text = " ".join(res.reasons)
    assert "spec.kprobes[0]: list:nope names no list of spec.lists" in text
    assert "spec.lists[0]: lists of type generated_ftrace" in text

"""Selectors on the current task, read through BTF: matchNamespaces, matchCapabilities, isNamespacePID,
isNamespaceCapability, and matchCapabilityChanges / matchNamespaceChanges (the task compared with what
its process had at its exec).

Each policy kills a workload process that calls getppid(2) when the selector matches; the
processes that must not match call it too and must survive.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from engine_support import CAPS_PRELUDE, Workload, policy, wait_events

from bpf.engine import Engine

pytestmark = pytest.mark.kernel

PY = sys.executable
GETPPID = [PY, "-c", "import os; os.getppid(); print('ran')"]
#: Changes its own state after its exec, then calls getppid: `CAPS` clears (-N) or sets (+N) capability bit N
#: of its effective set, one step per argument, each followed by getppid; `UNSHARE` enters new namespaces.
CAPS_CODE = CAPS_PRELUDE + """
import os, sys
head, data = Head(0x20080522, 0), (Data * 2)()
for step in sys.argv[1:]:
    assert libc.capget(ctypes.byref(head), data) == 0
    bit = abs(int(step))
    if step.startswith("-"):
        data[bit // 32].effective &= ~(1 << bit % 32)
    else:
        data[bit // 32].effective |= 1 << bit % 32
    assert libc.capset(ctypes.byref(head), data) == 0, ctypes.get_errno()
    os.getppid()
    os.getppid()
print('ran')
"""
UNSHARE_CODE = """
import ctypes, os, sys
assert ctypes.CDLL(None, use_errno=True).unshare(int(sys.argv[1], 0)) == 0
os.getppid()
print('ran')
"""
CAP_KILL, CAP_NET_RAW = 5, 13  # (a bit above 0: -N says "clear")
CLONE_NEWUTS, CLONE_NEWNET = 0x04000000, 0x40000000
USERNS = ["unshare", "--user", "--map-root-user"]


def caps(*steps: int | str) -> list[str]:
    return [PY, "-c", CAPS_CODE, *map(str, steps)]


def unshare(flags: int) -> list[str]:
    return [PY, "-c", UNSHARE_CODE, hex(flags)]


def _kill_getppid(engine: Engine, workload: Workload, selector: dict[str, Any]) -> None:
    doc = policy("task-selector", {"tracepoints": [{
        "subsystem": "syscalls", "event": "sys_enter_getppid",
        "selectors": [{**selector, "matchActions": [{"action": "Sigkill"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons


def _killed(done: Any) -> bool:
    return done.returncode == -signal.SIGKILL and b"ran" not in done.stdout


def _survived(done: Any) -> bool:
    return done.returncode == 0 and done.stdout == b"ran\n"


def test_match_namespaces_not_in_host_ns_kills_only_a_new_mount_namespace(engine: Engine,
                                                                          workload: Workload) -> None:
    _kill_getppid(engine, workload, {"matchNamespaces": [{"namespace": "Mnt", "operator": "NotIn",
                                                          "values": ["host_ns"]}]})
    assert _survived(workload.run(GETPPID))
    done = workload.run(["unshare", "--mount", *GETPPID])
    assert done.returncode == -signal.SIGKILL, done
    events = wait_events(engine, lambda ev: "process_tracepoint" in ev)
    assert any(ev["process_tracepoint"]["action"] == "KPROBE_ACTION_SIGKILL" for ev in events)


def test_match_namespaces_in_an_inode_number(engine: Engine, workload: Workload) -> None:
    net = str(os.stat("/proc/self/ns/net").st_ino)
    _kill_getppid(engine, workload, {"matchNamespaces": [{"namespace": "Net", "operator": "In", "values": [net]}]})
    assert _killed(workload.run(GETPPID))
    assert _survived(workload.run(["unshare", "--net", *GETPPID]))


def test_match_capabilities_effective(engine: Engine, workload: Workload) -> None:
    _kill_getppid(engine, workload, {"matchCapabilities": [{"type": "Effective", "operator": "In",
                                                            "values": ["CAP_SYS_ADMIN"]}]})
    assert _killed(workload.run(GETPPID))  # root
    dropped = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *GETPPID]
    assert _survived(workload.run(dropped))


def test_is_namespace_pid_numbers_the_pid_in_its_own_namespace(engine: Engine, workload: Workload) -> None:
    _kill_getppid(engine, workload, {"matchPIDs": [{"operator": "In", "isNamespacePID": True, "values": [1]}]})
    assert _survived(workload.run(GETPPID))  # pid 1 only in a namespace of its own
    done = workload.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", *GETPPID])
    assert done.returncode != 0 and b"ran" not in done.stdout, done  # python is pid 1 there, and died


def test_unknown_namespace_and_capability_are_refused_with_the_field(engine: Engine, workload: Workload) -> None:
    doc = policy("bad", {"tracepoints": [{
        "subsystem": "syscalls", "event": "sys_enter_getppid",
        "selectors": [{"matchNamespaces": [{"namespace": "Moon", "operator": "In", "values": ["1"]}],
                       "matchCapabilities": [{"type": "Effective", "operator": "In", "values": ["CAP_FLY"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert not res.loaded
    text = " ".join(res.reasons)
    assert "matchNamespaces[0]: namespace 'Moon'" in text
    assert "matchCapabilities[0]: unknown capability 'CAP_FLY'" in text


def test_match_capability_changes_kills_a_process_that_drops_the_capability_after_exec(
        engine: Engine, workload: Workload) -> None:
    _kill_getppid(engine, workload, {"matchCapabilityChanges": [{"type": "Effective", "operator": "In",
                                                                 "values": ["CAP_NET_RAW"]}]})
    assert _survived(workload.run(GETPPID))  # as it was at exec
    assert _survived(workload.run(caps(-CAP_KILL)))  # a change, of another capability
    assert _killed(workload.run(caps(-CAP_NET_RAW)))
    # dropped before the exec: the exec's own state, no change after it
    dropped = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw", *GETPPID]
    assert _survived(workload.run(dropped))


def test_match_capability_changes_not_in_is_a_change_of_other_capabilities(engine: Engine,
                                                                           workload: Workload) -> None:
    _kill_getppid(engine, workload, {"matchCapabilityChanges": [{"type": "Effective", "operator": "NotIn",
                                                                 "values": ["CAP_NET_RAW"]}]})
    assert _survived(workload.run(GETPPID))
    assert _survived(workload.run(caps(-CAP_NET_RAW)))
    assert _killed(workload.run(caps(-CAP_KILL)))


def test_match_capability_changes_reports_each_change_once(engine: Engine, workload: Workload) -> None:
    """Dropped, raised again, dropped: three changes, each reported by the first call after it (the process's
    state is then taken as its new one, as Tetragon does), none by the calls in between."""
    doc = policy("cap-changes", {"tracepoints": [{
        "subsystem": "syscalls", "event": "sys_enter_getppid",
        "selectors": [{"matchCapabilityChanges": [{"type": "Effective", "operator": "In",
                                                   "values": ["CAP_NET_RAW"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    still = workload.popen(GETPPID, stdout=subprocess.PIPE)
    changing = workload.popen(caps(-CAP_NET_RAW, CAP_NET_RAW, -CAP_NET_RAW), stdout=subprocess.PIPE)
    assert still.communicate(timeout=30)[0] == b"ran\n"
    assert changing.communicate(timeout=30)[0] == b"ran\n"
    seen: list[dict[str, Any]] = []

    def third(ev: dict[str, Any]) -> bool:
        if ev.get("process_tracepoint", {}).get("process", {}).get("pid") in (still.pid, changing.pid):
            seen.append(ev)
        return sum(1 for e in seen if e["process_tracepoint"]["process"]["pid"] == changing.pid) >= 3

    wait_events(engine, third)
    pids = [e["process_tracepoint"]["process"]["pid"] for e in seen]
    assert pids == [changing.pid] * 3, pids  # in ring order: none for the calls between the changes


def test_match_namespace_changes_kills_a_process_that_unshares_after_exec(engine: Engine,
                                                                          workload: Workload) -> None:
    _kill_getppid(engine, workload, {"matchNamespaceChanges": [{"operator": "In", "values": ["Uts"]}]})
    assert _survived(workload.run(GETPPID))
    assert _survived(workload.run(["unshare", "--uts", *GETPPID]))  # entered before the exec: its own
    assert _survived(workload.run(unshare(CLONE_NEWNET)))  # another kind
    assert _killed(workload.run(unshare(CLONE_NEWUTS)))


def test_match_namespace_changes_not_in_is_a_change_of_another_kind(engine: Engine, workload: Workload) -> None:
    _kill_getppid(engine, workload, {"matchNamespaceChanges": [{"operator": "NotIn", "values": ["Uts"]}]})
    assert _survived(workload.run(unshare(CLONE_NEWUTS)))
    assert _killed(workload.run(unshare(CLONE_NEWNET)))


def test_is_namespace_capability_matches_only_outside_the_node_user_namespace(engine: Engine,
                                                                              workload: Workload) -> None:
    _kill_getppid(engine, workload, {"matchCapabilities": [{"type": "Effective", "operator": "In",
                                                            "isNamespaceCapability": True,
                                                            "values": ["CAP_SYS_ADMIN"]}]})
    assert _survived(workload.run(GETPPID))  # root of the node's user namespace
    assert _killed(workload.run([*USERNS, *GETPPID]))  # root of a user namespace of its own


def test_is_namespace_capability_on_capability_changes(engine: Engine, workload: Workload) -> None:
    _kill_getppid(engine, workload, {"matchCapabilityChanges": [{"type": "Effective", "operator": "In",
                                                                 "isNamespaceCapability": True,
                                                                 "values": ["CAP_SYS_ADMIN", "CAP_NET_RAW"]}]})
    assert _survived(workload.run(caps(-CAP_NET_RAW)))  # in the node's user namespace
    assert _survived(workload.run([*USERNS, *GETPPID]))
    assert _killed(workload.run([*USERNS, *caps(-CAP_NET_RAW)]))


def test_processes_older_than_the_policy_compare_with_their_state_at_load(engine: Engine,
                                                                          workload: Workload) -> None:
    """A process exec'd before the policy loaded has no exec the tracking programs saw: /proc gives its
    state at load instead (as Tetragon's start-up scan of /proc does)."""
    code = "import sys, os; sys.stdin.readline(); os.getppid(); print('ran')"
    older = workload.popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    older_drop = workload.popen([PY, "-c", "import sys; sys.stdin.readline()\n" + CAPS_CODE, "-13"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        _kill_getppid(engine, workload, {"matchCapabilityChanges": [{"type": "Effective", "operator": "In",
                                                                     "values": ["CAP_NET_RAW"]}]})
        out, _ = older.communicate(b"go\n", timeout=30)
        assert older.returncode == 0 and out == b"ran\n"
        out, _ = older_drop.communicate(b"go\n", timeout=30)
        assert older_drop.returncode == -signal.SIGKILL and b"ran" not in out
    finally:
        for p in (older, older_drop):
            if p.poll() is None:
                p.kill()
                p.wait()

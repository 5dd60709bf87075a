"""Selectors on the current task, read through BTF: matchNamespaces, matchCapabilities, isNamespacePID.

Each policy kills a workload process that calls getppid(2) when the selector matches; the
processes that must not match call it too and must survive.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pytest
from engine_support import Workload, policy, wait_events

from bpf.engine import Engine

pytestmark = pytest.mark.kernel

PY = sys.executable
GETPPID = [PY, "-c", "import os; os.getppid(); print('ran')"]


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

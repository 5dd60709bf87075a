"""Raw tracepoints (`raw: true`): arguments by index of the tracepoint's TP_PROTO, read through BTF, as
Tetragon's rawtp example writes them (sched_process_exec's linux_binprm, argument 2)."""
from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import yaml
from engine_support import Workload, policy, wait_events

from bpf.engine import Engine
from bpf.policy import parse

pytestmark = pytest.mark.kernel

CORPUS = Path("/work/shared/tetragon-corpus/examples/tracingpolicy/rawtp.yaml")
TRUE = os.path.realpath("/usr/bin/true")


def _exec_events(events: list[dict], pid: int) -> list[dict]:
    return [ev["process_tracepoint"] for ev in events
            if ev.get("process_tracepoint", {}).get("event") == "sched_process_exec"
            and ev["process_tracepoint"]["process"]["pid"] == pid]


def test_the_rawtp_example_reports_the_binprm_of_each_exec(engine: Engine, workload: Workload) -> None:
    doc = parse(yaml.safe_load(CORPUS.read_text())) if CORPUS.exists() else policy("rawtp", {"tracepoints": [{
        "subsystem": "sched", "event": "sched_process_exec", "raw": True,
        "args": [{"index": 2, "type": "linux_binprm"}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert [s.label for h in engine.loaded()["rawtp"].plan.hooks for s in h.sites] == ["raw_tp/sched_process_exec"]
    child = workload.popen([TRUE])
    assert child.wait(timeout=10) == 0
    events = wait_events(engine, lambda ev: bool(_exec_events([ev], child.pid)))
    (ev,) = _exec_events(events, child.pid)
    assert ev["subsys"] == "sched"
    assert ev["policy_name"] == "rawtp"
    assert ev["process"]["binary"] == TRUE
    # Tetragon's linux_binprm_arg: the path of the file the exec loads, and its permission bits
    assert ev["args"] == [{"linux_binprm_arg": {"path": TRUE, "permission": stat.filemode(os.stat(TRUE).st_mode)}}]


def test_a_selector_on_a_raw_argument_acts_on_the_exec_it_matches(engine: Engine, workload: Workload) -> None:
    doc = policy("rawtp-kill", {"tracepoints": [{
        "subsystem": "sched", "event": "sched_process_exec", "raw": True,
        "args": [{"index": 2, "type": "linux_binprm"}],
        "selectors": [{"matchArgs": [{"index": 2, "operator": "Equal", "values": [TRUE]}],
                       "matchActions": [{"action": "Sigkill"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run([TRUE]).returncode == -signal.SIGKILL
    assert workload.run(["/bin/echo", "ok"]).stdout == b"ok\n"


def test_raw_on_a_syscall_tracepoint_is_refused(engine: Engine, workload: Workload) -> None:
    doc = policy("rawtp-syscalls", {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_openat",
                                                      "raw": True}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert not res.loaded
    assert "syscall tracepoints have no raw form" in " ".join(res.reasons)

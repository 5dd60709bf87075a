"""Issue 11's jq acceptance on a run where an exec allowlist, written as Tetragon's docs write it, kills.

The policy is a kprobe on `sys_execve` with `syscall: true`, `matchBinaries NotIn` and
`Sigkill`: a process whose binary is not listed dies when it calls execve (the call
completes, the new image never runs). The agent's pieces run as `palisade-agent run`
runs them: the base sensor (`daemon.start_sensor`), the engine loading the policy for
the workload's cgroup, and the event pump (pod fields from the workload map, the JSON
log). The workload is a process forked from this test (its binary: this python, not on
the list) that execs `/usr/bin/true`. The real `jq` then answers the four questions.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import sensor as agent_sensor
from agent.config import AgentConfig, Workload
from agent.daemon import start_sensor
from agent.events import EventLog, read_all
from agent.workloads import WorkloadIndex
from bpf.engine import Engine, remove_all
from bpf.policy import parse
from support import cgroups
from support.kernel import unavailable

pytestmark = pytest.mark.kernel

TRUE = os.path.realpath("/usr/bin/true")
PYTHON = os.path.realpath(sys.executable)
#: As Tetragon's enforcement docs write an exec allowlist.
POLICY = {
    "apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "exec-allowlist"},
    "spec": {"kprobes": [{
        "call": "sys_execve", "syscall": True,
        "args": [{"index": 0, "type": "string"}],
        "selectors": [{"matchBinaries": [{"operator": "NotIn", "values": ["/usr/bin/bash", "/usr/bin/sh"]}],
                       "matchActions": [{"action": "Sigkill"}]}],
    }]},
}


@dataclass(frozen=True)
class Run:
    log: Path
    pid: int
    returncode: int


@pytest.fixture(scope="module")
def run(require_kernel: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if shutil.which("jq") is None:
        unavailable("jq is not installed (run scripts/kernel-tools.sh)")
    from bpf.core import procfs

    root = procfs.cgroup2_mount()
    if root is None:
        unavailable("no cgroup2 hierarchy")
    tmp = tmp_path_factory.mktemp("allowlist-jq")
    pod = root / f"palisade-jq-{uuid.uuid4().hex[:8]}"
    pod.mkdir()
    pin_root = Path("/sys/fs/bpf") / f"palisade-jq-{uuid.uuid4().hex[:8]}"
    wl = Workload("web", str(pod), "default", (("app", "web"),))
    cfg = AgentConfig(server="http://127.0.0.1:1", pubkeys=(), sensor_id="jq-node", state=tmp, workloads=(wl,),
                      pin_root=pin_root)
    log, index = EventLog(tmp), WorkloadIndex((wl,))
    engine = Engine(pin_root=pin_root, node_name="jq-node")
    base = start_sensor(cfg, log)
    try:
        assert base is not None, "the base sensor did not start"
        loaded = engine.load(parse(POLICY), "enforced", cgroups=[pod])
        assert loaded.loaded, loaded.reasons
        # a shell (listed) joins the workload, execs python (allowed: the caller is the shell), and python
        # (not listed) calls execve: killed there
        script = f"read go; exec {PYTHON} -c 'import os; os.execv(\"{TRUE}\", [\"true\"])'"
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE)
        (pod / "cgroup.procs").write_text(str(proc.pid))
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        returncode = proc.wait(timeout=30)

        def pumped() -> bool:  # the agent's pump: annotate, then one write per poll
            events = engine.poll_events(0.1)
            for ev in events:
                index.annotate(ev)
            log.write_many(events)
            return any("process_exit" in e and e["process_exit"]["process"]["pid"] == proc.pid
                       for e in read_all(tmp))

        deadline = time.monotonic() + 10
        while not pumped():
            assert time.monotonic() < deadline, "the workload's exit never reached the log"
        for _ in range(5):
            pumped()  # what the engine still holds
    finally:
        if base is not None:
            base.stop()
        engine.close()
        remove_all(pin_root)
        agent_sensor.remove_pins(pin_root)
        log.close()
        cgroups.remove(pod)
    yield Run(tmp / "events.jsonl", proc.pid, returncode)


def _jq(run: Run, program: str) -> list[Any]:
    out = subprocess.run(["jq", "-c", program, str(run.log)], capture_output=True, text=True, timeout=60,
                         check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_the_workload_was_killed(run: Run) -> None:
    assert run.returncode == -9


def test_jq_process_exec_binary_names_the_file_that_was_executed(run: Run) -> None:
    assert PYTHON in _jq(run, "select(.process_exec != null) | .process_exec.process.binary")


def test_jq_selects_the_workloads_exec_by_pod_namespace(run: Run) -> None:
    execs = _jq(run, 'select(.process_exec.process.pod.namespace == "default")')
    assert [e["process_exec"]["process"]["pid"] for e in execs] == [run.pid]
    assert execs[0]["process_exec"]["process"]["binary"] == PYTHON
    assert execs[0]["process_exec"]["process"]["pod"]["name"] == "web"


def test_jq_process_exit_signal_is_sigkill(run: Run) -> None:
    assert _jq(run, f"select(.process_exit.process.pid == {run.pid}) | .process_exit.signal") == ["SIGKILL"]


def test_jq_the_kill_names_the_policy_the_caller_and_the_action(run: Run) -> None:
    kills = _jq(run, 'select(.process_kprobe.action == "KPROBE_ACTION_SIGKILL") | .process_kprobe')
    [kill] = [k for k in kills if k["process"]["pid"] == run.pid]
    assert kill["policy_name"] == "exec-allowlist"
    assert kill["function_name"] == "__x64_sys_execve"  # the entry the call took, as Tetragon names it
    assert kill["process"]["binary"] == PYTHON  # the caller, as Tetragon judges matchBinaries at the call
    assert kill["args"][0]["string_arg"] == TRUE
    assert kill["process"]["pod"]["namespace"] == "default"

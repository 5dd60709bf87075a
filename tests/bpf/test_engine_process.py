"""The in-kernel process map: binaries for non-exec hooks, seeding from /proc, followChildren, parents.

The map holds, per process, the path it was exec'd with (as passed to execve)
and its parent's; it is filled at sched_process_exec / sched_process_fork and
seeded from /proc/<pid>/exe (a resolved path) when the policy loads.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from engine_support import Workload, policy

from bpf import templates
from bpf.engine import Engine
from bpf.policy import parse

pytestmark = pytest.mark.kernel

PY = os.path.realpath(sys.executable)  # exec'd by its real path, so kernel and /proc agree
MEMFD = "import os; os.memfd_create('x'); print('created', flush=True)"


def _kill_memfd_of(values: list[str], follow: bool = False) -> dict:
    return {"tracepoints": [{
        "subsystem": "syscalls", "event": "sys_enter_memfd_create",
        "selectors": [{"matchBinaries": [{"operator": "In", "values": values, "followChildren": follow}],
                       "matchActions": [{"action": "Sigkill"}]}],
    }]}


def test_processes_older_than_the_policy_are_known_from_proc(engine: Engine, workload: Workload) -> None:
    old = workload.popen([PY, "-c", "import sys; sys.stdin.readline();" + MEMFD],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert engine.load(policy("memfd-py", _kill_memfd_of([PY])), "enforced", cgroups=[workload.path]).loaded
        assert old.stdin is not None
        old.stdin.write(b"go\n")
        old.stdin.flush()
        assert old.wait(30) == -signal.SIGKILL
    finally:
        old.kill()
        old.wait()
    # a new process of the same binary too (filled at exec), and another binary is left alone
    assert workload.run([PY, "-c", MEMFD]).returncode == -signal.SIGKILL
    other = policy("memfd-other", _kill_memfd_of(["/usr/bin/does-not-exist"]))
    engine.unload("memfd-py")
    assert engine.load(other, "enforced", cgroups=[workload.path]).loaded
    assert workload.run([PY, "-c", MEMFD]).stdout == b"created\n"


def test_follow_children_matches_descendants_of_a_binary(engine: Engine, workload: Workload) -> None:
    assert engine.load(policy("memfd-under-sh", _kill_memfd_of(["/bin/sh"], follow=True)), "enforced",
                       cgroups=[workload.path]).loaded
    # `; true` keeps the shell from exec'ing python in its own place
    under_sh = workload.run(["/bin/sh", "-c", f"{PY} -c \"{MEMFD}\"; true"])
    assert b"created" not in under_sh.stdout
    assert workload.run([PY, "-c", MEMFD]).stdout == b"created\n"  # not a descendant of /bin/sh


def test_template_exception_by_parent_binary(engine: Engine, workload: Workload) -> None:
    doc = templates.render("block-memfd-create", "memfd-except-sh",
                           exceptions=[templates.TemplateException(parent_binary="/bin/sh")])
    assert engine.load(parse(doc), "enforced", cgroups=[workload.path]).loaded
    excepted = workload.run(["/bin/sh", "-c", f"{PY} -c \"{MEMFD}\"; true"])
    assert excepted.stdout == b"created\n"
    assert workload.run([PY, "-c", MEMFD]).returncode == -signal.SIGKILL
    assert engine.counters("memfd-except-sh").posted == 1  # NoPost: the exception is silent

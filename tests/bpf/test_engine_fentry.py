"""kprobes on kernel functions as fentry/fexit programs, where kprobes are missing but BPF trampolines work.

No kernel of the matrix is like that (Debian's have both), so these tests take the real
6.1 guest's probe and answer "no kprobes" for it: the programs are real fentry and fexit
programs on the real functions, only the engine's choice is forced. Marked
`stock_kernel("fentry", "fexit")`: this host loads neither.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_support import Workload, fd_install_under, kprobe_events, policy

from bpf.compile import Features
from bpf.engine import Engine
from bpf.probe import probe

pytestmark = [pytest.mark.kernel, pytest.mark.stock_kernel("fentry", "fexit")]

PY = sys.executable


@pytest.fixture
def trampolines_only(pin_root: Path) -> Iterator[Engine]:
    """An engine told the kernel has no kprobes (everything else as probed)."""
    features = dataclasses.replace(Features.of(probe()), kprobes=False)
    e = Engine(pin_root=pin_root, node_name="fentry", features=features)
    yield e
    e.close()


def test_fd_install_runs_on_fentry_and_reports_the_file(trampolines_only: Engine, workload: Workload,
                                                        watched: Path) -> None:
    doc = fd_install_under(watched)
    res = trampolines_only.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert [s.kind for h in trampolines_only.loaded()["fd-install"].plan.hooks for s in h.sites] == ["fentry"]
    assert workload.run(["/usr/bin/cat", str(watched / "secret")]).stdout == b"s3cret\n"
    events = kprobe_events(trampolines_only, "fd_install")
    assert {e["args"][1]["file_arg"]["path"] for e in events} == {os.path.realpath(watched / "secret")}
    assert events[0]["args"][1]["file_arg"]["permission"] == "-rw-r-----"
    assert events[0]["process"]["binary"] == "/usr/bin/cat"


def test_a_return_is_read_on_fexit_and_a_kill_judged_there(trampolines_only: Engine, workload: Workload,
                                                           watched: Path) -> None:
    # quickstart/file_monitoring_enforce.yaml, narrowed to one directory
    doc = policy("file-permission", {"kprobes": [{
        "call": "security_file_permission", "syscall": False, "return": True,
        "args": [{"index": 0, "type": "file"}, {"index": 1, "type": "int"}],
        "returnArg": {"index": 0, "type": "int"},
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": [str(watched)]}],
                       "matchActions": [{"action": "Sigkill"}]}]}]})
    res = trampolines_only.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert [s.kind for h in trampolines_only.loaded()["file-permission"].plan.hooks for s in h.sites] == \
        ["fentry", "fexit"]
    done = workload.run(["/usr/bin/cat", str(watched / "secret")])
    assert done.returncode == -signal.SIGKILL
    assert workload.run(["/usr/bin/cat", "/etc/hostname"]).returncode == 0
    (e,) = kprobe_events(trampolines_only, "security_file_permission",
                         lambda b: b["action"] == "KPROBE_ACTION_SIGKILL")[:1]
    assert e["return"] == {"int_arg": 0}
    assert e["args"][0]["file_arg"]["path"] == os.path.realpath(watched / "secret")


def test_an_override_off_the_security_functions_is_still_refused(trampolines_only: Engine,
                                                                 workload: Workload) -> None:
    doc = policy("override", {"kprobes": [{"call": "fd_install", "syscall": False,
                                           "selectors": [{"matchActions": [{"action": "Override",
                                                                            "argError": -1}]}]}]})
    res = trampolines_only.load(doc, "enforced", cgroups=[workload.path])
    assert not res.loaded
    assert any("Override on fd_install" in r for r in res.reasons), res.reasons

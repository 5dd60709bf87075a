"""The Tetragon corpus policies on fd_install that use matchCapabilityChanges, isNamespaceCapability, GetUrl
and DnsLookup, loaded as the corpus writes them and triggered by workload processes.

fd_install needs kprobes: these run in the kernel matrix's Debian 6.1 guest (`stock_kernel`). The same
selectors on syscall tracepoints are tested on any kernel in test_engine_task_selectors.py, and the
agent's sending of GetUrl/DnsLookup requests in tests/agent/test_callouts.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_support import CAPS_PRELUDE, Workload, wait_events

from bpf.engine import Engine
from bpf.policy import parse

pytestmark = [pytest.mark.kernel, pytest.mark.stock_kernel]

PY = sys.executable
CORPUS = Path("/work/shared/tetragon-corpus/examples/tracingpolicy")
POLICIES = ("fd_install_cap_changes.yaml", "fd_install_caps.yaml", "open_dnsrequest.yaml", "open_geturl.yaml")
USERNS = ["unshare", "--user", "--map-root-user"]
#: Clears CAP_NET_RAW (13) from its effective set if told "drop", then opens a file (an fd_install).
DROP_THEN_OPEN = CAPS_PRELUDE + """
import sys
if sys.argv[1:] == ["drop"]:
    head, data = Head(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(head), data) == 0
    data[0].effective &= ~(1 << 13)
    assert libc.capset(ctypes.byref(head), data) == 0
open("/etc/hostname").close()
open("/etc/hostname").close()
"""


def _corpus(name: str) -> Any:
    path = CORPUS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the corpus is part of the test fixtures")
    return parse(yaml.safe_load(path.read_text()))


def _popen(workload: Workload, argv: list[str]) -> int:
    p = workload.popen(argv, stdout=subprocess.DEVNULL)
    assert p.wait(timeout=30) == 0
    return p.pid


def _pids_of(events: list[dict[str, Any]]) -> list[int]:
    return [ev["process_kprobe"]["process"]["pid"] for ev in events if "process_kprobe" in ev]


@pytest.mark.parametrize("name", POLICIES)
def test_the_corpus_policy_loads(engine: Engine, workload: Workload, name: str) -> None:
    res = engine.load(_corpus(name), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons


def test_fd_install_cap_changes_reports_a_capability_dropped_in_a_user_namespace_once(
        engine: Engine, workload: Workload) -> None:
    res = engine.load(_corpus("fd_install_cap_changes.yaml"), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    in_host_ns = _popen(workload, [PY, "-c", DROP_THEN_OPEN, "drop"])  # the node's user namespace: no
    unchanged = _popen(workload, [*USERNS, PY, "-c", DROP_THEN_OPEN])  # its exec's capabilities: no
    changed = _popen(workload, [*USERNS, PY, "-c", DROP_THEN_OPEN, "drop"])
    events = wait_events(engine, lambda ev: changed in _pids_of([ev]))
    pids = _pids_of(events)
    # once: the change reported is the process's state from then on, so its second open is not reported
    assert pids == [changed], (pids, in_host_ns, unchanged)
    assert events[-1]["process_kprobe"]["args"][1]["file_arg"]["path"] == "/etc/hostname"


def test_fd_install_caps_matches_capabilities_only_outside_the_node_user_namespace(engine: Engine,
                                                                                  workload: Workload) -> None:
    res = engine.load(_corpus("fd_install_caps.yaml"), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    in_host_ns = _popen(workload, [PY, "-c", DROP_THEN_OPEN])
    in_user_ns = _popen(workload, [*USERNS, PY, "-c", DROP_THEN_OPEN])
    events = wait_events(engine, lambda ev: in_user_ns in _pids_of([ev]))
    pids = set(_pids_of(events))
    assert in_user_ns in pids and in_host_ns not in pids


@pytest.mark.parametrize(("name", "callout", "action"), [
    ("open_geturl.yaml", {"action": "GetUrl", "argUrl": "http://ebpf.io"}, "KPROBE_ACTION_GETURL"),
    ("open_dnsrequest.yaml", {"action": "DnsLookup", "argFqdn": "ebpf.io"}, "KPROBE_ACTION_DNSLOOKUP"),
])
def test_opening_etc_passwd_names_the_request_for_the_agent(engine: Engine, workload: Workload, name: str,
                                                           callout: dict[str, str], action: str) -> None:
    res = engine.load(_corpus(name), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run(["/bin/cat", "/etc/hostname"]).returncode == 0  # another file: no event
    pid = _popen(workload, ["/bin/cat", "/etc/passwd"])
    events = wait_events(engine, lambda ev: pid in _pids_of([ev]))
    got = [ev for ev in events if "process_kprobe" in ev]
    assert [ev["process_kprobe"]["process"]["pid"] for ev in got] == [pid]
    body, pal = got[0]["process_kprobe"], got[0]["palisade"]
    assert body["function_name"] == "fd_install" and body["args"][1]["file_arg"]["path"] == "/etc/passwd"
    assert body["action"] == action
    assert pal["callouts"] == [callout] and pal["mode"] == "enforced"

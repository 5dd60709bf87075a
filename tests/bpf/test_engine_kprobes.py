"""kprobes and kretprobes on kernel functions, with typed arguments read through BTF.

These need a kernel with kprobes, which the development machines lack: they are marked
`stock_kernel`, deselected where the probe finds no kprobes, and run in the kernel
matrix's Debian 6.1 guest (tests/vm/test_vm_engine.py). Each policy is written as
Tetragon's documentation writes it; each test triggers it from a workload and asserts the
event as Tetragon prints it, and the action.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import Workload, our_programs, policy, programs_gone, wait_events

from bpf.engine import Engine

pytestmark = [pytest.mark.kernel, pytest.mark.stock_kernel]

PY = sys.executable


@pytest.fixture
def watched() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="palisade-kp-"))
    (d / "secret").write_text("s3cret\n")
    os.chmod(d / "secret", 0o640)
    yield d
    shutil.rmtree(d)


def _kprobe_events(engine: Engine, call: str, until: Any = lambda b: True) -> list[dict[str, Any]]:
    """The events of kprobes on `call`, polled until one satisfies `until`."""
    def of_call(ev: dict[str, Any]) -> bool:
        body = ev.get("process_kprobe")
        return body is not None and body.get("function_name") == call

    events = wait_events(engine, lambda ev: of_call(ev) and until(ev["process_kprobe"]))
    return [ev["process_kprobe"] for ev in events if of_call(ev)]


def test_fd_install_reports_the_file_as_tetragon_does(engine: Engine, workload: Workload, watched: Path) -> None:
    doc = policy("fd-install", {"kprobes": [{
        "call": "fd_install", "syscall": False,
        "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "file"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Prefix", "values": [str(watched) + "/"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run(["/usr/bin/cat", str(watched / "secret")]).stdout == b"s3cret\n"
    assert workload.run(["/usr/bin/cat", "/etc/hostname"]).returncode == 0  # not under the prefix
    events = _kprobe_events(engine, "fd_install")
    assert events, "no fd_install event"
    paths = [e["args"][1]["file_arg"]["path"] for e in events]
    assert paths and set(paths) == {os.path.realpath(watched / "secret")}
    first = events[0]
    assert first["args"][1]["file_arg"]["permission"] == "-rw-r-----"
    assert isinstance(first["args"][0]["int_arg"], int) and first["args"][0]["int_arg"] >= 0
    assert first["process"]["binary"] == "/usr/bin/cat"
    assert first["action"] == "KPROBE_ACTION_POST"


def test_security_file_permission_kretprobe_kills_and_reports_the_return(engine: Engine, workload: Workload,
                                                                        watched: Path) -> None:
    # quickstart/file_monitoring_enforce.yaml, narrowed to one directory
    doc = policy("file-permission", {"kprobes": [{
        "call": "security_file_permission", "syscall": False, "return": True,
        "args": [{"index": 0, "type": "file"}, {"index": 1, "type": "int"}],
        "returnArg": {"index": 0, "type": "int"}, "returnArgAction": "Post",
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": [str(watched)]}],
                       "matchActions": [{"action": "Sigkill"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    done = workload.run(["/usr/bin/cat", str(watched / "secret")])
    assert done.returncode == -signal.SIGKILL
    assert b"s3cret" not in done.stdout
    assert workload.run(["/usr/bin/cat", "/etc/hostname"]).returncode == 0
    events = _kprobe_events(engine, "security_file_permission")
    assert events
    e = events[0]
    assert e["return"] == {"int_arg": 0}  # permission granted: the kill is the policy's
    assert e["args"][0]["file_arg"]["path"] == os.path.realpath(watched / "secret")
    assert e["args"][1]["int_arg"] == 4  # MAY_READ
    assert e["action"] == "KPROBE_ACTION_SIGKILL"


def test_matchreturnargs_filters_on_the_value_returned(engine: Engine, workload: Workload, watched: Path) -> None:
    doc = policy("denied-opens", {"kprobes": [{
        "call": "security_file_permission", "syscall": False, "return": True,
        "args": [{"index": 0, "type": "file"}], "returnArg": {"index": 0, "type": "int"},
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": [str(watched)]}],
                       "matchReturnArgs": [{"index": 0, "operator": "NotEqual", "values": ["0"]}]}]}]})
    assert engine.load(doc, "observe", cgroups=[workload.path]).loaded
    assert workload.run(["/usr/bin/cat", str(watched / "secret")]).returncode == 0
    # every read was allowed (returned 0): nothing is reported
    assert _kprobe_events(engine, "security_file_permission") == []


def test_tcp_connect_reports_the_socket_as_tetragon_does(engine: Engine, workload: Workload) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        doc = policy("tcp-connect", {"kprobes": [{
            "call": "tcp_connect", "syscall": False, "args": [{"index": 0, "type": "sock"}],
            "selectors": [{"matchArgs": [{"index": 0, "operator": "DPort", "values": [str(port)]}]}]}]})
        res = engine.load(doc, "observe", cgroups=[workload.path])
        assert res.loaded, res.reasons
        code = f"import socket; s = socket.create_connection(('127.0.0.1', {port})); print(s.getsockname()[1])"
        done = workload.run([PY, "-c", code])
        assert done.returncode == 0, done.stderr
        sport = int(done.stdout)
        events = _kprobe_events(engine, "tcp_connect")
    assert len(events) == 1
    sock = events[0]["args"][0]["sock_arg"]
    assert sock["family"] == "AF_INET" and sock["type"] == "SOCK_STREAM" and sock["protocol"] == "IPPROTO_TCP"
    assert (sock["daddr"], sock["dport"]) == ("127.0.0.1", port)
    assert (sock["saddr"], sock["sport"]) == ("127.0.0.1", sport)
    assert sock["state"] == "TCP_SYN_SENT"
    assert int(sock["cookie"]) > 0


def test_commit_creds_reports_the_new_credentials(engine: Engine, workload: Workload) -> None:
    doc = policy("creds", {"kprobes": [{
        "call": "commit_creds", "syscall": False, "args": [{"index": 0, "type": "cred"}],
        "selectors": [{"matchBinaries": [{"operator": "In", "values": [os.path.realpath(PY)]}]}]}]})
    assert engine.load(doc, "observe", cgroups=[workload.path]).loaded
    done = workload.run([PY, "-c", "import os; os.setgid(4321); os.setuid(1234)"])
    assert done.returncode == 0, done.stderr
    events = _kprobe_events(engine, "commit_creds",
                            lambda b: b["args"][0]["process_credentials_arg"]["uid"] == 1234)
    creds = [e["args"][0]["process_credentials_arg"] for e in events]
    dropped = next(c for c in creds if c["uid"] == 1234)
    assert (dropped["euid"], dropped["gid"]) == (1234, 4321)
    assert dropped["caps"]["effective"] == []  # setuid to non-root drops them
    assert any("CAP_SYS_ADMIN" in c["caps"]["effective"] for c in creds if c["uid"] == 0), creds


def test_a_kprobe_on_a_missing_function_is_refused_and_leaves_nothing(engine: Engine, workload: Workload) -> None:
    before = our_programs()
    doc = policy("nowhere", {"kprobes": [{"call": "palisade_no_such_function", "syscall": False}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert not res.loaded
    assert "palisade_no_such_function" in res.reasons[0]
    assert engine.loaded() == {}
    assert programs_gone(our_programs() - before)


def test_override_on_a_kernel_function_is_refused_with_the_reason(engine: Engine, workload: Workload) -> None:
    doc = policy("override", {"kprobes": [{
        "call": "security_inode_mkdir", "syscall": False,
        "selectors": [{"matchActions": [{"action": "Override", "argError": -1}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert not res.loaded
    assert "bpf_override_return" in res.reasons[0]
    with tempfile.TemporaryDirectory() as d:
        assert workload.run(["/usr/bin/mkdir", f"{d}/x"]).returncode == 0

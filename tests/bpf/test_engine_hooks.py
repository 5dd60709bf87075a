"""Socket hooks and the syscall templates on the real kernel, each inside a workload cgroup.

Denials (`Override`) run on the cgroup sock_create / connect4 / connect6 hooks and
fail the call with EPERM; `Sigkill` runs on syscall tracepoints and kills.
"""
from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_support import Workload, policy, wait_events

from bpf import templates
from bpf.engine import Engine
from bpf.policy import parse

pytestmark = pytest.mark.kernel

PY = sys.executable


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


RAW = _py("import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('made')")
UDP = _py("import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM); print('made')")


def _connect(port: int, host: str = "127.0.0.1") -> list[str]:
    return _py(
        "import socket, sys\n"
        f"s = socket.socket(socket.AF_INET6 if ':' in {host!r} else socket.AF_INET)\n"
        f"try:\n    s.connect(({host!r}, {port}))\n"
        "except OSError as e:\n    print(e.errno); sys.exit(3)\n"
        "print('connected')"
    )


@pytest.fixture()
def listeners() -> Iterator[tuple[int, int]]:
    """Two TCP listeners on 127.0.0.1 (outside any workload): one to deny, one to allow."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        socks.append(s)
    yield socks[0].getsockname()[1], socks[1].getsockname()[1]
    for s in socks:
        s.close()


def test_raw_socket_creation_is_denied_with_eperm_inside_the_workload(engine: Engine, workload: Workload) -> None:
    res = engine.load(parse(templates.render("block-raw-sockets", "no-raw")), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons

    denied = workload.run(RAW)
    assert denied.returncode == 1
    assert b"PermissionError: [Errno 1] Operation not permitted" in denied.stderr
    assert workload.run(UDP).stdout == b"made\n"  # other sockets are fine
    outside = subprocess.run(RAW, capture_output=True, timeout=30)
    assert (outside.returncode, outside.stdout) == (0, b"made\n")

    assert engine.counters("no-raw").enforced == 1
    [ev] = [e for e in wait_events(engine, lambda e: "process_kprobe" in e) if "process_kprobe" in e]
    assert ev["process_kprobe"]["function_name"] == "security_socket_create"
    assert ev["process_kprobe"]["action"] == "KPROBE_ACTION_OVERRIDE"
    assert ev["process_kprobe"]["args"][1] == {"int_arg": socket.SOCK_RAW}


def test_connect_to_a_denied_port_and_cidr_fails_with_eperm_inside_the_workload(
        engine: Engine, workload: Workload, listeners: tuple[int, int]) -> None:
    denied_port, allowed_port = listeners
    p = policy("no-connect", {"kprobes": [{
        "call": "security_socket_connect", "syscall": False,
        "args": [{"index": 1, "type": "sockaddr"}],
        "selectors": [{
            "matchArgs": [{"index": 1, "operator": "SAddr", "values": ["127.0.0.0/8", "::1/128"]},
                          {"index": 1, "operator": "SPort", "values": [str(denied_port)]}],
            "matchActions": [{"action": "Override", "argError": -1}],
        }],
    }]})
    res = engine.load(p, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert {s.attach for h in engine.loaded()["no-connect"].plan.hooks for s in h.sites} == {
        "connect4", "connect6", "sendmsg4", "sendmsg6"}

    denied = workload.run(_connect(denied_port))
    assert (denied.returncode, denied.stdout) == (3, b"1\n")  # EPERM
    assert workload.run(_connect(allowed_port)).stdout == b"connected\n"
    outside = subprocess.run(_connect(denied_port), capture_output=True, timeout=30)
    assert outside.stdout == b"connected\n"

    [ev] = [e for e in wait_events(engine, lambda e: "process_kprobe" in e) if "process_kprobe" in e]
    assert ev["process_kprobe"]["args"] == [
        {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": denied_port}}]


def test_connect_with_sigkill_runs_on_the_syscall_tracepoint(
        engine: Engine, workload: Workload, listeners: tuple[int, int]) -> None:
    denied_port, allowed_port = listeners
    p = policy("kill-connect", {"kprobes": [{
        "call": "tcp_connect", "syscall": False,
        "args": [{"index": 0, "type": "sock"}],
        "selectors": [{
            "matchArgs": [{"index": 0, "operator": "NotDPort", "values": [str(allowed_port)]},
                          {"index": 0, "operator": "DAddr", "values": ["127.0.0.1"]}],
            "matchActions": [{"action": "Sigkill"}],
        }],
    }]})
    res = engine.load(p, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run(_connect(denied_port)).returncode == -signal.SIGKILL
    assert workload.run(_connect(allowed_port)).stdout == b"connected\n"


_PTRACE = _py(
    "import ctypes, subprocess, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "child = subprocess.Popen(['sleep', '30'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "try:\n"
    "    rc = libc.ptrace(16, child.pid, None, None)\n"  # PTRACE_ATTACH
    "    print('attached' if rc == 0 else 'failed %d' % ctypes.get_errno(), flush=True)\n"
    "    libc.ptrace(17, child.pid, None, None)\n"  # PTRACE_DETACH
    "finally:\n"
    "    child.kill()\n"
)
_UNSHARE = _py("import ctypes; assert ctypes.CDLL(None).unshare(0x04000000) == 0; print('unshared')")  # NEWUTS
_MEMFD = _py("import os; os.memfd_create('x'); print('created')")


@pytest.mark.parametrize(("template", "argv", "ok"), [
    ("kill-ptrace-attach", _PTRACE, b"attached\n"),
    ("block-unshare", _UNSHARE, b"unshared\n"),
    ("block-memfd-create", _MEMFD, b"created\n"),
])
def test_syscall_templates_kill_inside_the_workload(
        engine: Engine, workload: Workload, template: str, argv: list[str], ok: bytes) -> None:
    res = engine.load(parse(templates.render(template, template)), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    killed = workload.run(argv)
    assert killed.returncode == -signal.SIGKILL, killed
    outside = subprocess.run(argv, capture_output=True, timeout=30)
    assert (outside.returncode, outside.stdout) == (0, ok)


def test_block_kmod_load_kills_or_is_refused_with_its_reason(engine: Engine, workload: Workload) -> None:
    res = engine.load(parse(templates.render("block-kmod-load", "no-kmod")), "enforced", cgroups=[workload.path])
    if Path("/sys/kernel/tracing/events/syscalls/sys_enter_finit_module").exists():
        assert res.loaded, res.reasons
        attempt = workload.run(_py("import ctypes; ctypes.CDLL(None).syscall(313, -1, b'', 0)"))  # finit_module
        assert attempt.returncode == -signal.SIGKILL
    else:
        # this kernel is built without module loading: there is nothing to hook (nor to load)
        assert not res.loaded
        assert "unsupported: tracepoint syscalls:sys_enter_finit_module does not exist on this kernel" in res.reasons
        assert engine.loaded() == {}


def test_override_arg_error_chooses_the_errno(engine: Engine, workload: Workload) -> None:
    p = policy("raw-eacces", {"kprobes": [{
        "call": "security_socket_create", "syscall": False,
        "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "int"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["3"]}],
                       "matchActions": [{"action": "Override", "argError": -13}]}]}]})
    res = engine.load(p, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    denied = workload.run(RAW)
    assert b"PermissionError: [Errno 13] Permission denied" in denied.stderr


def test_sys_write_reports_the_bytes_written_as_tetragon_does(engine: Engine, workload: Workload) -> None:
    # write.yaml's hook (without its matchPIDs, which tests/bpf/test_engine_pids.py covers): a char_buf read
    # to the size its third argument gives, on the syscall's tracepoint
    doc = policy("sys-write", {"kprobes": [{
        "call": "sys_write", "syscall": True,
        "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "char_buf", "sizeArgIndex": 3},
                 {"index": 2, "type": "size_t"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["1"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    done = workload.run(_py("import os; os.write(1, b'hello palisade'); os.write(2, b'to stderr'); "
                            "os.write(1, b'x' * 300)"))
    assert done.stdout == b"hello palisade" + b"x" * 300
    events = wait_events(engine, lambda ev: "process_kprobe" in ev and ev["process_kprobe"]["args"][2]["size_arg"]
                         == 300)
    writes = [ev["process_kprobe"] for ev in events if "process_kprobe" in ev]
    assert [w["args"] for w in writes] == [
        [{"int_arg": 1}, {"bytes_arg": base64.b64encode(b"hello palisade").decode()}, {"size_arg": 14}],
        [{"int_arg": 1}, {"truncated_bytes_arg": {"bytes_arg": base64.b64encode(b"x" * 256).decode(),
                                                  "orig_size": "300"}}, {"size_arg": 300}]]
    assert writes[0]["function_name"] == "__x64_sys_write"


def test_sys_read_copies_the_buffer_when_the_call_returns(engine: Engine, workload: Workload,
                                                          tmp_path: Path) -> None:
    # returnCopy: what read() put in the buffer exists only once it returns (on its sys_exit tracepoint)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    doc = policy("sys-read", {"kprobes": [{
        "call": "sys_read", "syscall": True, "return": True,
        "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "char_buf", "returnCopy": True},
                 {"index": 2, "type": "size_t"}],
        "returnArg": {"index": 0, "type": "int"},
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["7"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    done = workload.run(_py(f"import os; fd = os.open({str(secret)!r}, os.O_RDONLY); os.dup2(fd, 7); "
                            "print(os.read(7, 100)); print(os.read(7, 100))"))
    assert done.stdout == b"b's3cret\\n'\nb''\n", done
    events = wait_events(engine, lambda ev: "process_kprobe" in ev and ev["process_kprobe"]["return"]
                         == {"int_arg": 0})
    reads = [ev["process_kprobe"] for ev in events if "process_kprobe" in ev]
    assert [(r["args"][1], r["return"]) for r in reads] == [
        ({"bytes_arg": base64.b64encode(b"s3cret\n").decode()}, {"int_arg": 7}),
        ({"bytes_arg": ""}, {"int_arg": 0})]

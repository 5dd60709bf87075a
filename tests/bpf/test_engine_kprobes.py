"""kprobes and kretprobes on kernel functions, with typed arguments read through BTF.

These need a kernel with kprobes, which the development machines lack: they are marked
`stock_kernel`, deselected where the probe finds no kprobes, and run in the kernel
matrix's Debian 6.1 guest (tests/vm/test_vm_engine.py). Each policy is written as
Tetragon's documentation writes it; each test triggers it from a workload and asserts the
event as Tetragon prints it, and the action.
"""
from __future__ import annotations

import base64
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine_support import Workload, fd_install_under, kprobe_events, our_programs, policy, programs_gone

from bpf.engine import Engine

pytestmark = [pytest.mark.kernel, pytest.mark.stock_kernel]

PY = sys.executable


def test_fd_install_reports_the_file_as_tetragon_does(engine: Engine, workload: Workload, watched: Path) -> None:
    doc = fd_install_under(watched)
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run(["/usr/bin/cat", str(watched / "secret")]).stdout == b"s3cret\n"
    assert workload.run(["/usr/bin/cat", "/etc/hostname"]).returncode == 0  # not under the prefix
    events = kprobe_events(engine, "fd_install")
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
    events = kprobe_events(engine, "security_file_permission")
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
    assert kprobe_events(engine, "security_file_permission") == []


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
        events = kprobe_events(engine, "tcp_connect")
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
    events = kprobe_events(engine, "commit_creds",
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
    # not a security_* function nor a syscall: fmod_ret cannot override it either (test_engine_lsm.py)
    doc = policy("override", {"kprobes": [{
        "call": "vfs_mkdir", "syscall": False,
        "selectors": [{"matchActions": [{"action": "Override", "argError": -1}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert not res.loaded
    assert "bpf_override_return" in res.reasons[0]
    with tempfile.TemporaryDirectory() as d:
        assert workload.run(["/usr/bin/mkdir", f"{d}/x"]).returncode == 0


def _events_until(engine: Engine, done: Callable[[list[dict[str, Any]]], bool],
                  timeout: float = 10.0) -> list[dict[str, Any]]:
    """The kprobe events polled until `done` holds for all of them so far (or the timeout)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out += [ev["process_kprobe"] for ev in engine.poll_events(0.2) if "process_kprobe" in ev]
        if done(out):
            break
    return out


def _of(events: list[dict[str, Any]], call: str) -> list[dict[str, Any]]:
    return [e for e in events if e["function_name"] == call]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_datagram_is_reported_from_its_headers_on_ip_output_and_the_device_it_leaves_by(
        engine: Engine, workload: Workload) -> None:
    # dns-only-specified-servers.yaml and dev_hard_start_xmit.yaml, narrowed to one port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]
        doc = policy("datagrams", {"kprobes": [
            {"call": "ip_output", "syscall": False, "args": [{"index": 2, "type": "skb"}],
             "selectors": [{"matchArgs": [{"index": 2, "operator": "Protocol", "values": ["IPPROTO_UDP"]},
                                          {"index": 2, "operator": "DPort", "values": [str(port)]},
                                          {"index": 2, "operator": "DAddr", "values": ["127.0.0.0/8"]}]}]},
            {"call": "dev_hard_start_xmit", "syscall": False,
             "args": [{"index": 0, "type": "skb"}, {"index": 1, "type": "net_device"}],
             "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["lo"]},
                                          {"index": 0, "operator": "DPort", "values": [str(port)]}]}]}]})
        res = engine.load(doc, "observe", cgroups=[workload.path])
        assert res.loaded, res.reasons
        code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0)); "
                f"s.sendto(b'hello', ('127.0.0.1', {port})); print(s.getsockname()[1])")
        done = workload.run([PY, "-c", code])
        assert done.returncode == 0, done.stderr
        sport = int(done.stdout)
        assert srv.recv(16) == b"hello"
    events = _events_until(engine, lambda evs: bool(_of(evs, "ip_output") and _of(evs, "dev_hard_start_xmit")))
    [out] = _of(events, "ip_output")
    skb = out["args"][0]["skb_arg"]
    skb.pop("hash", None)  # the flow hash, when the stack computed one
    # an IP packet at ip_output: 20 bytes of IP header, 8 of UDP, 5 of data
    assert skb == {"len": 33, "saddr": "127.0.0.1", "daddr": "127.0.0.1", "sport": sport, "dport": port,
                   "proto": 17, "protocol": "IPPROTO_UDP", "family": "AF_INET"}
    [xmit] = _of(events, "dev_hard_start_xmit")
    assert xmit["args"][1] == {"net_dev_arg": {"name": "lo"}}
    frame = xmit["args"][0]["skb_arg"]
    assert (frame["sport"], frame["dport"], frame["len"]) == (sport, port, 33 + 14)  # with its Ethernet header
    assert xmit["process"]["binary"] == os.path.realpath(PY)


_BPF_CALLS = r"""
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(321, cmd, buf, 128)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "bpf")
    return fd
# BPF_MAP_CREATE: a hash of 16 entries, u32 -> u64
bpf(0, struct.pack("<IIIIIII16s", 1, 4, 8, 16, 0, 0, 0, b"palisade_map"))
# BPF_PROG_LOAD: a socket filter of two instructions, r0 = 0; exit
insns = ctypes.create_string_buffer(bytes([0xb7] + [0] * 7 + [0x95] + [0] * 7))
gpl = ctypes.create_string_buffer(b"GPL")
bpf(5, struct.pack("<IIQQIIQII16s", 1, 2, ctypes.addressof(insns), ctypes.addressof(gpl), 0, 0, 0, 0, 0,
                   b"palisade_prog"))
"""


def test_a_bpf_map_and_program_a_workload_makes_are_reported_with_their_attributes(
        engine: Engine, workload: Workload) -> None:
    # policylibrary/bpf.yaml: the map hook of kernels before 6.9 and the one after, each ignored where missing
    doc = policy("bpf-objects", {"kprobes": [
        {"call": "bpf_check", "syscall": False, "args": [{"index": 1, "type": "bpf_attr"}]},
        {"call": "security_bpf_map_alloc", "syscall": False, "args": [{"index": 0, "type": "bpf_map"}],
         "ignore": {"callNotFound": True}},
        {"call": "security_bpf_map_create", "syscall": False, "args": [{"index": 0, "type": "bpf_map"}],
         "ignore": {"callNotFound": True}}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    done = workload.run([PY, "-c", _BPF_CALLS])
    assert done.returncode == 0, done.stderr
    events = _events_until(engine, lambda evs: bool(_of(evs, "bpf_check")
                                                    and [e for e in evs if "map" in e["function_name"]]))
    maps = [e["args"][0]["bpf_map_arg"] for e in events if e["function_name"].startswith("security_bpf_map_")]
    assert maps == [{"MapType": "BPF_MAP_TYPE_HASH", "KeySize": 4, "ValueSize": 8, "MaxEntries": 16,
                     "MapName": "palisade_map"}]
    [prog] = _of(events, "bpf_check")
    assert prog["args"] == [{"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2,
                                              "ProgName": "palisade_prog"}}]


def _capability_policy(name: str, cap: int) -> Any:
    # process-credentials/creds-capability-usage.yaml, on one capability
    return policy(name, {"kprobes": [{
        "call": "cap_capable", "syscall": False, "return": True,
        "args": [{"index": 1, "type": "user_namespace"}, {"index": 2, "type": "capability"}],
        "returnArg": {"index": 0, "type": "int"},
        "selectors": [{"matchArgs": [{"index": 2, "operator": "Equal", "values": [str(cap)]}]}]}]})


def test_cap_capable_reports_the_capability_a_root_process_uses_and_its_namespace(
        engine: Engine, workload: Workload) -> None:
    assert engine.load(_capability_policy("cap-nice", 23), "observe", cgroups=[workload.path]).loaded
    # lowering one's nice value takes CAP_SYS_NICE
    done = workload.run([PY, "-c", "import os; os.setpriority(os.PRIO_PROCESS, 0, -5)"])
    assert done.returncode == 0, done.stderr
    events = _events_until(engine, lambda evs: bool(_of(evs, "cap_capable")))
    assert events
    e = events[0]
    assert e["args"] == [{"user_ns_arg": {"level": 0, "uid": 0, "gid": 0,
                                          "ns": {"inum": os.stat("/proc/1/ns/user").st_ino, "is_host": True}}},
                         {"capability_arg": {"value": 23, "name": "CAP_SYS_NICE"}}]
    assert e["return"] == {"int_arg": 0}  # granted
    assert e["process"]["binary"] == os.path.realpath(PY)


_NEW_USER_NS = r"""
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x04000000) != 0:  # CLONE_NEWUSER | CLONE_NEWUTS
    raise OSError(ctypes.get_errno(), "unshare")
print(os.stat("/proc/self/ns/user").st_ino, flush=True)
socket.sethostname("palisade")  # CAP_SYS_ADMIN over the new UTS namespace, in the new user namespace
"""


def test_a_capability_checked_in_a_new_user_namespace_reports_that_namespace(
        engine: Engine, workload: Workload) -> None:
    assert engine.load(_capability_policy("cap-admin", 21), "observe", cgroups=[workload.path]).loaded
    done = workload.run([PY, "-c", _NEW_USER_NS])
    assert done.returncode == 0, done.stderr
    inum = int(done.stdout)

    def in_new_ns(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in evs if e["args"][0]["user_ns_arg"]["ns"].get("inum") == inum]

    events = in_new_ns(_events_until(engine, lambda evs: bool(in_new_ns(evs))))
    assert events
    # owned by the creator (root outside), one level below the host's; not the host's
    assert events[-1]["args"][0] == {"user_ns_arg": {"level": 1, "uid": 0, "gid": 0, "ns": {"inum": inum}}}
    assert events[-1]["args"][1] == {"capability_arg": {"value": 21, "name": "CAP_SYS_ADMIN"}}
    assert events[-1]["return"] == {"int_arg": 0}  # the namespace's creator has every capability in it


def test_security_socket_connect_reports_the_socket_and_the_kernels_copy_of_the_address(
        engine: Engine, workload: Workload) -> None:
    # security-socket-connect.yaml, with the socket argument of its block-others variant
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        doc = policy("socket-connect", {"kprobes": [{
            "call": "security_socket_connect", "syscall": False,
            "args": [{"index": 0, "type": "socket"}, {"index": 1, "type": "sockaddr"}, {"index": 2, "type": "int"}],
            "selectors": [{"matchArgs": [{"index": 0, "operator": "Protocol", "values": ["IPPROTO_TCP"]},
                                         {"index": 1, "operator": "Family", "values": ["AF_INET", "AF_INET6"]},
                                         {"index": 1, "operator": "SPort", "values": [str(port)]}]}]}]})
        res = engine.load(doc, "observe", cgroups=[workload.path])
        assert res.loaded, res.reasons
        done = workload.run([PY, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"])
        assert done.returncode == 0, done.stderr
        events = _events_until(engine, lambda evs: bool(_of(evs, "security_socket_connect")))
    [e] = events
    sock = e["args"][0]["sock_arg"]
    # not connected yet: no peer, and the state of a new socket
    assert (sock["family"], sock["type"], sock["protocol"]) == ("AF_INET", "SOCK_STREAM", "IPPROTO_TCP")
    assert (sock["daddr"], sock["dport"], sock["state"]) == ("0.0.0.0", 0, "TCP_CLOSE")
    assert e["args"][1] == {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": port}}
    assert e["args"][2] == {"int_arg": 16}  # sizeof(struct sockaddr_in)


_WRITES = r"""
import sys
d = sys.argv[1]
open(d + "/small", "wb").write(b"hello palisade")
open(d + "/big", "wb").write(b"x" * 300)
open(d + "/quiet", "wb").write(b"skip this")
"""


def test_a_char_buf_is_as_long_as_its_size_argument_says(engine: Engine, workload: Workload, watched: Path) -> None:
    # tty_54.yaml's arguments, on vfs_write, whose buffer and size are where tty_write's were
    doc = policy("writes", {"kprobes": [{
        "call": "vfs_write", "syscall": False,
        "args": [{"index": 0, "type": "file"}, {"index": 1, "type": "char_buf", "sizeArgIndex": 3},
                 {"index": 2, "type": "size_t"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": [str(watched) + "/"]},
                                     {"index": 1, "operator": "NotPrefix", "values": ["skip"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    done = workload.run([PY, "-c", _WRITES, str(watched)])
    assert done.returncode == 0, done.stderr
    events = _events_until(engine, lambda evs: len(_of(evs, "vfs_write")) >= 2)
    by_file = {os.path.basename(e["args"][0]["file_arg"]["path"]): e["args"] for e in events}
    assert set(by_file) == {"small", "big"}  # the buffer starting with "skip" is filtered out
    assert by_file["small"][1:] == [{"bytes_arg": _b64(b"hello palisade")}, {"size_arg": 14}]
    assert by_file["big"][1:] == [{"truncated_bytes_arg": {"bytes_arg": _b64(b"x" * 256), "orig_size": "300"}},
                                  {"size_arg": 300}]


def test_a_return_copy_buffer_holds_what_the_function_read(engine: Engine, workload: Workload,
                                                           watched: Path) -> None:
    doc = policy("reads", {"kprobes": [{
        "call": "vfs_read", "syscall": False, "return": True,
        "args": [{"index": 0, "type": "file"}, {"index": 1, "type": "char_buf", "returnCopy": True}],
        "returnArg": {"index": 0, "type": "size_t"},
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": [str(watched) + "/"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run(["/usr/bin/cat", str(watched / "secret")]).stdout == b"s3cret\n"
    events = _events_until(engine, lambda evs: any(e["return"] == {"size_arg": 7} for e in evs))
    [got] = [e for e in events if e["return"] == {"size_arg": 7}]
    assert got["args"][1] == {"bytes_arg": _b64(b"s3cret\n")}
    # the read at the end of the file: nothing read, nothing copied
    assert all(e["args"][1] == {"bytes_arg": ""} for e in events if e["return"] == {"size_arg": 0})


_TTY = r"""
import os, pty
master, slave = pty.openpty()
print(os.ttyname(slave), flush=True)
os.write(slave, b"palisade on a tty\n")
"""


def test_tty_write_reports_the_terminal_and_what_was_written_to_it(engine: Engine, workload: Workload) -> None:
    # tty.yaml: the kiocb's file and the iov_iter's data
    doc = policy("tty", {"kprobes": [{
        "call": "tty_write", "syscall": False,
        "args": [{"index": 0, "type": "kiocb"}, {"index": 1, "type": "iov_iter", "maxData": True}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["/dev/pts/"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    done = workload.run([PY, "-c", _TTY])
    assert done.returncode == 0, done.stderr
    tty = done.stdout.decode().strip()
    events = _events_until(engine, lambda evs: bool(_of(evs, "tty_write")))
    [e] = events
    assert e["args"][0]["file_arg"]["path"] == tty
    assert e["args"][0]["file_arg"]["permission"].startswith("c")  # a character device
    assert e["args"][1] == {"bytes_arg": _b64(b"palisade on a tty\n")}


def _fs_path(p: Path) -> str:
    """`p` as seen from the root of the file system it is on (what a dentry's path is); `p` itself may be a
    symlink."""
    p = Path(os.path.realpath(p.parent)) / p.name
    top = p
    while top.parent != top and os.stat(top.parent, follow_symlinks=False).st_dev == os.lstat(p).st_dev:
        top = top.parent
    return "/" + str(p.relative_to(top)) if top != p else "/"


def test_a_dentry_is_reported_with_its_path_in_its_file_system(engine: Engine, workload: Workload,
                                                               watched: Path) -> None:
    # security_inode_follow_link.yaml: the symlink being followed
    (watched / "link").symlink_to(watched / "secret")
    doc = policy("follow-link", {"kprobes": [{
        "call": "security_inode_follow_link", "syscall": False, "args": [{"index": 0, "type": "dentry"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Postfix", "values": [f"{watched.name}/link"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run(["/usr/bin/cat", str(watched / "link")]).stdout == b"s3cret\n"
    events = _events_until(engine, lambda evs: bool(_of(evs, "security_inode_follow_link")))
    assert events
    assert events[0]["args"] == [{"path_arg": {"path": _fs_path(watched / "link"), "permission": "lrwxrwxrwx"}}]


def test_a_perf_event_a_workload_opens_is_reported_with_its_kprobe(engine: Engine, workload: Workload) -> None:
    # policylibrary/bpf.yaml's perf event hook
    doc = policy("perf-events", {"kprobes": [{
        "call": "security_perf_event_alloc", "syscall": False, "args": [{"index": 0, "type": "perf_event"}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    code = "from bpf import syscall; syscall.perf_event_open_kprobe('fd_install')"
    done = workload.run([PY, "-c", code], cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    events = _events_until(engine, lambda evs: bool(_of(evs, "security_perf_event_alloc")))
    [e] = events
    pmu = int(Path("/sys/bus/event_source/devices/kprobe/type").read_text())
    types = ("HARDWARE", "SOFTWARE", "TRACEPOINT", "HW_CACHE", "RAW", "BREAKPOINT", "MAX")  # Tetragon's names
    assert e["args"] == [{"perf_event_arg": {"KprobeFunc": "fd_install",
                                             "Type": f"PERF_TYPE_{types[pmu]}" if pmu < len(types) else str(pmu)}}]

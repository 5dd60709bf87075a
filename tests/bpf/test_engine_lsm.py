"""LSM hooks and Override as a real in-kernel denial: BPF LSM programs, and fmod_ret on `security_*`
functions and syscall entries.

These need BPF LSM and fmod_ret, which the development machines do not load: they are marked
`stock_kernel("bpf_lsm", "fmod_ret")`, deselected where the probe finds either missing, and run in the
kernel matrix's Debian 6.1 guest (tests/vm/test_vm_engine.py), whose kernel has both but neither
bpf_override_return nor error injection, so fmod_ret cannot override syscalls there: the syscall
tests assert the refusal on such kernels and the denial elsewhere. Each policy is written as
Tetragon's examples write it (lsm_bprm_check.yaml, lsm_file_open.yaml, override-security.yaml,
hardlink-override.yaml), narrowed to files the test makes; each test triggers it from a workload and
asserts the errno the call failed with, what still works, and the event as Tetragon prints it.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import Workload, our_programs, policy, programs_gone, wait_events

from bpf.engine import Engine
from bpf.probe import probe

pytestmark = [pytest.mark.kernel, pytest.mark.stock_kernel("bpf_lsm", "fmod_ret")]

PY = sys.executable
REAL_PY = os.path.realpath(PY)


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="palisade-lsm-"))
    (d / "secret").write_text("s3cret\n")
    (d / "plain").write_text("plain\n")
    shutil.copy("/usr/bin/true", d / "true-copy")
    os.chmod(d / "true-copy", 0o755)
    yield d
    shutil.rmtree(d)


def _events(engine: Engine, kind: str, function: str, until: Any = lambda b: True) -> list[dict[str, Any]]:
    """The `kind` events (process_lsm, process_kprobe) of `function`, polled until one satisfies `until`."""
    def of(ev: dict[str, Any]) -> bool:
        body = ev.get(kind)
        return body is not None and body.get("function_name") == function

    events = wait_events(engine, lambda ev: of(ev) and until(ev[kind]))
    return [ev for ev in events if of(ev)]


def _errno_of(workload: Workload, code: str, *args: str) -> int:
    """Run `code` (Python, which raises OSError or not) in the workload: the errno it failed with, or 0."""
    prog = ("import ctypes, os, sys\n"
            "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) +
            "except OSError as e:\n    print(e.errno); sys.exit(0)\nprint(0)")
    done = workload.run([PY, "-c", prog, *args])
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_bprm_check_security_override_denies_the_exec_with_eperm(engine: Engine, workload: Workload,
                                                                 scratch: Path) -> None:
    # lsm_bprm_check.yaml: the caller's binary (matchBinaries) and the file it executes (matchArgs)
    target = str(scratch / "true-copy")
    doc = policy("lsm-exec", {"lsmhooks": [{
        "hook": "bprm_check_security", "args": [{"index": 0, "type": "linux_binprm"}],
        "selectors": [{"matchBinaries": [{"operator": "In", "values": [REAL_PY]}],
                       "matchArgs": [{"index": 0, "operator": "Equal", "values": [target]}],
                       "matchActions": [{"action": "Override", "argError": -1}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert _errno_of(workload, "os.execv(sys.argv[1], [sys.argv[1]])", target) == errno.EPERM
    with pytest.raises(PermissionError):  # subprocess's child is Python too: the exec fails in it
        workload.run([target])
    assert workload.run(["/usr/bin/true"]).returncode == 0  # another file
    assert workload.run(["/bin/sh", "-c", target]).returncode == 0  # another caller
    events = _events(engine, "process_lsm", "bprm_check_security")
    assert events
    ev, body = events[0], events[0]["process_lsm"]
    assert body["args"] == [{"linux_binprm_arg": {"path": target, "permission": "-rwxr-xr-x"}}]
    assert body["action"] == "KPROBE_ACTION_OVERRIDE"
    assert body["policy_name"] == "lsm-exec"
    assert body["process"]["binary"] == REAL_PY
    assert ev["palisade"]["acted"] is True


def test_file_open_override_denies_opens_under_a_prefix(engine: Engine, workload: Workload, scratch: Path) -> None:
    # lsm_file_open.yaml with a Prefix and Override (no argError: EPERM)
    doc = policy("lsm-open", {"lsmhooks": [{
        "hook": "file_open", "args": [{"index": 0, "type": "file"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": [f"{scratch}/sec"]}],
                       "matchActions": [{"action": "Override"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert _errno_of(workload, "open(sys.argv[1]).read()", str(scratch / "secret")) == errno.EPERM
    done = workload.run(["/usr/bin/cat", str(scratch / "secret")])
    assert done.returncode == 1 and b"Operation not permitted" in done.stderr and done.stdout == b""
    assert workload.run(["/usr/bin/cat", str(scratch / "plain")]).stdout == b"plain\n"  # not under the prefix
    assert (scratch / "secret").read_text() == "s3cret\n"  # outside the workload: untouched
    events = _events(engine, "process_lsm", "file_open")
    assert events
    body = events[0]["process_lsm"]
    assert body["args"][0]["file_arg"]["path"] == str(scratch / "secret")
    assert body["args"][0]["file_arg"]["permission"] == stat.filemode(os.stat(scratch / "secret").st_mode)
    assert body["action"] == "KPROBE_ACTION_OVERRIDE"
    assert {e["process_lsm"]["args"][0]["file_arg"]["path"] for e in events} == {str(scratch / "secret")}


def test_an_lsm_override_in_observe_mode_only_reports(engine: Engine, workload: Workload, scratch: Path) -> None:
    doc = policy("lsm-open-observe", {"lsmhooks": [{
        "hook": "file_open", "args": [{"index": 0, "type": "file"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal", "values": [str(scratch / "secret")]}],
                       "matchActions": [{"action": "Override", "argError": -1}]}]}]})
    assert engine.load(doc, "observe", cgroups=[workload.path]).loaded
    assert workload.run(["/usr/bin/cat", str(scratch / "secret")]).stdout == b"s3cret\n"
    [ev] = _events(engine, "process_lsm", "file_open")[:1]
    assert ev["process_lsm"]["action"] == "KPROBE_ACTION_OVERRIDE"
    assert ev["palisade"]["acted"] is False and ev["palisade"]["would_have_acted"] is True


def test_sigkill_on_an_lsm_hook_kills_the_caller(engine: Engine, workload: Workload, scratch: Path) -> None:
    doc = policy("lsm-open-kill", {"lsmhooks": [{
        "hook": "file_open", "args": [{"index": 0, "type": "file"}],
        "selectors": [{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/cat"]}],
                       "matchArgs": [{"index": 0, "operator": "Equal", "values": [str(scratch / "secret")]}],
                       "matchActions": [{"action": "Sigkill"}]}]}]})
    assert engine.load(doc, "enforced", cgroups=[workload.path]).loaded
    done = workload.run(["/usr/bin/cat", str(scratch / "secret")])
    assert done.returncode == -signal.SIGKILL and done.stdout == b""
    assert workload.run(["/usr/bin/head", str(scratch / "secret")]).stdout == b"s3cret\n"  # another binary
    [ev] = _events(engine, "process_lsm", "file_open")[:1]
    assert ev["process_lsm"]["action"] == "KPROBE_ACTION_SIGKILL"
    assert ev["process_lsm"]["process"]["binary"] == "/usr/bin/cat"


def test_fmod_ret_on_security_inode_mkdir_denies_with_the_arg_error(engine: Engine, workload: Workload,
                                                                    scratch: Path) -> None:
    # override-security.yaml: one binary's mkdirs are reported (the first selector decides), everyone else's
    # denied, here with EACCES
    doc = policy("security-override", {"kprobes": [{
        "call": "security_inode_mkdir", "syscall": False,
        "selectors": [{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/mkdir"]}]},
                      {"matchActions": [{"action": "Override", "argError": -13}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert _errno_of(workload, "os.mkdir(sys.argv[1])", str(scratch / "a")) == errno.EACCES
    done = workload.run(["/bin/sh", "-c", f"mkdir {scratch}/b; echo $?"])  # dash runs mkdir: allowed
    assert done.stdout == b"0\n", done.stderr
    assert sorted(p.name for p in scratch.iterdir() if p.is_dir()) == ["b"]
    os.mkdir(scratch / "c")  # outside the workload
    events = _events(engine, "process_kprobe", "security_inode_mkdir",
                     lambda b: b["action"] == "KPROBE_ACTION_POST")
    actions = {(e["process_kprobe"]["process"]["binary"], e["process_kprobe"]["action"]) for e in events}
    assert actions == {(REAL_PY, "KPROBE_ACTION_OVERRIDE"), ("/usr/bin/mkdir", "KPROBE_ACTION_POST")}, actions


def test_an_override_reading_the_socket_runs_on_security_socket_connect(engine: Engine, workload: Workload) -> None:
    # security-socket-connect-block-others.yaml: the socket's protocol is not in what the cgroup connect hooks
    # see, so the Override is fmod_ret on security_socket_connect; connect() returns what the function returned
    doc = policy("security-socket-connect", {"kprobes": [{
        "call": "security_socket_connect", "syscall": False,
        "args": [{"index": 0, "type": "socket"}, {"index": 1, "type": "sockaddr"}, {"index": 2, "type": "int"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Protocol", "values": ["IPPROTO_TCP"]},
                                     {"index": 1, "operator": "Family", "values": ["AF_INET", "AF_INET6"]}],
                       "matchBinaries": [{"operator": "In", "values": [REAL_PY]}],
                       "matchActions": [{"action": "Override", "argError": -13}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert [s.kind for h in engine.loaded()["security-socket-connect"].plan.hooks for s in h.sites] == ["fmod_ret"]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        tcp = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).close()"
        assert _errno_of(workload, tcp) == errno.EACCES
        udp = f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('127.0.0.1', {port}))"
        assert _errno_of(workload, udp) == 0  # not TCP: allowed
    finally:
        listener.close()
    (e,) = [ev["process_kprobe"] for ev in _events(engine, "process_kprobe", "security_socket_connect")][:1]
    assert e["action"] == "KPROBE_ACTION_OVERRIDE"
    sock = e["args"][0]["sock_arg"]
    assert (sock["family"], sock["type"], sock["protocol"]) == ("AF_INET", "SOCK_STREAM", "IPPROTO_TCP")
    assert e["args"][1]["sockaddr_arg"] == {"family": "AF_INET", "addr": "127.0.0.1", "port": port}


def test_an_override_with_return_reports_the_overridden_return(engine: Engine, workload: Workload,
                                                               scratch: Path) -> None:
    # `return: true` (as in cve-2023-2640-overlayfs-ubuntu.yaml): the entry denies, fexit sees the return
    doc = policy("mkdir-return", {"kprobes": [{
        "call": "security_inode_mkdir", "syscall": False, "return": True,
        "args": [{"index": 2, "type": "int"}], "returnArg": {"index": 0, "type": "int"},
        "selectors": [{"matchBinaries": [{"operator": "In", "values": [REAL_PY]}],
                       "matchActions": [{"action": "Override", "argError": -13}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert _errno_of(workload, "os.mkdir(sys.argv[1], 0o700)", str(scratch / "a")) == errno.EACCES
    assert workload.run(["/usr/bin/mkdir", str(scratch / "b")]).returncode == 0  # not matched: no event
    events = _events(engine, "process_kprobe", "security_inode_mkdir")
    assert [e["process_kprobe"]["return"] for e in events] == [{"int_arg": -errno.EACCES}]
    body = events[0]["process_kprobe"]
    assert body["args"] == [{"int_arg": 0o700}]
    assert body["action"] == "KPROBE_ACTION_OVERRIDE" and events[0]["palisade"]["acted"] is True
    assert engine.counters(res.key).enforced == 1


def test_override_with_sigkill_denies_and_kills(engine: Engine, workload: Workload, scratch: Path) -> None:
    # modules-nohost.yaml's actions (Override, then Sigkill) on mkdir, with its return reported
    doc = policy("mkdir-kill", {"kprobes": [{
        "call": "security_inode_mkdir", "syscall": False, "return": True, "returnArg": {"index": 0, "type": "int"},
        "selectors": [{"matchBinaries": [{"operator": "In", "values": [REAL_PY]}],
                       "matchActions": [{"action": "Override", "argError": -1}, {"action": "Sigkill"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    done = workload.run([PY, "-c", "import os, sys; os.mkdir(sys.argv[1]); print('made')", str(scratch / "a")])
    assert done.returncode == -signal.SIGKILL and b"made" not in done.stdout
    assert not (scratch / "a").exists()
    events = _events(engine, "process_kprobe", "security_inode_mkdir")
    assert [e["process_kprobe"]["return"] for e in events] == [{"int_arg": -errno.EPERM}]
    assert events[0]["process_kprobe"]["action"] == "KPROBE_ACTION_SIGKILL"
    assert engine.counters(res.key).enforced == 1  # one enforcement, counted once


def _refused_without_error_injection(engine: Engine, res: Any, workload: Workload, argv: list[str]) -> bool:
    """Where the kernel cannot override syscalls (no error injection: Debian's kernels), a syscall Override is
    refused with the probe's reason, leaves nothing, and the call works: True. Elsewhere False."""
    if probe().fmod_ret_syscall.available:
        return False
    assert not res.loaded
    assert "needs fmod_ret on the syscall's entry (error injection) or bpf_override_return" in res.reasons[0]
    assert "is not modifiable" in res.reasons[0], res.reasons  # the probe's words
    assert engine.loaded() == {}
    assert workload.run(argv).returncode == 0
    return True


def _linkat_of_the_secret_overridden(engine: Engine, workload: Workload, scratch: Path, name: str, call: str,
                                     args: list[dict[str, Any]]) -> bool:
    """Loads policy `name`: an enforced Override (-EPERM) of linkat entry `call` when its old path (arg 1) is
    scratch's `secret`. True once it is loaded; False where the kernel refused it for want of error
    injection (what that leaves checked by _refused_without_error_injection)."""
    secret = str(scratch / "secret")
    doc = policy(name, {"kprobes": [{
        "call": call, "syscall": True, "args": args,
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal", "values": [secret]}],
                       "matchActions": [{"action": "Override", "argError": -1}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    if _refused_without_error_injection(engine, res, workload, ["/usr/bin/ln", secret, str(scratch / "linked")]):
        return False
    assert res.loaded, res.reasons
    return True


def test_a_syscall_override_denies_linkat_where_the_kernel_allows_it(engine: Engine, workload: Workload,
                                                                    scratch: Path) -> None:
    # hardlink-override.yaml, on a file of the test's own
    if not _linkat_of_the_secret_overridden(engine, workload, scratch, "sys-linkat-secret", "sys_linkat", [
            {"index": 0, "type": "int"}, {"index": 1, "type": "string"}, {"index": 2, "type": "int"},
            {"index": 3, "type": "string"}, {"index": 4, "type": "int"}]):
        return
    secret = str(scratch / "secret")
    linkat = ("libc = ctypes.CDLL(None, use_errno=True)\n"
              "if libc.linkat(-100, sys.argv[1].encode(), -100, sys.argv[2].encode(), 0):\n"
              "    raise OSError(ctypes.get_errno(), 'linkat')")
    assert _errno_of(workload, linkat, secret, str(scratch / "stolen")) == errno.EPERM
    assert not (scratch / "stolen").exists()
    assert workload.run(["/usr/bin/ln", secret, str(scratch / "stolen-ln")]).returncode == 1  # ln uses linkat
    assert _errno_of(workload, linkat, str(scratch / "plain"), str(scratch / "plain-link")) == 0
    assert (scratch / "plain-link").read_text() == "plain\n"
    events = _events(engine, "process_kprobe", "sys_linkat")
    assert events
    body = events[0]["process_kprobe"]
    assert body["args"] == [{"int_arg": -100}, {"string_arg": secret}, {"int_arg": -100},
                            {"string_arg": str(scratch / "stolen")}, {"int_arg": 0}]
    assert body["action"] == "KPROBE_ACTION_OVERRIDE"


#: `int $0x80` with five arguments (ebx, ecx, edx, esi, edi), from code below 4 GiB, where the 32-bit
#: pointers of the call can reach the strings placed next to it.
_INT80_5 = r"""
import mmap
low = mmap.mmap(-1, 1 << 16, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40,  # MAP_32BIT
                prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
base = ctypes.addressof(ctypes.c_char.from_buffer(low))
def put(at, data):
    low[at:at + len(data)] = data
    return base + at
def int80(nr, *args):
    imm = lambda v: (v & 0xffffffff).to_bytes(4, 'little')
    a = [*args, 0, 0, 0, 0, 0][:5]
    code = (b'\x53\x56\x57' + b'\xb8' + imm(nr) + b''.join(op + imm(v) for op, v in zip(
        (b'\xbb', b'\xb9', b'\xba', b'\xbe', b'\xbf'), a)) + b'\xcd\x80\x5f\x5e\x5b\xc3')
    put(0, code)  # push rbx, rsi, rdi; mov eax, ebx, ecx, edx, esi, edi; int 0x80; pop rdi, rsi, rbx; ret
    return ctypes.CFUNCTYPE(ctypes.c_int)(base)()
"""


def test_a_32_bit_linkat_is_overridden_on_its_ia32_entry_where_the_kernel_allows_it(
        engine: Engine, workload: Workload, scratch: Path) -> None:
    if not _linkat_of_the_secret_overridden(engine, workload, scratch, "ia32-linkat", "__ia32_sys_linkat", [
            {"index": 0, "type": "int"}, {"index": 1, "type": "string"}, {"index": 3, "type": "string"}]):
        return
    secret = str(scratch / "secret")
    call = (_INT80_5 + "src = put(4096, sys.argv[1].encode() + b'\\0')\n"
            "dst = put(8192, sys.argv[2].encode() + b'\\0')\n"
            "print(int80(303, -100, src, -100, dst, 0))")  # ia32 linkat
    done = workload.run([PY, "-c", "import ctypes, sys\n" + call, secret, str(scratch / "stolen32")])
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == -errno.EPERM and not (scratch / "stolen32").exists()
    done = workload.run([PY, "-c", "import ctypes, sys\n" + call, str(scratch / "plain"), str(scratch / "p32")])
    assert int(done.stdout) == 0 and (scratch / "p32").exists()
    [ev] = _events(engine, "process_kprobe", "__ia32_sys_linkat")[:1]
    assert ev["process_kprobe"]["args"] == [{"int_arg": -100}, {"string_arg": secret},
                                            {"string_arg": str(scratch / "stolen32")}]


def test_an_lsmhook_on_a_hook_the_kernel_lacks_fails_and_leaves_nothing(engine: Engine, workload: Workload) -> None:
    before = our_programs()
    doc = policy("nowhere", {"lsmhooks": [{"hook": "palisade_no_such_hook",
                                           "selectors": [{"matchActions": [{"action": "Override"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert not res.loaded
    assert "load failed" in res.reasons[0] and "palisade_no_such_hook" in res.reasons[0], res.reasons
    assert engine.loaded() == {}
    assert programs_gone(our_programs() - before)

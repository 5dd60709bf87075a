"""Every built-in template against the sockets, syscalls and variants its name promises, on the real kernel.

Each case is one attempt made inside the workload (it must die with SIGKILL, or get
EPERM where the template denies) and the same attempt outside it (it must come back
normally, which proves the attempt reaches the kernel at all). The attempts call
the syscalls directly (x86_64 numbers), so no library wrapper picks another call.
"""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from engine_support import INT80, Workload

from bpf import templates
from bpf.engine import Engine
from bpf.policy import parse

pytestmark = pytest.mark.kernel

_PRELUDE = r"""
import ctypes, os, socket, struct, sys, tempfile
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
AT_FDCWD = -100
def sc(nr, *args):
    return libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
def clone_child(rc):
    # clone/clone3 without CLONE_VM return 0 in a child that copies this interpreter: leave at once
    if rc == 0:
        os._exit(0)
    if rc > 0:
        os.waitpid(rc, 0)
tmp = tempfile.mkdtemp()
def sleeper():
    import subprocess
    return subprocess.Popen(['sleep', '30'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""

#: template → (name, the attempt)
_CASES: dict[str, list[tuple[str, str]]] = {
    "block-mount-syscall": [
        ("fsopen", "sc(430, b'tmpfs', 0)"),
        ("fspick", "sc(433, AT_FDCWD, b'/', 0)"),
        ("fsconfig", "sc(431, -1, 0, 0, 0, 0)"),
        ("open_tree", "sc(428, AT_FDCWD, b'/', 0)"),
        ("mount_setattr", "sc(442, -1, b'', 0, 0, 0)"),
    ],
    "block-unshare": [
        ("clone_newuts", "clone_child(sc(56, 0x04000000 | 17, 0, 0, 0, 0))"),
        ("clone3_newuts", "args = struct.pack('<11Q', 0x04000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0)\n"
                          "clone_child(sc(435, args, len(args)))"),
        ("setns", "fd = os.open('/proc/self/ns/uts', os.O_RDONLY)\nsc(308, fd, 0)"),
    ],
    "block-user-namespace": [
        ("clone3_newuser", "args = struct.pack('<11Q', 0x10000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0)\n"
                           "clone_child(sc(435, args, len(args)))"),
        ("setns_newuser", "fd = os.open('/proc/self/ns/user', os.O_RDONLY)\nsc(308, fd, 0x10000000)"),
    ],
    "block-raw-sockets": [
        ("packet_raw", "socket.socket(17, socket.SOCK_RAW, 0)"),
        ("packet_dgram", "socket.socket(17, socket.SOCK_DGRAM, 0)"),
    ],
    "block-chmod-suid": [
        ("open_creat", "os.close(os.open(tmp + '/f', os.O_CREAT | os.O_WRONLY, 0o4755))"),
        ("creat", "os.close(sc(85, (tmp + '/f').encode(), 0o4755))"),
        ("mknod", "sc(133, (tmp + '/f').encode(), 0o100000 | 0o2755, 0)"),
        ("openat2", "how = struct.pack('<3Q', os.O_CREAT | os.O_WRONLY, 0o4755, 0)\n"
                    "os.close(sc(437, AT_FDCWD, (tmp + '/f').encode(), how, len(how)))"),
    ],
    "block-capset-sysadmin": [("ambient_raise", "sc(157, 47, 2, 21, 0, 0)")],  # prctl PR_CAP_AMBIENT_RAISE
    "kill-ptrace-attach": [
        ("seize", "c = sleeper()\n"
                  "try:\n    sc(101, 0x4206, c.pid, 0, 0)\nfinally:\n    c.kill()"),
        ("process_vm_readv", "c = sleeper()\n"
                             "buf = ctypes.create_string_buffer(8)\n"
                             "iov = struct.pack('<QQ', ctypes.addressof(buf), 8)\n"
                             "try:\n    sc(310, c.pid, iov, 1, iov, 1, 0)\nfinally:\n    c.kill()"),
    ],
}
_PARAMS = [(t, name, code) for t, cases in _CASES.items() for name, code in cases]


def _run(code: str, workload: Workload | None) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-c", _PRELUDE + code + "\nprint('returned')"]
    return workload.run(argv) if workload else subprocess.run(argv, capture_output=True, timeout=30)


@pytest.mark.parametrize(("template", "case", "code"), _PARAMS, ids=[f"{t}-{n}" for t, n, _ in _PARAMS])
def test_each_variant_the_template_promises_is_stopped_inside_the_workload(
        engine: Engine, workload: Workload, template: str, case: str, code: str) -> None:
    outside = _run(code, None)
    assert outside.stdout == b"returned\n", outside
    res = engine.load(parse(templates.render(template, "t")), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    inside = _run(code, workload)
    assert inside.returncode == -signal.SIGKILL, inside


def test_raw_sockets_of_both_inet_families_are_denied_and_netlink_is_not_a_raw_socket(
        engine: Engine, workload: Workload) -> None:
    res = engine.load(parse(templates.render("block-raw-sockets", "raw")), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    code = ("for fam in (socket.AF_INET, socket.AF_INET6):\n"
            "    try:\n        socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if fam == 10 else 1)\n"
            "    except PermissionError:\n        print('denied', fam)\n"
            "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\n")
    got = _run(code, workload)
    assert got.stdout == b"denied 2\ndenied 10\nreturned\n", got


def test_creating_a_file_without_the_setuid_bit_is_fine(engine: Engine, workload: Workload) -> None:
    res = engine.load(parse(templates.render("block-chmod-suid", "suid")), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    code = ("os.close(os.open(tmp + '/a', os.O_CREAT | os.O_WRONLY, 0o755))\n"
            "os.close(os.open(tmp + '/a', os.O_RDONLY, 0o4755))\n")  # no O_CREAT: the mode means nothing
    assert _run(code, workload).stdout == b"returned\n"



_IA32_CASES = [
    ("block-unshare", "unshare", "int80(310, 0x04000000)"),
    ("block-user-namespace", "unshare", "int80(310, 0x10000000)"),
    ("block-mount-syscall", "fsopen", "int80(430, low(b'tmpfs\\0'), 0)"),
    ("block-chmod-suid", "chmod", "open(tmp + '/f', 'w').close()\nint80(15, low((tmp + '/f\\0').encode()), 0o4755)"),
    ("block-chmod-suid", "fchmod", "fd = os.open(tmp, os.O_RDONLY)\nint80(94, fd, 0o4755)"),
    ("block-raw-sockets", "packet", "int80(359, 17, 3, 0)"),
    ("block-raw-sockets", "socketcall", "int80(102, 1, low(struct.pack('<3I', 17, 3, 0)))"),  # SYS_SOCKET
    ("block-bpf-load", "bpf", "int80(357, 5, 0, 0)"),
    ("block-memfd-create", "memfd_create", "int80(356, low(b'x\\0'), 0)"),
    ("block-pivot-root", "pivot_root", "int80(217, low(b'/\\0'), low(b'/\\0'))"),
    ("kill-ptrace-attach", "ptrace", "c = sleeper()\ntry:\n    int80(26, 16, c.pid)\nfinally:\n    c.kill()"),
]


@pytest.mark.parametrize(("template", "call", "code"), _IA32_CASES, ids=[f"{t}-{c}" for t, c, _ in _IA32_CASES])
def test_the_32_bit_syscall_abi_is_no_way_around_a_template(
        engine: Engine, workload: Workload, template: str, call: str, code: str) -> None:
    outside = _run(INT80 + code, None)
    assert outside.stdout == b"returned\n", outside
    res = engine.load(parse(templates.render(template, "t")), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    inside = _run(INT80 + code, workload)
    assert inside.returncode == -signal.SIGKILL, inside


def test_a_64_bit_call_that_shares_a_32_bit_number_is_not_mistaken_for_it(
        engine: Engine, workload: Workload) -> None:
    res = engine.load(parse(templates.render("block-unshare", "u")), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    # 310 is unshare on ia32 but process_vm_readv on x86_64 (here with nothing to read: returns at once)
    assert _run("sc(310, os.getpid(), 0, 0, 0, 0, 0)", workload).stdout == b"returned\n"

"""bpf.syscall against the real kernel: programs, perf-event and cgroup links, pins,
ids, object info, cgroup queries and map contents."""
from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf import syscall as sc
from bpf.syscall import AttachType, Insn, LinkType, MapType, ProgType, SyscallError

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers


def _counter_prog(map_fd: int) -> list[Insn]:
    """A tracepoint program adding 1 to slot 0 of an ARRAY(u32 -> u64) map."""
    return [
        Insn(0x62, dst=10, off=-4, imm=0),  # *(u32 *)(fp - 4) = 0
        Insn(0x18, dst=1, src=1, imm=map_fd),  # r1 = map (ld_imm64, pseudo map fd)
        Insn(0),
        Insn(0xBF, dst=2, src=10),  # r2 = fp
        Insn(0x07, dst=2, imm=-4),  # r2 -= 4
        Insn(0x85, imm=1),  # call bpf_map_lookup_elem
        Insn(0x15, dst=0, off=2, imm=0),  # if r0 == 0 goto +2
        Insn(0xB7, dst=1, imm=1),  # r1 = 1
        Insn(0xDB, dst=0, src=1, imm=0),  # lock *(u64 *)(r0) += r1
        Insn(0xB7, dst=0, imm=0),  # r0 = 0
        Insn(0x95),  # exit
    ]


def _return(value: int) -> list[Insn]:
    return [Insn(0xB7, dst=0, imm=value), Insn(0x95)]


def _count(map_fd: int) -> int:
    value = sc.map_lookup_elem(map_fd, struct.pack("I", 0), 8)
    assert value is not None
    return int(struct.unpack("Q", value)[0])


@pytest.fixture()
def counter(require_kernel: None) -> Iterator[tuple[int, int]]:
    """(map fd, prog fd) of a loaded counter program."""
    map_fd = sc.map_create(MapType.BPF_MAP_TYPE_ARRAY, 4, 8, 1, name="pal_test_cnt")
    prog_fd = sc.prog_load(ProgType.BPF_PROG_TYPE_TRACEPOINT, _counter_prog(map_fd), name="pal_test_cnt")
    yield map_fd, prog_fd
    os.close(prog_fd)
    os.close(map_fd)


# ---------------------------------------------------------------- pure


def test_insn_encoding_matches_struct_bpf_insn() -> None:
    # r1 = r10 is code 0xbf, dst in the low nibble, src in the high nibble.
    assert Insn(0xBF, dst=1, src=10).pack() == bytes([0xBF, 0xA1, 0, 0, 0, 0, 0, 0])
    assert Insn(0x07, dst=2, imm=-4).pack() == bytes([0x07, 0x02, 0, 0]) + struct.pack("<i", -4)
    assert Insn(0x15, dst=0, off=-2).pack()[2:4] == struct.pack("<h", -2)


def test_error_says_what_was_attempted() -> None:
    e = SyscallError(errno.EPERM, "BPF_LINK_CREATE (prog fd 5 -> cgroup fd 7)")
    assert isinstance(e, OSError)
    assert e.errno == errno.EPERM
    assert str(e) == "[Errno 1] Operation not permitted: BPF_LINK_CREATE (prog fd 5 -> cgroup fd 7)"


# ---------------------------------------------------------------- kernel


def test_verifier_rejection_carries_errno_and_log(require_kernel: None) -> None:
    with pytest.raises(SyscallError) as info:
        sc.prog_load(ProgType.BPF_PROG_TYPE_TRACEPOINT, [Insn(0x95)])  # exit without setting r0
    assert info.value.errno == errno.EACCES
    assert "BPF_PROG_LOAD" in str(info.value)
    assert "R0 !read_ok" in info.value.log


def test_missing_object_is_enoent(require_kernel: None) -> None:
    with pytest.raises(SyscallError) as info:
        sc.obj_get("/sys/fs/bpf/palisade-no-such-pin")
    assert info.value.errno == errno.ENOENT
    assert "/sys/fs/bpf/palisade-no-such-pin" in str(info.value)
    with pytest.raises(SyscallError) as info:
        sc.tracepoint_id("syscalls", "sys_enter_no_such_call")
    assert info.value.errno == errno.ENOENT


def test_perf_event_needs_a_cpu_when_tracing_all_processes(require_kernel: None) -> None:
    tp = sc.tracepoint_id("syscalls", "sys_enter_getppid")
    with pytest.raises(SyscallError) as info:
        sc.perf_event_open_tracepoint(tp, cpu=-1)
    assert info.value.errno == errno.EINVAL


def test_one_perf_event_link_counts_hits_on_every_cpu(counter: tuple[int, int]) -> None:
    map_fd, prog_fd = counter
    perf_fd = sc.perf_event_open_tracepoint(sc.tracepoint_id("syscalls", "sys_enter_getppid"), cpu=0)
    link_fd = sc.link_create_perf_event(prog_fd, perf_fd)
    saved = os.sched_getaffinity(0)
    try:
        for cpu in sorted(saved):
            os.sched_setaffinity(0, {cpu})
            before = _count(map_fd)
            for _ in range(50):
                os.getppid()
            # Other processes may call getppid too, hence >=.
            assert _count(map_fd) - before >= 50, f"no hits counted on CPU {cpu}"
        info = sc.link_info(link_fd)
        assert info.type == LinkType.BPF_LINK_TYPE_PERF_EVENT
        assert info.perf_event_type == sc.PerfEventType.BPF_PERF_EVENT_TRACEPOINT
        assert info.target_name == "sys_enter_getppid"
        assert info.prog_id == sc.prog_info(prog_fd).id
        assert sc.obj_id(link_fd) == info.id
    finally:
        os.sched_setaffinity(0, saved)
        os.close(link_fd)
        os.close(perf_fd)
    before = _count(map_fd)
    os.getppid()
    os.getppid()
    # Closing the only link fd detached the program.
    assert _count(map_fd) - before < 2


def test_pinned_link_outlives_the_loader_and_unlinking_detaches(pin_dir: Path) -> None:
    loader = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_syscall import _counter_prog
        from bpf import syscall as sc
        m = sc.map_create(sc.MapType.BPF_MAP_TYPE_ARRAY, 4, 8, 1, name="pal_test_cnt")
        p = sc.prog_load(sc.ProgType.BPF_PROG_TYPE_TRACEPOINT, _counter_prog(m))
        pe = sc.perf_event_open_tracepoint(sc.tracepoint_id("syscalls", "sys_enter_getppid"))
        link = sc.link_create_perf_event(p, pe)
        sc.obj_pin(m, {str(pin_dir / "map")!r})
        sc.obj_pin(link, {str(pin_dir / "link")!r})
        """
    )
    subprocess.run([sys.executable, "-c", loader], check=True, timeout=60)
    map_fd = sc.obj_get(pin_dir / "map")
    try:
        before = _count(map_fd)
        for _ in range(20):
            os.getppid()
        assert _count(map_fd) - before >= 20
        (pin_dir / "link").unlink()
        # The pin's inode is freed after an RCU grace period, so the detach is not
        # instant (link_detach before unlinking is); it must happen within moments.
        deadline = time.monotonic() + 5
        while True:
            before = _count(map_fd)
            os.getppid()
            os.getppid()
            if _count(map_fd) - before < 2:
                break
            assert time.monotonic() < deadline, "the program still runs after its pin was unlinked"
            time.sleep(0.05)
    finally:
        os.close(map_fd)


def test_pin_and_get_return_the_same_objects(counter: tuple[int, int], pin_dir: Path) -> None:
    map_fd, prog_fd = counter
    sc.obj_pin(prog_fd, pin_dir / "prog")
    sc.obj_pin(map_fd, pin_dir / "map")
    prog2, map2 = sc.obj_get(pin_dir / "prog"), sc.obj_get(pin_dir / "map")
    try:
        prog = sc.prog_info(prog2)
        assert prog == sc.prog_info(prog_fd)
        assert prog.name == "pal_test_cnt"
        assert prog.type_name == "tracepoint"
        assert len(prog.tag) == 16
        assert prog.map_ids == (sc.map_info(map_fd).id,)
        assert sc.map_info(map2) == sc.map_info(map_fd)
        assert sc.map_info(map2).type_name == "array"
        assert sc.obj_id(prog2) == prog.id
        assert sc.obj_id(map2) == sc.map_info(map_fd).id
    finally:
        os.close(prog2)
        os.close(map2)


def test_ids_walk_finds_our_objects(counter: tuple[int, int]) -> None:
    map_fd, prog_fd = counter
    prog_id, map_id = sc.prog_info(prog_fd).id, sc.map_info(map_fd).id
    assert prog_id in list(sc.prog_ids())
    assert map_id in list(sc.map_ids())
    assert sc.prog_get_next_id(prog_id - 1) == prog_id
    fd = sc.prog_get_fd_by_id(prog_id)
    try:
        assert sc.prog_info(fd).id == prog_id
    finally:
        os.close(fd)
    fd = sc.map_get_fd_by_id(map_id)
    os.close(fd)
    assert sc.link_get_next_id(2**31 - 2) is None  # ids stay below INT_MAX
    with pytest.raises(SyscallError) as info:
        sc.link_get_fd_by_id(2**32 - 1)
    assert info.value.errno == errno.ENOENT


def test_map_contents_roundtrip(require_kernel: None) -> None:
    fd = sc.map_create(MapType.BPF_MAP_TYPE_HASH, 4, 8, 16, name="pal_test_hash")
    try:
        assert sc.map_lookup_elem(fd, b"\0\0\0\1", 8) is None
        for k in range(3):
            sc.map_update_elem(fd, struct.pack("I", k), struct.pack("Q", k * 10))
        assert sc.map_lookup_elem(fd, struct.pack("I", 2), 8) == struct.pack("Q", 20)
        assert sorted(sc.map_items(fd)) == [(struct.pack("I", k), struct.pack("Q", k * 10)) for k in range(3)]
        assert sc.map_delete_elem(fd, struct.pack("I", 1)) is True
        assert sc.map_delete_elem(fd, struct.pack("I", 1)) is False
        assert sorted(sc.map_keys(fd, 4)) == [struct.pack("I", 0), struct.pack("I", 2)]
        with pytest.raises(SyscallError) as info:
            sc.map_update_elem(fd, struct.pack("I", 0), struct.pack("Q", 1), flags=1)  # BPF_NOEXIST
        assert info.value.errno == errno.EEXIST
    finally:
        os.close(fd)


def test_percpu_values_cover_every_possible_cpu(require_kernel: None) -> None:
    fd = sc.map_create(MapType.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 4, 1)
    try:
        ((key, value),) = list(sc.map_items(fd))
        assert key == b"\0\0\0\0"
        assert len(value) == 8 * sc.possible_cpus()
    finally:
        os.close(fd)


def _connect_in(cgroup: Path | None, port: int) -> int:
    """errno of connect() to 127.0.0.1:port from a child (in `cgroup` if given), 0 on success."""
    code = textwrap.dedent(
        f"""
        import socket, sys
        s = socket.socket()
        sys.exit(s.connect_ex(("127.0.0.1", {port})))
        """
    )

    def enter() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.run([sys.executable, "-c", code], preexec_fn=enter, timeout=60).returncode


def test_cgroup_connect4_link_denies_inside_only_and_query_sees_it(cgroup: Path) -> None:
    at = AttachType.BPF_CGROUP_INET4_CONNECT
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    prog_fd = sc.prog_load(ProgType.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, _return(0), expected_attach_type=at)
    link_fd = sc.link_create_cgroup(prog_fd, cg_fd, at)
    try:
        assert _connect_in(cgroup, port) == errno.EPERM
        assert _connect_in(None, port) == 0
        prog_id = sc.prog_info(prog_fd).id
        assert sc.prog_query(cg_fd, at).prog_ids == (prog_id,)
        info = sc.link_info(link_fd)
        assert info.type == LinkType.BPF_LINK_TYPE_CGROUP
        assert info.attach_type == at
        assert info.cgroup_id == os.stat(cgroup).st_ino
        sc.link_detach(link_fd)
        assert sc.prog_query(cg_fd, at).prog_ids == ()
        assert _connect_in(cgroup, port) == 0
    finally:
        os.close(link_fd)
        os.close(prog_fd)
        os.close(cg_fd)
        server.close()


def test_cgroup_sock_create_link_denies_socket_creation(cgroup: Path) -> None:
    at = AttachType.BPF_CGROUP_INET_SOCK_CREATE
    cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    prog_fd = sc.prog_load(ProgType.BPF_PROG_TYPE_CGROUP_SOCK, _return(0), expected_attach_type=at)
    link_fd = sc.link_create_cgroup(prog_fd, cg_fd, at)
    code = "import socket\ntry:\n    socket.socket()\nexcept PermissionError:\n    raise SystemExit(1)\n"

    def enter() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    try:
        assert subprocess.run([sys.executable, "-c", code], preexec_fn=enter, timeout=60).returncode == 1
        assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    finally:
        os.close(link_fd)
        os.close(prog_fd)
        os.close(cg_fd)

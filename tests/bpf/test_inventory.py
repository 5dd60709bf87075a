"""bpf.inventory sees what is really in the kernel, and sees it go.

Other tests may load programs concurrently, so assertions are about the objects
this test created (by id), never about the whole kernel being unchanged.
"""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from bpf import inventory as inv
from bpf import syscall as sc
from bpf.syscall import AttachType, Insn, MapType, ProgType


def _counter_prog(map_fd: int) -> list[Insn]:
    return [
        Insn(0x62, dst=10, off=-4, imm=0),
        Insn(0x18, dst=1, src=1, imm=map_fd),
        Insn(0),
        Insn(0xBF, dst=2, src=10),
        Insn(0x07, dst=2, imm=-4),
        Insn(0x85, imm=1),
        Insn(0x15, dst=0, off=2, imm=0),
        Insn(0xB7, dst=1, imm=1),
        Insn(0xDB, dst=0, src=1, imm=0),
        Insn(0xB7, dst=0, imm=0),
        Insn(0x95),
    ]


def _ours(d: inv.InventoryDiff, prog_ids: set[int], link_ids: set[int], pin_root: Path) -> list[object]:
    """Everything in a diff that belongs to this test's objects."""
    found: list[object] = []
    found += [p for p in (*d.added_programs, *d.removed_programs) if p.id in prog_ids]
    found += [link for link in (*d.added_links, *d.removed_links) if link.id in link_ids]
    found += [a for a in (*d.added_attachments, *d.removed_attachments) if set(a.prog_ids) & prog_ids]
    found += [p for p in (*d.added_pins, *d.removed_pins) if p.path.startswith(str(pin_root))]
    return found


def test_inventory_sees_programs_links_attachments_pins_and_their_removal(
    pin_dir: Path, cgroup: Path
) -> None:
    before = inv.inventory(pin_root=pin_dir)
    map_fd = sc.map_create(MapType.BPF_MAP_TYPE_ARRAY, 4, 8, 1, name="pal_inv_cnt")
    tp_prog = sc.prog_load(ProgType.BPF_PROG_TYPE_TRACEPOINT, _counter_prog(map_fd), name="pal_inv_tp")
    perf = sc.perf_event_open_tracepoint(sc.tracepoint_id("syscalls", "sys_enter_getppid"))
    tp_link = sc.link_create_perf_event(tp_prog, perf)
    at = AttachType.BPF_CGROUP_INET4_CONNECT
    cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    cg_prog = sc.prog_load(ProgType.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, [Insn(0xB7, dst=0, imm=1), Insn(0x95)],
                           name="pal_inv_cg", expected_attach_type=at)
    cg_link = sc.link_create_cgroup(cg_prog, cg_fd, at)
    (pin_dir / "pol").mkdir()
    sc.obj_pin(tp_link, pin_dir / "pol" / "link_exec")
    sc.obj_pin(cg_link, pin_dir / "pol" / "link_connect")
    sc.obj_pin(map_fd, pin_dir / "pol" / "map_counts")
    tp_id, cg_id = sc.prog_info(tp_prog).id, sc.prog_info(cg_prog).id
    ids = {tp_id, cg_id}
    links = {sc.link_info(tp_link).id, sc.link_info(cg_link).id}
    map_id = sc.map_info(map_fd).id
    for fd in (tp_link, perf, cg_link, cg_prog, tp_prog, map_fd):
        os.close(fd)  # from here on only the pins hold everything

    during = inv.inventory(pin_root=pin_dir, digest=[pin_dir / "pol" / "map_counts"])
    d = inv.diff(before, during)
    added = {p.id: p for p in d.added_programs}
    assert added[tp_id].name == "pal_inv_tp"
    assert added[tp_id].type == "tracepoint"
    assert added[tp_id].map_ids == (map_id,)
    assert added[cg_id].type == "cgroup_sock_addr"
    by_prog = {link.prog_id: link for link in d.added_links}
    assert by_prog[tp_id].type == "perf_event"
    assert by_prog[tp_id].target == "sys_enter_getppid"
    assert by_prog[cg_id].type == "cgroup"
    assert by_prog[cg_id].attach_type == "cgroup_inet4_connect"
    assert by_prog[cg_id].cgroup_id == os.stat(cgroup).st_ino
    assert inv.CgroupAttachment(f"/{cgroup.name}", os.stat(cgroup).st_ino, "cgroup_inet4_connect",
                                (cg_id,)) in d.added_attachments
    assert sorted((p.path.removeprefix(str(pin_dir)), p.kind) for p in d.added_pins) == [
        ("/pol/link_connect", "link"), ("/pol/link_exec", "link"), ("/pol/map_counts", "map")]
    assert {p.id for p in d.added_pins} == links | {map_id}
    (digest,) = during.maps
    assert digest.id == map_id
    assert digest.entries == 1

    # Detaching a link behind our back is drift the inventory shows.
    fd = sc.obj_get(pin_dir / "pol" / "link_connect")
    sc.link_detach(fd)
    os.close(fd)
    detached = inv.inventory(pin_root=pin_dir)
    d = inv.diff(during, detached)
    (change,) = [c for c in d.changed_links if c.before.prog_id == cg_id]
    assert change.after.cgroup_id == 0
    assert [a.prog_ids for a in d.removed_attachments if cg_id in a.prog_ids] == [(cg_id,)]

    shutil.rmtree(pin_dir / "pol")
    # Unpinned objects are freed after an RCU grace period: wait for the kernel to agree.
    assert inv.wait_until_gone(ids, links, {map_id}, timeout=5)
    after = inv.inventory(pin_root=pin_dir)
    assert _ours(inv.diff(before, after), ids, links, pin_dir) == []
    assert not ids & {p.id for p in after.programs}
    assert after.pins == ()


def test_map_digest_follows_contents(require_kernel: None) -> None:
    fd = sc.map_create(MapType.BPF_MAP_TYPE_HASH, 4, 4, 8, name="pal_inv_dig")
    try:
        map_id = sc.map_info(fd).id
        empty = inv.map_digest(map_id)
        assert empty.entries == 0
        assert empty.type == "hash"
        sc.map_update_elem(fd, struct.pack("I", 1), struct.pack("I", 7))
        sc.map_update_elem(fd, struct.pack("I", 2), struct.pack("I", 9))
        one = inv.map_digest(map_id)
        assert one.sha256 != empty.sha256
        assert one.entries == 2
        assert inv.map_digest(map_id) == one  # stable while nothing changes
        sc.map_update_elem(fd, struct.pack("I", 2), struct.pack("I", 10))
        altered = inv.map_digest(map_id)
        assert altered.sha256 != one.sha256
        snap_a = inv.Inventory((), (), (), (), (one,))
        snap_b = inv.Inventory((), (), (), (), (altered,))
        assert inv.diff(snap_a, snap_b).changed_maps == (inv.Change(one, altered),)
        sc.map_update_elem(fd, struct.pack("I", 2), struct.pack("I", 9))
        assert inv.map_digest(map_id) == one  # same contents, same digest
    finally:
        os.close(fd)


def test_map_digest_of_a_ring_buffer_covers_its_shape(require_kernel: None) -> None:
    fd = sc.map_create(MapType.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    try:
        digest = inv.map_digest(sc.map_info(fd).id)
        assert digest.entries is None
        assert digest.type == "ringbuf"
    finally:
        os.close(fd)


def test_diff_of_equal_snapshots_is_empty() -> None:
    prog = inv.Program(1, "tracepoint", "x", "00" * 8, (), 5)
    snap = inv.Inventory((prog,), (), (), ())
    assert inv.diff(snap, snap).empty
    assert not inv.diff(snap, snap)
    moved = inv.Inventory((inv.Program(1, "tracepoint", "x", "11" * 8, (), 5),), (), (), ())
    d = inv.diff(snap, moved)
    assert d.changed_programs == (inv.Change(prog, moved.programs[0]),)
    assert inv.diff(snap, inv.Inventory((), (), (), ())).removed_programs == (prog,)


def test_wait_until_gone_reports_objects_that_stay(require_kernel: None) -> None:
    fd = sc.map_create(MapType.BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    try:
        map_id = sc.map_info(fd).id
        assert inv.wait_until_gone(map_ids=[map_id], timeout=0.05) is False
    finally:
        os.close(fd)
    assert inv.wait_until_gone(map_ids=[map_id], timeout=5) is True

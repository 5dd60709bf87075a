"""Decoding the sensor's records and rendering them as Tetragon renders its events (pure logic)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bpf.core import procfs, records
from bpf.core.errors import RecordError
from bpf.core.records import F_CACHED, F_CLONE, F_ROOTCWD, KIND_EXEC, KIND_EXIT, Clock, ExecRecord, ProcessTable


def raw(kind: int, pid: int, ktime: int, *, ppid: int = 1, pktime: int = 5, exit_code: int = 0, flags: int = 0,
        binary: bytes = b"/usr/bin/id", cwd: bytes = b"/", args: bytes = b"", cgroup_id: int = 0,
        caps: tuple[int, int, int] = (0, 0, 0), ns: tuple[int, ...] = records.NO_NS) -> bytes:
    hdr = records.HEADER.pack(kind, pid, pid, ppid, ktime, pktime, 7, ktime + 1, 1000, 0, 4294967295, exit_code,
                              flags, len(binary), len(cwd), len(args), 0, 0, cgroup_id, *caps, *ns, pid, 0)
    return hdr + binary + cwd + args


CLOCK = Clock(offset_ns=1_700_000_000 * 10**9)


def test_exec_record_decodes_with_argv0_dropped() -> None:
    rec = records.decode(raw(KIND_EXEC, 42, 1000, args=b"id\0-u\0a b\0", flags=F_CLONE | F_ROOTCWD))
    assert isinstance(rec, ExecRecord)
    assert (rec.pid, rec.binary, rec.cwd, rec.args, rec.uid) == (42, "/usr/bin/id", "/", ("-u", "a b"), 1000)
    proc = records.process_json(rec, "node", CLOCK)
    assert proc["arguments"] == '-u "a b"'
    assert proc["flags"] == "execve rootcwd clone"
    assert proc["start_time"] == "2023-11-14T22:13:20.000001000Z"


def test_exec_id_is_computed_as_tetragon_does() -> None:
    # from the corpus sample: gke-john-632-default-pool-7041cac0-9s95:13548674321373:52699
    assert records.exec_id("gke-john-632-default-pool-7041cac0-9s95", 13548674321373, 52699) == (
        "Z2tlLWpvaG4tNjMyLWRlZmF1bHQtcG9vbC03MDQxY2FjMC05czk1OjEzNTQ4Njc0MzIxMzczOjUyNjk5")


@pytest.mark.parametrize(("exit_code", "signal", "status"), [(9, "SIGKILL", None), (3 << 8, None, 3), (0, None, None)])
def test_exit_signal_and_status(exit_code: int, signal: str | None, status: int | None) -> None:
    rec = records.decode(raw(KIND_EXIT, 42, 1000, exit_code=exit_code, flags=F_CACHED, cwd=b""))
    body = records.exit_event(rec, None, None, "n", CLOCK)["process_exit"]  # type: ignore[arg-type]
    assert (body.get("signal"), body.get("status")) == (signal, status)
    assert body["process"]["binary"] == "/usr/bin/id"


def test_an_unknown_signal_number_still_has_a_name() -> None:
    assert records.signal_name(99) == "SIG99"


@pytest.mark.parametrize("data", [b"short", raw(9, 1, 1), raw(KIND_EXEC, 1, 1)[:-3]])
def test_malformed_records_are_refused(data: bytes) -> None:
    with pytest.raises(RecordError):
        records.decode(data)


def test_the_table_fills_parents_and_exits_and_forgets_replaced_images() -> None:
    table = ProcessTable("n", CLOCK, linger=1)
    parent = records.decode(raw(KIND_EXEC, 10, 100, binary=b"/usr/bin/dash"))
    child = records.decode(raw(KIND_EXEC, 11, 200, ppid=10, pktime=100))
    table.render(parent)
    ev = table.render(child)["process_exec"]
    assert ev["parent"]["binary"] == "/usr/bin/dash"
    assert ev["process"]["parent_exec_id"] == ev["parent"]["exec_id"]
    # exec in place: pid 11 becomes a new image whose parent is the old one
    again = records.decode(raw(KIND_EXEC, 11, 300, ppid=11, pktime=200, binary=b"/usr/bin/true"))
    assert table.render(again)["process_exec"]["parent"]["binary"] == "/usr/bin/id"
    ended = records.decode(raw(KIND_EXIT, 11, 300, ppid=11, pktime=200, exit_code=9, flags=F_CACHED, cwd=b""))
    out = table.render(ended)["process_exit"]
    assert out["process"]["binary"] == "/usr/bin/true" and out["signal"] == "SIGKILL"
    assert table.get(11, 200) is not None  # the replaced image is kept while its successor is
    for i in range(3):  # `linger` more releases after the successor's: both go
        table.render(records.decode(raw(KIND_EXEC, 50 + i, 400 + i)))
        table.render(records.decode(raw(KIND_EXIT, 50 + i, 400 + i, flags=F_CACHED, cwd=b"")))
    assert table.get(11, 300) is None and table.get(11, 200) is None
    json.dumps(out)  # plain JSON types only


def test_proc_stat_with_a_hostile_comm() -> None:
    stat = "1234 (a) (b c) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200"
    assert procfs.parse_stat(stat) == (77, 98765)


def test_proc_status_ids() -> None:
    assert procfs.parse_ids("Name:\tx\nUid:\t1000\t0\t0\t0\n", "Uid") == (1000, 0)


def test_seeded_processes_render_as_procfs() -> None:
    rec = ExecRecord(pid=5, tid=5, ppid=1, ktime=10, parent_ktime=2, task_start=10, event_time=10, uid=0, euid=0,
                     auid=0, flags=records.F_PROCFS | F_ROOTCWD, binary="/usr/sbin/sshd", cwd="/", args=())
    assert records.process_json(rec, "n", CLOCK)["flags"] == "procFS rootcwd"
    assert records.process_json(replace(rec, flags=rec.flags | records.F_NEEDS_AUID), "n", CLOCK)["flags"] == (
        "procFS auid rootcwd")  # as Tetragon prints a process it found in /proc
    value = procfs.cache_value(rec)
    assert len(value) == procfs.ENTRY.size and value.endswith(bytes(procfs.CACHE_BIN - len("/usr/sbin/sshd")))


def test_the_cgroup_id_is_decoded_for_exec_and_exit() -> None:
    ex = records.decode(raw(KIND_EXEC, 42, 1000, cgroup_id=12345))
    ended = records.decode(raw(KIND_EXIT, 42, 1000, cgroup_id=67890, cwd=b""))
    assert (ex.cgroup_id, ended.cgroup_id) == (12345, 67890)


def test_proc_cgroup_v2_line() -> None:
    assert procfs.parse_cgroup("12:cpu:/x\n0::/system.slice/ssh.service\n") == "/system.slice/ssh.service"
    assert procfs.parse_cgroup("12:cpu:/x\n") is None


def test_a_cgroup_id_is_the_inode_of_its_directory(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert procfs.cgroup_id(tmp_path, "/a/b") == (tmp_path / "a" / "b").stat().st_ino
    assert procfs.cgroup_id(tmp_path, "/gone") == 0 and procfs.cgroup_id(None, "/a") == 0


HOST_NS = tuple(4026531835 + i for i in range(len(records.NS_NAMES)))


def test_caps_and_namespaces_render_as_tetragon_prints_them() -> None:
    # CAP_CHOWN, CAP_DAC_OVERRIDE (Tetragon's enum says DAC_OVERRIDE), CAP_NET_RAW, CAP_SYS_ADMIN
    mask = 1 << 0 | 1 << 1 | 1 << 13 | 1 << 21
    ns = (*HOST_NS[:5], 4026532999, *HOST_NS[6:])  # its own network namespace
    rec = records.decode(raw(KIND_EXEC, 42, 1000, caps=(mask, 1 << 13, 0), ns=ns))
    proc = records.process_json(rec, "n", CLOCK, HOST_NS)  # type: ignore[arg-type]
    assert proc["cap"] == {"permitted": ["CAP_CHOWN", "DAC_OVERRIDE", "CAP_NET_RAW", "CAP_SYS_ADMIN"],
                           "effective": ["CAP_NET_RAW"]}  # an empty set is left out
    assert proc["ns"]["net"] == {"inum": 4026532999}  # is_host false is left out, as protojson does
    assert all(proc["ns"][n] == {"inum": HOST_NS[i], "is_host": True}
               for i, n in enumerate(records.NS_NAMES) if n != "net")
    assert list(proc)[-3:] == ["cap", "ns", "tid"]  # tetragon.proto's field order
    assert records.cap_names(1 << 40 | 1 << 45) == ["CAP_CHECKPOINT_RESTORE", 45]  # unknown: its number
    nothing = records.process_json(records.decode(raw(KIND_EXEC, 43, 1000)), "n", CLOCK)  # type: ignore[arg-type]
    assert nothing["cap"] == {} and "ns" not in nothing


def test_ancestors_are_the_parents_parent_first_up_to_init() -> None:
    table = ProcessTable("n", CLOCK, linger=1)
    chain = [records.decode(raw(KIND_EXEC, 1, 10, ppid=0, pktime=0, binary=b"/sbin/init")),
             records.decode(raw(KIND_EXEC, 100, 20, ppid=1, pktime=10, binary=b"/usr/sbin/sshd")),
             records.decode(raw(KIND_EXEC, 200, 30, ppid=100, pktime=20, binary=b"/usr/bin/bash")),
             records.decode(raw(KIND_EXEC, 300, 40, ppid=200, pktime=30, binary=b"/usr/bin/sh"))]
    outs = [table.render(r) for r in chain]
    assert "ancestors" not in outs[1]["process_exec"]  # its parent is init: nothing beyond it
    assert [a["binary"] for a in outs[2]["process_exec"]["ancestors"]] == ["/sbin/init"]
    body = outs[3]["process_exec"]
    assert body["parent"]["binary"] == "/usr/bin/bash"
    assert [a["binary"] for a in body["ancestors"]] == ["/usr/sbin/sshd", "/sbin/init"]
    ended = table.render(records.decode(raw(KIND_EXIT, 300, 40, ppid=200, pktime=30, flags=F_CACHED, cwd=b"")))
    assert [a["binary"] for a in ended["process_exit"]["ancestors"]] == ["/usr/sbin/sshd", "/sbin/init"]


def test_an_ancestor_stays_while_a_descendant_runs_and_goes_after() -> None:
    table = ProcessTable("n", CLOCK, linger=1)
    sh = records.decode(raw(KIND_EXEC, 10, 100, binary=b"/usr/bin/dash"))
    # exec in place: the dash image is replaced, yet the new image's children still name it
    daemon = records.decode(raw(KIND_EXEC, 10, 200, ppid=10, pktime=100, binary=b"/usr/sbin/daemon"))
    table.render(sh)
    table.render(daemon)
    for i in range(20):  # many unrelated processes come and go
        table.render(records.decode(raw(KIND_EXEC, 1000 + i, 300 + i)))
        table.render(records.decode(raw(KIND_EXIT, 1000 + i, 300 + i, flags=F_CACHED, cwd=b"")))
    child = records.decode(raw(KIND_EXEC, 11, 900, ppid=10, pktime=200, binary=b"/usr/bin/true"))
    body = table.render(child)["process_exec"]
    assert body["parent"]["binary"] == "/usr/sbin/daemon"
    assert [a["binary"] for a in body["ancestors"]] == ["/usr/bin/dash"]
    assert table.refs(10, 100) == 1  # held by the image that replaced it
    for r in (records.decode(raw(KIND_EXIT, 11, 900, ppid=10, pktime=200, flags=F_CACHED, cwd=b"")),
              records.decode(raw(KIND_EXIT, 10, 200, ppid=10, pktime=100, flags=F_CACHED, cwd=b""))):
        table.render(r)
    for i in range(5):
        table.render(records.decode(raw(KIND_EXEC, 2000 + i, 950 + i)))
        table.render(records.decode(raw(KIND_EXIT, 2000 + i, 950 + i, flags=F_CACHED, cwd=b"")))
    assert table.get(10, 100) is None and table.get(10, 200) is None and table.get(11, 900) is None


def test_proc_status_caps_and_ns_inodes(tmp_path: Path) -> None:
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000002000\n"
    assert procfs.parse_caps(status) == records.Caps(permitted=(1 << 41) - 1, effective=1 << 13, inheritable=0)
    with pytest.raises(ValueError):
        procfs.parse_caps("Name:\tx\n")
    ns = procfs.namespaces(Path("/proc/self/ns"))
    assert ns[records.NS_NAMES.index("net")] == Path("/proc/self/ns/net").stat().st_ino != 0
    assert procfs.namespaces(tmp_path) == records.NO_NS

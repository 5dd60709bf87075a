"""The base sensor on the real kernel: the file that runs, exit signals, exec_id links, the corpus shape."""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from core_support import Events, run

from bpf.core import procfs, records
from bpf.core.build import BuiltObject
from bpf.core.libbpf import obj_get
from bpf.core.records import ExecRecord, ExitRecord
from bpf.core.sensor import CACHE_MAP, PROGRAMS, Sensor

pytestmark = pytest.mark.kernel


@pytest.fixture()
def true_copy() -> Iterator[Path]:
    """A copy of /bin/true in a fresh directory under /tmp (its real path, symlinks resolved)."""
    d = Path(os.path.realpath(Path("/tmp") / f"palisade-core-{uuid.uuid4().hex[:8]}"))
    d.mkdir()
    exe = d / "x"
    shutil.copy2("/bin/true", exe)
    try:
        yield exe
    finally:
        shutil.rmtree(d)


def marker() -> str:
    return f"palisade-{uuid.uuid4().hex[:12]}"


def test_symlink_to_id_is_reported_as_id(events: Events, tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/usr/bin/id")
    m = marker()
    p = subprocess.Popen([str(link), "-u", m, "a b"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd=tmp_path)
    p.wait(timeout=30)
    ev = events.exec_of(p.pid, ["-u", m, "a b"])
    assert ev.record.binary == "/usr/bin/id"
    proc = ev.json["process_exec"]["process"]
    assert proc["binary"] == "/usr/bin/id"
    assert proc["arguments"] == f'-u {m} "a b"'
    assert proc["cwd"] == os.path.realpath(tmp_path)
    assert proc["uid"] == os.getuid()


# each form names the same file; the kernel runs the file, so that is what must be reported
PATH_FORMS = {
    "double-slash": lambda exe: ("/" + str(exe), None),
    "dotdot": lambda exe: ("/usr/.." + str(exe), None),
    "dot-relative": lambda exe: ("./" + exe.name, exe.parent),
}


@pytest.mark.parametrize("form", sorted(PATH_FORMS))
def test_path_forms_report_the_real_path(events: Events, true_copy: Path, form: str) -> None:
    typed, cwd = PATH_FORMS[form](true_copy)
    m = marker()
    p = subprocess.Popen([typed, m], cwd=cwd)
    assert p.wait(timeout=30) == 0
    assert events.exec_of(p.pid, [m]).json["process_exec"]["process"]["binary"] == str(true_copy)


@pytest.mark.parametrize("how", ["fexecve", "proc-self-fd"])
def test_exec_through_a_descriptor_reports_the_real_path(events: Events, true_copy: Path, how: str) -> None:
    m = marker()
    # the child opens the file and execs it by descriptor: fexecve(fd) or execve("/proc/self/fd/N")
    target = "fd" if how == "fexecve" else "f'/proc/self/fd/{fd}'"
    code = (f"import os\nfd = os.open({str(true_copy)!r}, os.O_RDONLY)\nos.set_inheritable(fd, True)\n"
            f"os.execve({target}, ['x', {m!r}], {{}})\n")
    p = subprocess.Popen([sys.executable, "-c", code])
    assert p.wait(timeout=30) == 0
    assert events.exec_of(p.pid, [m]).record.binary == str(true_copy)


# execveat(2) through libc's syscall(): 322 on x86-64; AT_EMPTY_PATH runs the descriptor itself
EXECVEAT = (
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "argv = (ctypes.c_char_p * 3)(b'x', {m!r}.encode(), None)\n"
    "envp = (ctypes.c_char_p * 1)(None)\n"
    "fd = os.open({target!r}, os.O_RDONLY)\n"
    "libc.syscall(322, fd, {name!r}, argv, envp, {flags})\n"
    "raise SystemExit(ctypes.get_errno())\n"
)


@pytest.mark.parametrize("how", ["dirfd-relative", "empty-path"])
def test_execveat_reports_the_real_path(events: Events, true_copy: Path, how: str) -> None:
    m = marker()
    if how == "dirfd-relative":
        code = EXECVEAT.format(m=m, target=str(true_copy.parent), name=true_copy.name.encode(), flags=0)
    else:
        code = EXECVEAT.format(m=m, target=str(true_copy), name=b"", flags=0x1000)  # AT_EMPTY_PATH
    p = subprocess.Popen([sys.executable, "-c", code])
    assert p.wait(timeout=30) == 0
    assert events.exec_of(p.pid, [m]).record.binary == str(true_copy)


def test_sigkill_is_reported_as_the_exit_signal(events: Events) -> None:
    p = subprocess.Popen(["/bin/sleep", "30"])
    events.exec_of(p.pid, ["30"])
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=30) == -signal.SIGKILL
    ev = events.exit_of(p.pid)
    assert isinstance(ev.record, ExitRecord)
    body = ev.json["process_exit"]
    assert body["signal"] == "SIGKILL"
    assert "status" not in body
    assert body["process"]["binary"] == "/usr/bin/sleep"
    assert body["process"]["arguments"] == "30"


def test_exit_status_without_a_signal(events: Events) -> None:
    p = subprocess.Popen(["/bin/sh", "-c", "exit 3"])
    assert p.wait(timeout=30) == 3
    body = events.exit_of(p.pid).json["process_exit"]
    assert (body.get("signal"), body["status"]) == (None, 3)


def test_exec_ids_link_parent_and_child(events: Events) -> None:
    m = marker()
    # the trailing `:` keeps the shell from exec'ing the last command in place: true is a forked child
    sh = subprocess.Popen(["/bin/sh", "-c", f"/usr/bin/true {m}; :"])
    assert sh.wait(timeout=30) == 0
    parent = events.exec_of(sh.pid)
    child = events.wait_for(lambda ev: isinstance(ev.record, ExecRecord) and ev.record.args == (m,))
    assert child.record.pid != sh.pid
    pj, cj = parent.json["process_exec"]["process"], child.json["process_exec"]
    assert cj["process"]["parent_exec_id"] == pj["exec_id"]
    assert cj["parent"]["exec_id"] == pj["exec_id"]
    assert cj["parent"]["binary"] == os.path.realpath("/bin/sh")  # /bin/sh is a symlink (to dash)
    assert "clone" in cj["process"]["flags"].split()
    node, ktime, pid = records_decode_exec_id(cj["process"]["exec_id"])
    assert (node, pid) == ("test-node", child.record.pid) and ktime > 0
    # the exit of the child carries the same exec_id as its exec
    assert events.exit_of(child.record.pid).json["process_exit"]["process"]["exec_id"] == cj["process"]["exec_id"]


def test_exec_in_place_has_the_replaced_image_as_parent(events: Events) -> None:
    m = marker()
    sh = subprocess.Popen(["/bin/sh", "-c", f"exec /usr/bin/true {m}"])
    assert sh.wait(timeout=30) == 0
    first = events.exec_of(sh.pid, ["-c", f"exec /usr/bin/true {m}"])
    second = events.exec_of(sh.pid, [m])
    proc = second.json["process_exec"]["process"]
    assert proc["parent_exec_id"] == first.json["process_exec"]["process"]["exec_id"]
    assert proc["exec_id"] != proc["parent_exec_id"]  # same pid, a new exec_id per image
    assert "clone" not in proc["flags"].split()


def test_process_cache_holds_a_live_process_and_drops_it_on_exit(events: Events) -> None:
    cache = events.sensor.object.map(CACHE_MAP)
    p = subprocess.Popen(["/bin/sleep", "30"])
    try:
        ev = events.exec_of(p.pid, ["30"])
        entry = cache.lookup(p.pid.to_bytes(4, "little"))
        assert entry is not None
        assert int.from_bytes(entry[:8], "little") == ev.record.ktime
        assert b"/usr/bin/sleep\0" in entry
    finally:
        p.kill()
        p.wait(timeout=30)
    events.exit_of(p.pid)
    assert cache.lookup(p.pid.to_bytes(4, "little")) is None


def test_records_that_find_the_ring_full_are_counted(sensor_object: BuiltObject) -> None:
    with Sensor(sensor_object.read(), "n", ring_bytes=4096) as s:  # room for a handful of records
        for i in range(40):  # not read meanwhile
            assert run(["/usr/bin/true", str(i)]).returncode == 0
        assert s.dropped() > 0
        got = s.poll(0)
        assert got and all(isinstance(ev.record, ExecRecord | ExitRecord) for ev in got)


def test_a_process_older_than_the_sensor_is_seeded_and_its_child_links_to_it(sensor_object: BuiltObject) -> None:
    m = marker()
    # started before the sensor: forks a child once it reads a line
    sh = subprocess.Popen(["/bin/sh", "-c", f"read x; /usr/bin/true {m}; :"], stdin=subprocess.PIPE)
    try:
        with Sensor(sensor_object.read(), "n") as s:
            assert s.seed() > 0
            seeded = s.table.latest(sh.pid)
            assert seeded is not None and seeded.binary == os.path.realpath("/bin/sh")
            caps = procfs.parse_caps(Path(f"/proc/{sh.pid}/status").read_text())
            ns = {n: Path(f"/proc/{sh.pid}/ns/{n}").stat().st_ino for n in records.NS_NAMES}
            # the kernel's cache holds them too (an exit the reader would miss still carries them)
            entry = s.object.map(CACHE_MAP).lookup(sh.pid.to_bytes(4, "little"))
            assert entry is not None
            fields = procfs.ENTRY.unpack(entry)
            assert records.Caps(*fields[7:10]) == caps and fields[10:20] == tuple(ns.values())
            assert fields[20] == seeded.nspid == sh.pid  # in the pid namespace of this test
            gather = Events(s)
            assert sh.stdin is not None
            sh.stdin.write(b"go\n")
            sh.stdin.close()
            assert sh.wait(timeout=30) == 0
            child = gather.wait_for(lambda ev: isinstance(ev.record, ExecRecord) and ev.record.args == (m,))
            body = child.json["process_exec"]
            assert body["parent"]["exec_id"] == body["process"]["parent_exec_id"]
            assert body["parent"]["binary"] == seeded.binary
            assert body["parent"]["flags"] == "procFS auid"  # as Tetragon flags what it found in /proc
            # caps and namespaces as /proc told them
            assert body["parent"]["cap"] == records.caps_json(caps)
            assert {n: v["inum"] for n, v in body["parent"]["ns"].items()} == ns
            ended = gather.exit_of(sh.pid).json["process_exit"]["process"]
            assert ended["exec_id"] == body["parent"]["exec_id"] and ended["flags"] == "procFS auid"
    finally:
        sh.kill()
        sh.wait(timeout=30)


def test_links_and_cache_are_pinned_while_loaded(events: Events) -> None:
    pins = events.sensor.pins
    assert sorted(p.name for p in pins) == sorted([*PROGRAMS, CACHE_MAP])
    for pin in pins:
        os.close(obj_get(pin))


def records_decode_exec_id(value: str) -> tuple[str, int, int]:
    node, ktime, pid = base64.b64decode(value).decode().rsplit(":", 2)
    return node, int(ktime), int(pid)


# --- the shape of the events, against Tetragon's own samples ----------------------------------

# in tetragon.proto's ProcessExit but in none of the corpus samples (a signal/status of 0 is omitted)
EXIT_FIELDS_NOT_IN_SAMPLES = {"signal", "status", "time"}
# in tetragon.proto's ProcessExec/ProcessExit (a list of Process), in none of the samples (Tetragon's older
# releases did not fill it); each ancestor is checked as a Process
ANCESTORS = "ancestors"
# in tetragon.proto's Process (Capabilities: three lists of CapabilitiesType names), in no sample
PROCESS_FIELDS_NOT_IN_SAMPLES = {"cap:dict"}


def _section(kind: str, section: str) -> tuple[str, ...]:
    # `process` and `parent` are one message (Process) in tetragon.proto, whichever event holds them
    return ("Process",) if section in ("process", "parent") else (kind, section)


def _corpus_shapes(corpus: Path) -> dict[tuple[str, ...], set[str]]:
    """{(event kind, section): {"key:JSON type"}} over every corpus sample of exec/exit events,
    and for `Process` (and its `ns`) over every sample of any kind: it is one message in tetragon.proto."""
    events_dir = corpus / "events"
    docs: list[dict[str, Any]] = [json.loads(p.read_text()) for p in events_dir.rglob("*.json")]
    docs += [json.loads(line) for line in (events_dir / "testdata_events.jsonl").read_text().splitlines() if line]
    shapes: dict[tuple[str, ...], set[str]] = {}
    for d in docs:
        for body in d.values():
            if not isinstance(body, dict):
                continue
            for section in ("process", "parent"):
                if isinstance(body.get(section), dict):
                    _process_shape(shapes, body[section])
        for kind in ("process_exec", "process_exit"):
            if kind not in d:
                continue
            shapes.setdefault((kind,), set()).update(f"{k}:{type(v).__name__}" for k, v in d.items())
            for section, body in d[kind].items():
                if isinstance(body, dict):
                    shapes.setdefault(_section(kind, section), set()).update(
                        f"{k}:{type(v).__name__}" for k, v in body.items())
                else:
                    shapes.setdefault((kind, "."), set()).add(f"{section}:{type(body).__name__}")
    return shapes


def _process_shape(out: dict[tuple[str, ...], set[str]], proc: dict[str, Any]) -> None:
    out.setdefault(("Process",), set()).update(f"{k}:{type(v).__name__}" for k, v in proc.items())
    for name, ns in proc.get("ns", {}).items():
        out.setdefault(("Namespaces",), set()).add(name)
        out.setdefault(("Namespace",), set()).update(f"{k}:{type(v).__name__}" for k, v in ns.items())


def _our_shape(ev: dict[str, Any], kind: str) -> dict[tuple[str, ...], set[str]]:
    out: dict[tuple[str, ...], set[str]] = {(kind,): {f"{k}:{type(v).__name__}" for k, v in ev.items()}}
    for section, body in ev[kind].items():
        if section in ("process", "parent"):
            _process_shape(out, body)
        elif section == ANCESTORS:
            assert isinstance(body, list) and body
            for proc in body:
                _process_shape(out, proc)
        elif isinstance(body, dict):
            out.setdefault(_section(kind, section), set()).update(f"{k}:{type(v).__name__}" for k, v in body.items())
        elif section not in EXIT_FIELDS_NOT_IN_SAMPLES:
            out.setdefault((kind, "."), set()).add(f"{section}:{type(body).__name__}")
    out[("Process",)] -= PROCESS_FIELDS_NOT_IN_SAMPLES
    return out


def _check_caps(cap: dict[str, Any]) -> None:
    assert set(cap) <= {"permitted", "effective", "inheritable"}
    assert all(isinstance(v, list) and all(isinstance(c, str) and c in records.CAP_NAMES for c in v)
               for v in cap.values())


def test_event_keys_and_types_match_the_corpus(events: Events, corpus: Path) -> None:
    events.sensor.seed()  # the test's own ancestry, so that the events carry ancestors
    shapes = _corpus_shapes(corpus)
    sh = subprocess.Popen(["/bin/sh", "-c", "/bin/sleep 30; :"])
    child = events.wait_for(lambda ev: isinstance(ev.record, ExecRecord) and ev.record.ppid == sh.pid)
    os.kill(child.record.pid, signal.SIGKILL)
    sh.wait(timeout=30)
    exit_ev = events.exit_of(child.record.pid)
    ours = _our_shape(child.json, "process_exec")
    for key, fields in _our_shape(exit_ev.json, "process_exit").items():
        ours.setdefault(key, set()).update(fields)
    for key, fields in ours.items():
        assert fields <= shapes.get(key, set()), (key, fields - shapes.get(key, set()))
    # what we fill is what Tetragon fills for a host process, with --enable-process-cred/-ns (pod/docker/refcnt aside)
    filled = set(child.json["process_exec"]["process"])
    assert filled == {"exec_id", "pid", "uid", "cwd", "binary", "arguments", "flags", "start_time", "auid",
                      "parent_exec_id", "cap", "ns", "tid"}
    assert set(child.json["process_exec"]) == {"process", "parent", ANCESTORS}
    assert ANCESTORS in exit_ev.json["process_exit"]
    assert set(child.json["process_exec"]["process"]["ns"]) == set(records.NS_NAMES)
    for ev in (child.json["process_exec"], exit_ev.json["process_exit"]):
        for proc in [ev["process"], ev["parent"], *ev[ANCESTORS]]:
            _check_caps(proc["cap"])
    assert exit_ev.json["process_exit"]["signal"] == "SIGKILL"


def test_runs_without_leaking_pins(sensor_object: BuiltObject, pin_dir: Path) -> None:
    with Sensor(sensor_object.read(), "n", pin_dir=pin_dir) as s:
        assert len(list(pin_dir.iterdir())) == len(s.pins) == 3
    assert list(pin_dir.iterdir()) == []
    assert run(["/usr/bin/true"]).returncode == 0


def test_exec_and_exit_carry_the_cgroup_id_of_the_process(events: Events) -> None:
    from bpf.core import procfs
    from support import cgroups

    root = procfs.cgroup2_mount()
    assert root is not None
    cg = root / f"palisade-core-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    try:
        m = marker()

        def enter() -> None:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

        assert run(["/usr/bin/true", m], preexec_fn=enter).returncode == 0
        ex = events.wait_for(lambda ev: isinstance(ev.record, ExecRecord) and ev.record.args == (m,))
        assert ex.record.cgroup_id == cg.stat().st_ino
        assert events.exit_of(ex.record.pid).record.cgroup_id == cg.stat().st_ino
        # seeded from /proc: the same id for a process that was already there
        own = next(r for r in procfs.scan() if r.pid == os.getpid())
        mine = procfs.parse_cgroup(Path("/proc/self/cgroup").read_text())
        assert own.cgroup_id == (root / (mine or "/").lstrip("/")).stat().st_ino != 0
    finally:
        cgroups.remove(cg)


# --- credentials, namespaces, ancestors on the real kernel ---------------------------------------

# prctl(2) and capset(2) numbers and constants (x86-64 uapi)
PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 28, 47, 2
SECBIT_NOROOT, SECBIT_NOROOT_LOCKED = 1 << 0, 1 << 1
CAPSET, LINUX_CAPABILITY_VERSION_3 = 126, 0x20080522
CAP = {name: bit for bit, name in enumerate(records.CAP_NAMES)}


def _reduced_caps(inheritable: list[str], ambient: list[str]) -> Any:
    """A preexec_fn: root loses its special case (SECBIT_NOROOT), so the exec'd image runs with exactly
    the ambient set as permitted and effective, and keeps `inheritable`."""
    def apply() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_SECUREBITS")
        hdr = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()
        if libc.syscall(CAPSET - 1, hdr, data) != 0:  # capget(2) is capset's number minus one
            raise OSError(ctypes.get_errno(), "capget")
        mask = sum(1 << CAP[c] for c in inheritable)
        data[2], data[5] = mask & 0xFFFFFFFF, mask >> 32  # inheritable, low and high words
        if libc.syscall(CAPSET, hdr, data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
        for c in ambient:
            if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP[c], 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"ambient {c}")
    return apply


def test_a_workload_with_reduced_capabilities_shows_exactly_those_sets(events: Events) -> None:
    inheritable = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"]
    ambient = ["CAP_CHOWN", "CAP_NET_RAW"]
    p = subprocess.Popen(["/bin/sleep", "30"], preexec_fn=_reduced_caps(inheritable, ambient))
    try:
        ev = events.exec_of(p.pid, ["30"])
        cap = ev.json["process_exec"]["process"]["cap"]
        assert cap == {"permitted": ambient, "effective": ambient, "inheritable": inheritable}
        # the same as the kernel tells /proc, bit for bit
        assert ev.record.caps == procfs.parse_caps(Path(f"/proc/{p.pid}/status").read_text())
        assert ev.json["process_exec"]["process"]["uid"] == 0  # root, yet without root's capabilities
    finally:
        p.kill()
        p.wait(timeout=30)
    # the exit carries the process as it was at exec
    assert events.exit_of(p.pid).json["process_exit"]["process"]["cap"] == cap


def test_a_full_root_process_has_every_capability_the_bounding_set_allows(events: Events) -> None:
    m = marker()
    assert run(["/usr/bin/true", m]).returncode == 0
    ev = events.wait_for(lambda e: isinstance(e.record, ExecRecord) and e.record.args == (m,))
    bounding = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                        if line.startswith("CapBnd:")), 16)
    assert ev.record.caps.permitted == ev.record.caps.effective == bounding
    assert "inheritable" not in ev.json["process_exec"]["process"]["cap"]


def test_a_process_in_a_new_network_namespace_is_not_in_the_hosts(events: Events) -> None:
    m = marker()
    out = run(["/usr/bin/unshare", "-n", "/usr/bin/true", m])
    assert out.returncode == 0, out.stderr
    ev = events.wait_for(lambda e: isinstance(e.record, ExecRecord) and e.record.args == (m,))
    ns = ev.json["process_exec"]["process"]["ns"]
    assert set(ns) == set(records.NS_NAMES)
    assert "is_host" not in ns["net"] and ns["net"]["inum"] != Path("/proc/self/ns/net").stat().st_ino
    host = procfs.host_namespaces()
    for i, name in enumerate(records.NS_NAMES):
        if name != "net":
            assert ns[name] == {"inum": Path(f"/proc/self/ns/{name}").stat().st_ino, "is_host": True}, name
            assert host[i] == ns[name]["inum"]
    # unshare itself ran in the host's network namespace: the parent of the image it became
    assert ev.json["process_exec"]["parent"]["ns"]["net"]["is_host"] is True


def test_ancestors_of_a_shell_chain_are_the_two_shells_then_this_test(events: Events) -> None:
    events.sensor.seed()  # this test's own ancestry (older than the sensor) from /proc
    m = marker()
    inner = f'exec /usr/bin/true {m}'
    outer = f'sh -c "{inner}"'
    assert run(["/bin/sh", "-c", outer]).returncode == 0
    ev = events.wait_for(lambda e: isinstance(e.record, ExecRecord) and e.record.args == (m,))
    body = ev.json["process_exec"]
    sh = os.path.realpath("/bin/sh")
    # the parent is the inner shell, the first ancestor the outer one (whether it forked or exec'd in place)
    assert (body["parent"]["binary"], body["parent"]["arguments"]) == (sh, f'-c "{inner}"')
    first, second = body["ancestors"][:2]
    assert (first["binary"], first["arguments"]) == (sh, f'-c "{outer}"')
    assert second["pid"] == os.getpid() and second["exec_id"] == first["parent_exec_id"]
    # each names the next as its parent, up to init (the end of Tetragon's walk)
    chain = [body["process"], body["parent"], *body["ancestors"]]
    assert all(a["parent_exec_id"] == b["exec_id"] for a, b in itertools.pairwise(chain))
    last = events.sensor.table.latest(chain[-1]["pid"])
    assert last is not None
    # the walk ends at init, or where /proc did not let the seed read a process (here: an init with more
    # capabilities than the test has)
    assert last.pid <= records.OLDEST_ANCESTOR_PID or events.sensor.table.get(last.ppid, last.parent_ktime) is None
    assert "procFS" in second["flags"].split()


def test_a_process_in_a_new_pid_namespace_has_its_pid_there(events: Events) -> None:
    m = marker()
    out = run(["/usr/bin/unshare", "--pid", "--fork", "/usr/bin/true", m])
    assert out.returncode == 0, out.stderr
    ev = events.wait_for(lambda e: isinstance(e.record, ExecRecord) and e.record.args == (m,))
    assert ev.record.nspid == 1 and ev.record.pid != 1  # the namespace's init, seen from the host
    ns = ev.json["process_exec"]["process"]["ns"]
    assert "is_host" not in ns["pid"] and "is_host" not in ns["pid_for_children"]
    assert ns["net"]["is_host"] is True

"""The base sensor on the real kernel: the file that runs, exit signals, exec_id links, the corpus shape."""
from __future__ import annotations

import base64
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
            gather = Events(s)
            assert sh.stdin is not None
            sh.stdin.write(b"go\n")
            sh.stdin.close()
            assert sh.wait(timeout=30) == 0
            child = gather.wait_for(lambda ev: isinstance(ev.record, ExecRecord) and ev.record.args == (m,))
            body = child.json["process_exec"]
            assert body["parent"]["exec_id"] == body["process"]["parent_exec_id"]
            assert body["parent"]["binary"] == seeded.binary
            assert body["parent"]["flags"].split()[0] == "procFS"
            ended = gather.exit_of(sh.pid).json["process_exit"]["process"]
            assert ended["exec_id"] == body["parent"]["exec_id"] and ended["flags"].startswith("procFS")
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


def _section(kind: str, section: str) -> tuple[str, ...]:
    # `process` and `parent` are one message (Process) in tetragon.proto, whichever event holds them
    return ("Process",) if section in ("process", "parent") else (kind, section)


def _corpus_shapes(corpus: Path) -> dict[tuple[str, ...], set[str]]:
    """{(event kind, section): {"key:JSON type"}} over every corpus sample of exec/exit events."""
    events_dir = corpus / "events"
    docs: list[dict[str, Any]] = [json.loads(p.read_text()) for p in events_dir.rglob("*.json")]
    docs += [json.loads(line) for line in (events_dir / "testdata_events.jsonl").read_text().splitlines() if line]
    shapes: dict[tuple[str, ...], set[str]] = {}
    for d in docs:
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


def _our_shape(ev: dict[str, Any], kind: str) -> dict[tuple[str, ...], set[str]]:
    out: dict[tuple[str, ...], set[str]] = {(kind,): {f"{k}:{type(v).__name__}" for k, v in ev.items()}}
    for section, body in ev[kind].items():
        if isinstance(body, dict):
            out.setdefault(_section(kind, section), set()).update(f"{k}:{type(v).__name__}" for k, v in body.items())
        elif section not in EXIT_FIELDS_NOT_IN_SAMPLES:
            out.setdefault((kind, "."), set()).add(f"{section}:{type(body).__name__}")
    return out


def test_event_keys_and_types_match_the_corpus(events: Events, corpus: Path) -> None:
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
    # what we fill is what Tetragon fills for a host process (pod/docker/refcnt aside)
    filled = {f.split(":")[0] for f in _our_shape(child.json, "process_exec")[("Process",)]}
    assert filled == {"exec_id", "pid", "uid", "cwd", "binary", "arguments", "flags", "start_time", "auid",
                      "parent_exec_id", "tid"}
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

"""The agent's base sensor on the real kernel: every process's exec and exit in the event log, with its pod.

One run is shared by the module: the sensor is started as `palisade-agent run` starts it
(`daemon.start_sensor`, pinned beside a private pin root), a workload execs `sleep` in a
container cgroup below the cgroup the workload map names (namespace default), the
workload is SIGKILLed, and the sensor is stopped. The tests then read that event log
with the real `jq`, `palisade-agent events -o compact`, and against Tetragon's samples.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import sensor as agent_sensor
from agent.config import AgentConfig, Workload
from agent.daemon import start_sensor
from agent.events import EventLog, read_all
from bpf.inventory import wait_until_gone
from support import cgroups
from support.kernel import core_problem, unavailable

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
_MAIN = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"
CONTAINER = "c0ffee" + "0123456789abcdef" * 3 + "0123456789"  # 64 hex digits
SLEEP = os.path.realpath("/bin/sleep")  # the file that runs (/bin may be a link to usr/bin)


def _until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass(frozen=True)
class Run:
    state: Path
    pin_root: Path
    pid: int
    marker: str
    pins_while_running: tuple[str, ...]
    pins_after_stop: bool
    events: tuple[dict[str, Any], ...]

    def of(self, kind: str, pid: int | None = None) -> dict[str, Any]:
        pid = self.pid if pid is None else pid
        return next(e for e in self.events if kind in e and e[kind]["process"]["pid"] == pid)


def _cgroup2() -> Path:
    from bpf.core import procfs

    root = procfs.cgroup2_mount()
    if root is None:
        unavailable("no cgroup2 hierarchy")
    return root


@pytest.fixture(scope="module")
def run(require_kernel: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    problem = core_problem()
    if problem is not None:
        unavailable(problem)
    tmp = tmp_path_factory.mktemp("sensor")
    pod = _cgroup2() / f"palisade-sensor-test-{uuid.uuid4().hex[:8]}"
    box = pod / f"cri-containerd-{CONTAINER}.scope"  # the container's cgroup, below the pod's
    box.mkdir(parents=True)
    pin_root = Path("/sys/fs/bpf") / f"palisade-sensor-test-{uuid.uuid4().hex[:8]}"
    cfg = AgentConfig(server="http://127.0.0.1:1", pubkeys=(), sensor_id="sensor-test-node", state=tmp,
                      workloads=(Workload("xwing", str(pod), "default", (("app", "xwing"), ("org", "alliance"))),),
                      pin_root=pin_root)
    log = EventLog(tmp)
    marker = uuid.uuid4().hex[:12]
    proc = None
    try:
        base = start_sensor(cfg, log)
        assert base is not None, "the base sensor did not start"
        try:
            pins = tuple(sorted(p.name for p in agent_sensor.pin_dir(pin_root).iterdir()))

            def enter() -> None:
                (box / "cgroup.procs").write_text(str(os.getpid()))

            assert subprocess.run(["/usr/bin/true", marker], timeout=30).returncode == 0  # on the host
            proc = subprocess.Popen(["/bin/sleep", "30"], preexec_fn=enter)
            _until(lambda: any("process_exec" in e and e["process_exec"]["process"]["pid"] == proc.pid
                               for e in read_all(tmp)), 10, "the workload's exec in the log")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            _until(lambda: any("process_exit" in e and e["process_exit"]["process"]["pid"] == proc.pid
                               for e in read_all(tmp)), 10, "the workload's exit in the log")
        finally:
            base.stop()
        pins_gone = not agent_sensor.pin_dir(pin_root).exists()
    finally:
        log.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        agent_sensor.remove_pins(pin_root)
        cgroups.remove(pod)
    yield Run(tmp, pin_root, proc.pid, marker, pins, pins_gone, tuple(read_all(tmp)))


def _jq(run: Run, program: str) -> list[Any]:
    jq = shutil.which("jq")
    if jq is None:
        unavailable("jq is not installed (run scripts/kernel-tools.sh)")
    out = subprocess.run([jq, "-c", program, str(run.state / "events.jsonl")], capture_output=True, text=True,
                         timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


# --- the jq acceptance (sensor part) ----------------------------------------------------

def test_jq_names_the_binary_that_ran(run: Run) -> None:
    binaries = _jq(run, "select(.process_exec != null) | .process_exec.process.binary")
    assert SLEEP in binaries


def test_jq_selects_the_workloads_exec_by_namespace(run: Run) -> None:
    execs = _jq(run, 'select(.process_exec.process.pod.namespace == "default")')
    assert [e["process_exec"]["process"]["pid"] for e in execs] == [run.pid]  # the workload's exec, only it
    pod = execs[0]["process_exec"]["process"]["pod"]
    assert pod == {"namespace": "default", "name": "xwing", "workload": "xwing",
                   "container": {"id": f"containerd://{CONTAINER}", "name": "xwing", "pid": run.pid},
                   "pod_labels": {"app": "xwing", "org": "alliance"}}
    assert execs[0]["process_exec"]["process"]["docker"] == CONTAINER[:31]


def test_jq_gives_sigkill_for_the_killed_workload(run: Run) -> None:
    signals = _jq(run, f"select(.process_exit.process.pid == {run.pid}) | .process_exit.signal")
    assert signals == ["SIGKILL"]


# --- what the agent's sensor does besides ---------------------------------------------------------

def test_every_process_is_reported_not_only_the_workloads(run: Run) -> None:
    host = [e for e in run.events
            if "process_exec" in e and e["process_exec"]["process"].get("arguments") == run.marker]
    assert len(host) == 1 and "pod" not in host[0]["process_exec"]["process"]
    assert host[0]["node_name"] == "sensor-test-node"


def test_pins_are_cleaned_on_stop(run: Run) -> None:
    assert run.pins_while_running == ("palisade_exec", "palisade_exit", "proc_cache")
    assert run.pins_after_stop
    assert not run.pin_root.exists()  # the engine's root is not made by the sensor


def test_compact_prints_the_exec_and_the_kill(run: Run) -> None:
    out = subprocess.run([sys.executable, "-c", _MAIN, "events", "--state", str(run.state), "-o", "compact"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    # a root workload runs with CAP_SYS_ADMIN effective: tetra's compact output flags it at the line's end
    lines = {line.rsplit("🛑", 1)[0].rstrip(): line for line in out.stdout.splitlines()}
    for want in (f"🚀 process default/xwing {SLEEP} 30", f"💥 exit    default/xwing {SLEEP} 30 SIGKILL"):
        assert want in lines, (want, out.stdout)
        assert lines[want].endswith("🛑 CAP_SYS_ADMIN")


# --- field for field against Tetragon's samples ---------------------------------------------------

#: Fields of Tetragon's samples this agent leaves out, and why.
ABSENT = {
    # Process
    "refcnt": "Tetragon's internal reference count of its process cache entry, not a fact of the process",
    # Pod.container: no container runtime is asked (the workload map is all the agent knows)
    "image": "the container image is known only to the runtime",
    "start_time@container": "the container's start is known only to the runtime",
}
#: In tetragon.proto's ProcessExit, in none of the samples (they show a clean exit; 0 values are omitted)
EXIT_EXTRA = {"signal", "status", "time", "ancestors"}
#: In tetragon.proto's ProcessExec, not in the sample (an older Tetragon's, without --enable-ancestors)
EXEC_EXTRA = {"ancestors"}
#: In tetragon.proto's Process, filled by Tetragon with --enable-process-cred / --enable-process-ns; the
#: exec sample was taken without them (`ns` is checked against the kprobe sample, which has it)
PROCESS_EXTRA = {"tid", "cap", "ns"}  # tid: in tetragon.proto, not in the older exit sample


def _types(d: dict[str, Any]) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in d.items()}


def _compare(ours: dict[str, Any], theirs: dict[str, Any], where: str, absent: set[str],
             extra: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    missing = set(theirs) - set(ours) - absent
    assert not missing, f"{where}: Tetragon has {sorted(missing)}, we do not"
    unknown = set(ours) - set(theirs) - extra
    assert not unknown, f"{where}: we have {sorted(unknown)}, Tetragon's sample does not"
    for k in set(ours) & set(theirs):
        assert type(ours[k]) is type(theirs[k]), f"{where}.{k}: {type(ours[k]).__name__} vs {type(theirs[k]).__name__}"


def _compare_process(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    _compare(ours, theirs, where, {"refcnt"}, PROCESS_EXTRA)
    _compare(ours["pod"], theirs["pod"], f"{where}.pod", set(), {"pod_labels", "workload"})
    _compare(ours["pod"]["container"], theirs["pod"]["container"], f"{where}.pod.container",
             {"image", "start_time"})


def _compare_ns_and_cap(proc: dict[str, Any], sample_ns: dict[str, Any], where: str) -> None:
    """`ns` key for key against a sample that has it, `cap` as tetragon.proto's Capabilities (lists of names)."""
    from bpf.core.records import CAP_NAMES

    _compare(proc["ns"], sample_ns, f"{where}.ns", set())
    for name, ns in proc["ns"].items():
        assert set(ns) <= {"inum", "is_host"} and isinstance(ns["inum"], int), (where, name, ns)
        assert ns.get("is_host", True) is True  # false is omitted, as protojson omits it
    assert set(proc["cap"]) <= {"permitted", "effective", "inheritable"}
    assert all(c in CAP_NAMES for caps in proc["cap"].values() for c in caps)


def test_exec_and_exit_match_tetragons_samples_field_for_field(run: Run, corpus: Path) -> None:
    sample_exec = json.loads((corpus / "events" / "sample_process_exec.json").read_text())
    sample_exit = json.loads((corpus / "events" / "sample_process_exit.json").read_text())
    ex, ended = run.of("process_exec"), run.of("process_exit")
    _compare(ex, sample_exec, "event", set())
    _compare(ended, sample_exit, "event", set())
    sample_ns = json.loads((corpus / "events" / "from_docs" / "record-linux-capabilities_8_process_kprobe.json")
                           .read_text())["process_kprobe"]["process"]["ns"]
    _compare(ex["process_exec"], sample_exec["process_exec"], "process_exec", {"parent"}, EXEC_EXTRA)
    _compare(ended["process_exit"], sample_exit["process_exit"], "process_exit", {"parent"}, EXIT_EXTRA)
    _compare_process(ex["process_exec"]["process"], sample_exec["process_exec"]["process"], "exec.process")
    _compare_process(ended["process_exit"]["process"], sample_exit["process_exit"]["process"], "exit.process")
    # Tetragon's container pid: the pid in the container's pid namespace (the workload shares the host's here)
    assert ex["process_exec"]["process"]["pod"]["container"]["pid"] == run.pid
    # the workload's parent is this test (outside any workload): a Process, without pod
    parent = ex["process_exec"].get("parent")
    assert parent is not None and "pod" not in parent
    _compare(parent, sample_exec["process_exec"]["parent"], "exec.parent", {"refcnt", "pod", "docker", "arguments"},
             PROCESS_EXTRA)
    # ancestors: Processes too, beyond the parent (this test's own, seeded from /proc at start)
    ancestors = ex["process_exec"]["ancestors"]
    assert ancestors and ancestors[0]["exec_id"] == parent["parent_exec_id"]
    for i, anc in enumerate(ancestors):
        _compare(anc, sample_exec["process_exec"]["parent"], f"exec.ancestors[{i}]",
                 {"refcnt", "pod", "docker", "arguments", "cwd"}, PROCESS_EXTRA)
        assert "procFS" in anc["flags"].split()  # all older than the agent
    for where, proc in (("exec.process", ex["process_exec"]["process"]), ("exec.parent", parent),
                        ("exit.process", ended["process_exit"]["process"]), ("exec.ancestors[0]", ancestors[0])):
        _compare_ns_and_cap(proc, sample_ns, where)
    # enums as strings, 64-bit ints as strings (none in these messages: pid/uid/auid/tid are 32-bit)
    assert isinstance(ended["process_exit"]["signal"], str)
    assert ex["process_exec"]["process"]["flags"].split()[0] == "execve"
    assert all(isinstance(v, int) for k, v in ex["process_exec"]["process"].items()
               if k in ("pid", "uid", "auid", "tid"))


# --- left behind by an agent that died ------------------------------------------------------------

def _link_ids(d: Path) -> list[int]:
    from bpf.core.libbpf import obj_get

    ids = []
    for name in ("palisade_exec", "palisade_exit"):
        fd = obj_get(d / name)
        try:
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        finally:
            os.close(fd)
        ids += [int(line.split()[1]) for line in info.splitlines() if line.startswith("link_id:")]
    assert len(ids) == 2
    return ids


def test_reset_and_the_next_start_remove_what_a_dead_agent_left(require_kernel: None, tmp_path: Path) -> None:
    problem = core_problem()
    if problem is not None:
        unavailable(problem)
    pin_root = Path("/sys/fs/bpf") / f"palisade-sensor-test-{uuid.uuid4().hex[:8]}"
    script = ("import sys, time; from pathlib import Path; from agent.events import EventLog; "
              "from agent.sensor import NodeSensor; "
              f"NodeSensor('n', EventLog(Path({str(tmp_path)!r})), pin_root=Path({str(pin_root)!r}), seed=False); "
              "print('up', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        child.kill()  # no cleanup runs: the links stay pinned
        child.wait(timeout=10)
        left = agent_sensor.pin_dir(pin_root)
        assert sorted(p.name for p in left.iterdir()) == ["palisade_exec", "palisade_exit", "proc_cache"]
        links = _link_ids(left)
        # a new start takes over the place (and removes what was left first)
        log = EventLog(tmp_path)
        again = agent_sensor.NodeSensor("n", log, pin_root=pin_root, seed=False)
        again.stop()
        log.close()
        assert not left.exists()
        assert wait_until_gone(link_ids=links, timeout=5), "the dead sensor's links are still attached"
        # and after another death, `palisade-agent reset` removes it
        child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        child.kill()
        child.wait(timeout=10)
        links = _link_ids(left)
        out = subprocess.run([sys.executable, "-c", _MAIN, "reset", "--pin-root", str(pin_root)],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "base sensor" in out.stderr
        assert not left.exists()
        assert wait_until_gone(link_ids=links, timeout=5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        agent_sensor.remove_pins(pin_root)


# --- the workload map, without the kernel ----------------------------------------------------------

@pytest.mark.parametrize(("path", "cid"), [
    (f"/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CONTAINER}.scope", f"containerd://{CONTAINER}"),
    (f"/system.slice/docker-{CONTAINER}.scope", f"docker://{CONTAINER}"),
    (f"/kubepods/burstable/pod1/{CONTAINER}", CONTAINER),  # cgroupfs driver: the runtime is not named
    ("/user.slice/user-0.slice/session-1.scope", None),
])
def test_a_container_is_told_by_its_cgroup(path: str, cid: str | None) -> None:
    c = agent_sensor.container_of(path)
    assert (c.id if c is not None else None) == cid


def test_pods_are_placed_by_the_workloads_cgroup_id(tmp_path: Path) -> None:
    (tmp_path / "shop" / "web").mkdir(parents=True)
    (tmp_path / "bare").mkdir()
    w = Workload("web", str(tmp_path / "shop" / "web"), None, (("app", "web"),))
    bare = Workload("db", "/bare", "data")  # relative to the cgroup2 root, no labels
    pods = agent_sensor.PodResolver([w, bare], tmp_path)
    web = pods.of((tmp_path / "shop" / "web").stat().st_ino, pid=os.getpid())
    assert web is not None and web.docker is None
    assert web.pod == {"namespace": "default", "name": "web", "pod_labels": {"app": "web"}, "workload": "web"}
    db = pods.of((tmp_path / "bare").stat().st_ino, pid=os.getpid())
    assert db is not None and db.pod == {"namespace": "data", "name": "db", "workload": "db"}
    assert pods.of(0, pid=os.getpid()) is None
    assert agent_sensor.PodResolver([], tmp_path).of(123, pid=os.getpid()) is None

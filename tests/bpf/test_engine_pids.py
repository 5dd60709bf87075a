"""matchPIDs on real process trees: the process's own pid, and with followForks its ancestors' as Tetragon's
execve_map lineage records them (bpf/compile.py `_LINEAGE`).

A parent process P (in the workload cgroup) is started before the policy naming its pid is loaded, then told
to run children, grandchildren and orphans that call a hooked function (getppid, or prctl for the LSM hook);
a call whose selector matches is killed. Processes outside P's tree run the same calls.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import Workload, libc, policy, wait_events

from bpf.engine import Engine

pytestmark = pytest.mark.kernel

PY = sys.executable

#: One program for every process of the trees: argv is a list of steps, run in order.
#:   probe / prctl        call getppid(2) / prctl(PR_GET_DUMPABLE), then print "ran"
#:   spawn STEPS...       run a child with the rest of the steps, wait for it, print "rc <its status>"
#:   orphan STEPS...      start a child that waits until this process is gone (and it is reparented),
#:                        then runs the rest; this process exits at once
#:   leave STEPS...       the same from the server: P itself goes
#:   serve                read lines of steps from stdin, run each, print "done" after each
_NODE = r"""
import ctypes, os, subprocess, sys, time

def parent():  # from /proc: getppid(2) is the call the policies hook
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[1])

def run(a):
    while a:
        op, a = a[0], a[1:]
        if op == "probe":
            os.getppid()
            print("ran", flush=True)
            return 0
        if op == "prctl":
            ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)
            print("ran", flush=True)
            return 0
        if op == "spawn":
            rc = subprocess.run([sys.executable, __file__, *a]).returncode
            print("rc", rc, flush=True)
            return 137 if rc < 0 else rc
        if op in ("orphan", "leave"):
            subprocess.Popen([sys.executable, __file__, "await", str(os.getpid()), *a])
            os._exit(0)
        if op == "await":
            gone, a = int(a[0]), a[1:]
            deadline = time.monotonic() + 20
            while parent() == gone and time.monotonic() < deadline:
                time.sleep(0.01)
            if parent() == gone:
                print("never reparented", flush=True)
                return 1
        if op == "serve":
            print("ready", flush=True)
            for line in sys.stdin:
                run(line.split())
                print("done", flush=True)
            return 0
    return 0

sys.exit(run(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("pids") / "node.py"
    p.write_text(_NODE)
    p.chmod(0o755)
    return p


class Tree:
    """The server P and a way to make it run steps; its output lines say what survived."""

    def __init__(self, workload: Workload, node: Path) -> None:
        self.node = node
        self.p = workload.popen([PY, str(node), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        assert self._line() == "ready"

    @property
    def pid(self) -> int:
        return self.p.pid

    def _line(self) -> str:
        assert self.p.stdout is not None
        return self.p.stdout.readline().strip()

    def run(self, steps: str, until: str = "done", count: int = 1) -> list[str]:
        """Send one line of steps; the lines P's tree printed up to the `count`th that starts with `until`
        (or an empty line: the output closed, every process of the tree gone)."""
        assert self.p.stdin is not None
        self.p.stdin.write(steps + "\n")
        self.p.stdin.flush()
        out = []
        while True:
            line = self._line()
            out.append(line)
            if not line or (line.startswith(until) and sum(x.startswith(until) for x in out) == count):
                return out

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def tree(workload: Workload, node: Path) -> Iterator[Tree]:
    t = Tree(workload, node)
    yield t
    t.close()


def _hook(kind: str, selector: dict[str, Any]) -> dict[str, Any]:
    sel = [{**selector, "matchActions": [{"action": "Sigkill"}]}]
    if kind == "tracepoint":
        return {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_getppid", "selectors": sel}]}
    if kind == "syscall-kprobe":  # a kprobe where the kernel has them, its syscall tracepoint where not
        return {"kprobes": [{"call": "sys_getppid", "syscall": True, "selectors": sel}]}
    if kind == "kernel-kprobe":
        return {"kprobes": [{"call": "__x64_sys_getppid", "syscall": False, "selectors": sel}]}
    if kind == "uprobe":
        return {"uprobes": [{"path": libc(), "symbols": ["getppid"], "selectors": sel}]}
    assert kind == "lsm"
    return {"lsmhooks": [{"hook": "task_prctl", "selectors": sel}]}


def _load(engine: Engine, workload: Workload, kind: str, pids: dict[str, Any]) -> None:
    doc = policy(f"pids-{kind}", _hook(kind, {"matchPIDs": [pids]}))
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons


def _outsider(workload: Workload, node: Path, *steps: str) -> subprocess.CompletedProcess[bytes]:
    """The same steps from a process of the workload that P did not start."""
    return workload.run([PY, str(node), *steps])


#: a child killed in its call: its parent saw SIGKILL (a grandchild's: its parent passed it on as 137)
CHILD_KILLED = ["rc -9"]
GRANDCHILD_KILLED = ["rc -9", "rc 137"]
SURVIVED = ["ran", "rc 0"]

KINDS = [
    pytest.param("tracepoint", "probe", id="tracepoint"),
    pytest.param("syscall-kprobe", "probe", id="syscall-kprobe"),
    pytest.param("uprobe", "probe", id="uprobe"),
    pytest.param("kernel-kprobe", "probe", id="kernel-kprobe", marks=pytest.mark.stock_kernel),
    pytest.param("lsm", "prctl", id="lsm", marks=pytest.mark.stock_kernel("bpf_lsm")),
]


@pytest.mark.parametrize(("kind", "call"), KINDS)
def test_in_follow_forks_matches_the_children_and_grandchildren_of_the_pid(engine: Engine, workload: Workload,
                                                                          node: Path, tree: Tree, kind: str,
                                                                          call: str) -> None:
    _load(engine, workload, kind, {"operator": "In", "followForks": True, "values": [tree.pid]})
    assert tree.run(f"spawn {call}")[:-1] == CHILD_KILLED
    assert tree.run(f"spawn spawn {call}")[:-1] == GRANDCHILD_KILLED
    other = _outsider(workload, node, "spawn", call)  # a child of another process
    assert (other.returncode, other.stdout) == (0, b"ran\nrc 0\n")
    assert tree.run(call) == [""]  # P itself, killed
    assert tree.p.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.parametrize(("kind", "call"), KINDS)
def test_not_in_follow_forks_spares_the_tree_of_the_pid(engine: Engine, workload: Workload, node: Path,
                                                       tree: Tree, kind: str, call: str) -> None:
    _load(engine, workload, kind, {"operator": "NotIn", "followForks": True, "values": [tree.pid]})
    assert tree.run(f"spawn {call}")[:-1] == SURVIVED
    assert tree.run(f"spawn spawn {call}")[:-1] == ["ran", "rc 0", "rc 0"]
    assert tree.run(call) == ["ran", "done"]
    other = _outsider(workload, node, "spawn", call)
    assert (other.returncode, other.stdout) == (137, b"rc -9\n")


def test_without_follow_forks_only_the_pid_itself_matches(engine: Engine, workload: Workload, node: Path,
                                                          tree: Tree) -> None:
    _load(engine, workload, "tracepoint", {"operator": "In", "values": [tree.pid]})
    assert tree.run("spawn probe")[:-1] == SURVIVED
    assert tree.run("probe") == [""]
    assert tree.p.wait(timeout=10) == -signal.SIGKILL
    events = wait_events(engine, lambda ev: "process_tracepoint" in ev)
    assert [ev["process_tracepoint"]["process"]["pid"] for ev in events if "process_tracepoint" in ev] == [tree.pid]


def test_not_in_without_follow_forks_matches_all_but_the_pid(engine: Engine, workload: Workload, node: Path,
                                                             tree: Tree) -> None:
    _load(engine, workload, "tracepoint", {"operator": "NotIn", "values": [tree.pid]})
    assert tree.run("probe") == ["ran", "done"]
    assert tree.run("spawn probe")[:-1] == CHILD_KILLED


def test_a_process_whose_parent_died_still_descends_from_its_grandparent(engine: Engine, workload: Workload,
                                                                         node: Path, tree: Tree) -> None:
    # P starts C and exits; C, reparented, starts G: C's recorded parent is still P (Tetragon's execve_map
    # keeps a living process's parent key too), so G is P's descendant and is killed
    _load(engine, workload, "tracepoint", {"operator": "In", "followForks": True, "values": [tree.pid]})
    assert tree.run("leave spawn probe", until="rc") == CHILD_KILLED
    assert tree.p.wait(timeout=10) == 0


def test_a_double_fork_ends_the_lineage_at_the_process_that_exited(engine: Engine, workload: Workload,
                                                                   node: Path, tree: Tree) -> None:
    # P starts C, C starts G and exits, G (reparented) starts H: H's lineage is H, G, then C, whose entry
    # went with it. Tetragon's walk ends there as well (its exit probe deletes C's execve_map entry), so
    # neither G nor H descends from P any more.
    _load(engine, workload, "tracepoint", {"operator": "In", "followForks": True, "values": [tree.pid]})
    out = tree.run("spawn orphan spawn probe", until="rc", count=2)  # C's status, then G's
    assert sorted(out) == ["done", "ran", "rc 0", "rc 0"], out  # H survived


def test_is_namespace_pid_with_follow_forks_matches_the_tree_of_a_namespace_init(engine: Engine,
                                                                                 workload: Workload,
                                                                                 node: Path) -> None:
    # In 1: the children of a pid namespace's pid 1; a process of the initial namespace never matches
    _load(engine, workload, "tracepoint", {"operator": "In", "followForks": True, "isNamespacePID": True,
                                           "values": [1]})
    inside = workload.run(["unshare", "--pid", "--fork", "--mount-proc", PY, str(node), "spawn", "spawn", "probe"])
    assert inside.stdout == b"rc -9\nrc 137\n", inside
    host = _outsider(workload, node, "spawn", "probe")
    assert (host.returncode, host.stdout) == (0, b"ran\nrc 0\n")


def test_not_in_1_with_is_namespace_pid_spares_a_namespace_init_tree_and_the_host(engine: Engine,
                                                                                  workload: Workload,
                                                                                  node: Path) -> None:
    # the corpus's sys_clock_settime.yaml, write.yaml: only a process of a pid namespace that does not
    # descend from its pid 1 (one that entered it, as `nsenter` does) passes NotIn 1
    _load(engine, workload, "tracepoint", {"operator": "NotIn", "followForks": True, "isNamespacePID": True,
                                           "values": [1]})
    ns = workload.popen(["unshare", "--pid", "--fork", "--mount-proc", "sleep", "60"])
    try:
        inside = workload.run(["unshare", "--pid", "--fork", "--mount-proc", PY, str(node), "spawn", "probe"])
        assert inside.stdout == b"ran\nrc 0\n", inside
        host = _outsider(workload, node, "spawn", "probe")
        assert (host.returncode, host.stdout) == (0, b"ran\nrc 0\n")
        sleeper = _wait_child(ns.pid)
        entered = workload.run(["nsenter", f"--pid=/proc/{sleeper}/ns/pid", "--", PY, str(node), "spawn", "probe"])
        assert entered.stdout == b"rc -9\n", entered
    finally:
        ns.kill()
        ns.wait()


def _wait_child(pid: int) -> int:
    """The child `unshare --fork` started (pid 1 of its namespace)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = children.read_text().split()
        if text:
            return int(text[0])
        time.sleep(0.01)
    pytest.fail(f"{pid} started no child")

"""Engine lifecycle on the real kernel: unload is synchronous, the engine never enforces against itself.

Removing a pin alone does not detach: the kernel drops the pin's reference after an
RCU grace period (30-45 ms measured), so these tests act *immediately* after
`unload` returns, when a lazy unload would still be enforcing.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from engine_support import Workload, exec_allowlist

from bpf import inventory, syscall, templates
from bpf.engine import Engine, remove_all
from bpf.policy import parse

pytestmark = pytest.mark.kernel

PY = os.path.realpath(sys.executable)  # exec'd by its real path, as the allowlist names it
EXEC_ON_INPUT = ("import os, sys; print('ready', flush=True); sys.stdin.readline(); "
                 "os.execv('/bin/sh', ['sh', '-c', 'echo ran'])")
RAW_SOCKET = "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1); print('ok')"


def _ids(engine: Engine, key: str) -> tuple[set[int], set[int], set[int]]:
    lp = engine.loaded()[key]
    return ({i for _, i in lp.prog_ids}, {i for _, i in lp.link_ids}, {i for _, i in lp.map_ids})


def _left_in_kernel(progs: set[int], links: set[int], maps: set[int]) -> set[int]:
    inv = inventory.inventory(cgroup_hooks=())
    return ((progs & {p.id for p in inv.programs}) | (links & {link.id for link in inv.links})
            | (maps & set(syscall.map_ids())))


def test_unload_of_an_enforcing_exec_policy_stops_it_before_returning(engine: Engine, workload: Workload) -> None:
    for round_ in range(3):  # the window a lazy unload leaves is short: look more than once
        key = f"unload-now-{round_}"
        assert engine.load(exec_allowlist(key, ["/usr/bin/true", PY]), "enforced", cgroups=[workload.path]).loaded
        assert workload.run(["/bin/sh", "-c", "true"]).returncode == -signal.SIGKILL
        progs, links, maps = _ids(engine, key)
        # started before the unload, it execs the forbidden shell the moment it reads a line
        waiting = workload.popen([PY, "-c", EXEC_ON_INPUT], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert waiting.stdout is not None and waiting.stdout.readline() == b"ready\n"

        engine.unload(key)
        out, _ = waiting.communicate(b"go\n", timeout=30)
        left = _left_in_kernel(progs, links, maps)

        assert (waiting.returncode, out) == (0, b"ran\n"), f"round {round_}: still enforcing after unload"
        assert left == set(), f"round {round_}: still in the kernel after unload: {sorted(left)}"
    assert engine.loaded() == {}


def test_unload_of_a_cgroup_socket_policy_detaches_before_returning(engine: Engine, workload: Workload) -> None:
    res = engine.load(parse(templates.render("block-raw-sockets", "raw-now")), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run([sys.executable, "-c", RAW_SOCKET]).returncode != 0
    progs, links, maps = _ids(engine, "raw-now")

    engine.unload("raw-now")
    ran = workload.run([sys.executable, "-c", RAW_SOCKET])
    left = _left_in_kernel(progs, links, maps)
    attached = [a for a in inventory.inventory(cgroup_root=workload.path).cgroup_attachments
                if set(a.prog_ids) & progs]

    assert (ran.returncode, ran.stdout) == (0, b"ok\n"), ran.stderr
    assert left == set() and attached == []


# An agent: an engine in its own process, inside the workload it enforces on.
_AGENT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from bpf.engine import Engine, remove_all
from bpf.policy import parse
e = Engine(pin_root=Path({pins!r}), node_name="test-node")
if {adopt!r}:
    e.adopt()
out = []
for doc, mode in json.loads({loads!r}):
    r = e.load(parse(doc), mode, cgroups=[{cg!r}])
    out.append([r.loaded, list(r.reasons)])
print(json.dumps(out), flush=True)
sys.stdin.readline()
"""
_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
# bpf(BPF_PROG_LOAD, NULL, 0): the policy acts on entry, before the kernel looks at the (missing) attributes
PROG_LOAD = ("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
             f"r = libc.syscall({_BPF_SYSCALL.get(os.uname().machine, 321)}, 5, None, 0); "
             "print('returned', r, flush=True)")


def _agent(workload: Workload, pin_root: Path, loads: list[tuple[dict, str]], adopt: bool = False
           ) -> tuple[subprocess.Popen[bytes], list[list]]:
    root = str(Path(__file__).resolve().parents[2])
    code = _AGENT.format(root=root, pins=str(pin_root), adopt=adopt, loads=json.dumps(loads),
                         cg=str(workload.path))
    p = workload.popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line, f"the agent died (status {p.wait()})"
    return p, json.loads(line)


def _exempt(pin_root: Path) -> set[int]:
    fd = syscall.obj_get(pin_root / "_self")
    try:
        return {struct.unpack("<I", k)[0] for k in syscall.map_keys(fd, 4)}
    finally:
        os.close(fd)


def test_the_engine_is_exempt_from_its_own_policies_also_after_a_restart(
        pin_root: Path, workload: Workload) -> None:
    """block-bpf-load enforced on the agent's own cgroup: the agent keeps loading policies (a restarted
    agent, with a new pid, too), while any other process there that loads a BPF program is killed."""
    block = templates.render("block-bpf-load", "no-bpf", {})
    watch = exec_allowlist("watch", ["/usr/bin/true"]).document  # observe: it only reports
    first, results = _agent(workload, pin_root, [(block, "enforced"), (watch, "observe")])
    try:
        assert results == [[True, []], [True, []]]
        other = workload.run([sys.executable, "-c", PROG_LOAD])
        assert (other.returncode, other.stdout) == (-signal.SIGKILL, b"")
        outside = subprocess.run([sys.executable, "-c", PROG_LOAD], capture_output=True, timeout=30)
        assert outside.returncode == 0 and outside.stdout.startswith(b"returned -1")
        assert _exempt(pin_root) == {first.pid}
    finally:
        first.kill()
        first.wait()
    # the kernel forgets a dead engine at once: its pid, once reused, is not exempt
    assert _exempt(pin_root) == set()

    # a new agent (new pid) adopts what is pinned and loads again: exempt before its first load
    later = dict(watch, metadata={"name": "watch-later"})
    second, results = _agent(workload, pin_root, [(later, "observe")], adopt=True)
    try:
        assert results == [[True, []]]
        assert _exempt(pin_root) == {second.pid}  # the dead agent's entry was dropped
        assert workload.run([sys.executable, "-c", PROG_LOAD]).returncode == -signal.SIGKILL
    finally:
        assert second.stdin is not None
        second.communicate(b"done\n", timeout=30)
    assert second.returncode == 0


def test_remove_all_stops_enforcing_and_leaves_nothing(pin_root: Path, workload: Workload) -> None:
    """What `palisade-agent reset` does: adopted policies, a half-built load and the exemption map all go."""
    with Engine(pin_root=pin_root) as e:
        assert e.load(exec_allowlist("reset-a", ["/usr/bin/true"]), "enforced", cgroups=[workload.path]).loaded
        assert e.load(exec_allowlist("reset-b", ["/usr/bin/true"]), "observe", cgroups=[workload.path]).loaded
        ids = [_ids(e, k) for k in ("reset-a", "reset-b")]
    # a loader that died mid-load leaves a directory no engine adopts
    half = pin_root / "_loading_999999_x"
    half.mkdir()
    fd = syscall.map_create(2, 4, 4, 1, name="half")  # BPF_MAP_TYPE_ARRAY
    try:
        syscall.obj_pin(fd, half / "map_pl_cfg")
        half_map = syscall.obj_id(fd)
    finally:
        os.close(fd)
    assert workload.run(["/bin/sh", "-c", "true"]).returncode == -signal.SIGKILL

    unloaded, problems = remove_all(pin_root)

    assert sorted(unloaded) == ["reset-a", "reset-b"] and problems == []
    assert not pin_root.exists()
    assert workload.run(["/bin/sh", "-c", "true"]).returncode == 0
    progs, links, maps = (set().union(*x) for x in zip(*ids, strict=True))
    assert inventory.wait_until_gone(progs, links, maps | {half_map}, timeout=2.0)

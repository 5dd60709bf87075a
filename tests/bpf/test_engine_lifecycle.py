"""Engine lifecycle on the real kernel: unload is synchronous, the engine never enforces against itself.

Removing a pin alone does not detach: the kernel drops the pin's reference after an
RCU grace period (30-45 ms measured), so these tests act *immediately* after
`unload` returns, when a lazy unload would still be enforcing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from engine_support import Workload, exec_allowlist

from bpf import inventory, syscall, templates
from bpf.engine import Engine
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

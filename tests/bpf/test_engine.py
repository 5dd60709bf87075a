"""The engine on the real kernel: exec allowlist, block-execve-tmp, modes, pinning and adoption, refusals.

Every test puts its workload in its own cgroup (see engine_support) and shows the
real outcome: exit status -9 for a killed process, untouched processes outside.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from engine_support import Workload, exec_allowlist, new_cgroup, our_programs, policy, remove_cgroup, wait_events

from bpf import inventory, syscall, templates
from bpf.engine import Engine
from bpf.policy import parse

pytestmark = pytest.mark.kernel

ALLOWED = ["/usr/bin/true", "/usr/bin/env"]


def test_exec_allowlist_kills_outside_the_list_only_inside_the_workload(
        engine: Engine, workload: Workload) -> None:
    res = engine.load(exec_allowlist("allow-true", ALLOWED), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons

    killed = workload.run(["/bin/sh", "-c", "echo ran"])
    assert killed.returncode == -signal.SIGKILL
    assert killed.stdout == b""  # the shell never ran a single instruction of its own

    assert workload.run(["/usr/bin/true"]).returncode == 0
    outside = subprocess.run(["/bin/sh", "-c", "echo ran"], capture_output=True, timeout=30)
    assert (outside.returncode, outside.stdout) == (0, b"ran\n")

    c = engine.counters("allow-true")
    assert c.enforced == 1 and c.would_have_enforced == 0


def test_exec_allowlist_in_observe_mode_lets_it_run_and_reports_the_action(
        engine: Engine, workload: Workload) -> None:
    assert engine.load(exec_allowlist("allow-true-obs", ALLOWED), "observe", cgroups=[workload.path]).loaded

    ran = workload.run(["/bin/sh", "-c", "echo ran"])
    assert (ran.returncode, ran.stdout) == (0, b"ran\n")

    events = wait_events(engine, lambda ev: "process_tracepoint" in ev)
    # the file that ran (/bin/sh is a symlink on Debian)
    real = os.path.realpath("/bin/sh")
    [ev] = [ev for ev in events if ev.get("process_tracepoint", {}).get("process", {}).get("binary") == real]
    tp = ev["process_tracepoint"]
    assert tp["action"] == "KPROBE_ACTION_SIGKILL"
    assert tp["policy_name"] == "allow-true-obs"
    assert (tp["subsys"], tp["event"]) == ("sched", "sched_process_exec")
    assert ev["palisade"]["mode"] == "observe"
    assert ev["palisade"]["would_have_acted"] is True and ev["palisade"]["acted"] is False
    assert ev["palisade"]["cgroup_id"] == workload.cgroup_id
    assert ev["node_name"] == "test-node" and ev["time"].endswith("Z")
    c = engine.counters("allow-true-obs")
    assert (c.enforced, c.would_have_enforced) == (0, 1)


def test_block_execve_tmp(engine: Engine, workload: Workload, tmp_path: Path) -> None:
    """A copy of /bin/true in /tmp dies, /usr/bin/true runs.

    The exec hook judges the file that runs, so `./x` from inside /tmp dies too
    (test_engine_evasion has every other way of reaching it); a symlink in /tmp to
    /usr/bin/true still dies, because the syscall hooks judge the path as typed as well
    (that is how a script in /tmp, whose running file is its interpreter, is caught).
    """
    tmp = Path("/tmp") / f"palisade-exec-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        shutil.copy("/bin/true", tmp / "x")
        os.symlink("/usr/bin/true", tmp / "link")
        res = engine.load(parse(templates.render("block-execve-tmp", "no-tmp-exec")), "enforced",
                          cgroups=[workload.path])
        assert res.loaded, res.reasons

        assert workload.run([str(tmp / "x")]).returncode == -signal.SIGKILL
        assert workload.run(["/usr/bin/true"]).returncode == 0
        assert workload.run([str(tmp / "link")]).returncode == -signal.SIGKILL
        assert workload.run(["./x"], cwd=tmp).returncode == -signal.SIGKILL
        # outside the workload nothing is enforced
        assert subprocess.run([str(tmp / "x")], timeout=30).returncode == 0
    finally:
        shutil.rmtree(tmp)


def test_mode_switch_changes_behaviour_without_reloading(engine: Engine, workload: Workload) -> None:
    assert engine.load(exec_allowlist("ladder", ALLOWED), "observe", cgroups=[workload.path]).loaded
    progs = engine.loaded()["ladder"].prog_ids

    assert workload.run(["/bin/sh", "-c", "true"]).returncode == 0
    engine.set_mode("ladder", "enforce_ready")
    assert workload.run(["/bin/sh", "-c", "true"]).returncode == 0
    engine.set_mode("ladder", "enforced")
    assert workload.run(["/bin/sh", "-c", "true"]).returncode == -signal.SIGKILL
    engine.set_mode("ladder", "observe")
    assert workload.run(["/bin/sh", "-c", "true"]).returncode == 0

    now = engine.loaded()["ladder"]
    assert now.prog_ids == progs  # the same programs all along
    assert now.mode == "observe"
    c = engine.counters("ladder")
    assert (c.enforced, c.would_have_enforced) == (1, 3)
    modes = [ev["palisade"]["mode"] for ev in wait_events(engine, lambda ev: False, timeout=1.0)]
    assert modes == ["observe", "enforce_ready", "enforced", "observe"]


def test_policy_mode_monitor_never_acts_even_when_the_ladder_says_enforced(
        engine: Engine, workload: Workload) -> None:
    # Tetragon's own switch, written in the policy: the less enforcing of it and the ladder wins
    doc = dict(exec_allowlist("monitored", ALLOWED).document)
    doc["spec"] = {**doc["spec"], "options": [{"name": "policy-mode", "value": "monitor"}]}
    res = engine.load(parse(doc), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert any("policy-mode monitor" in n for n in res.notes)
    assert engine.loaded()["monitored"].mode == "enforce_ready"
    assert workload.run(["/bin/sh", "-c", "true"]).returncode == 0
    engine.set_mode("monitored", "enforced")  # a later bundle: still monitored
    assert workload.run(["/bin/sh", "-c", "true"]).returncode == 0
    c = engine.counters("monitored")
    assert (c.enforced, c.would_have_enforced) == (0, 2)


_LOADER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from bpf.engine import Engine
    from bpf.policy import parse
    import json
    e = Engine(pin_root=Path({pins!r}))
    r = e.load(parse(json.loads({doc!r})), "enforced", cgroups=[{cg!r}])
    print("loaded" if r.loaded else "failed " + "; ".join(r.reasons), flush=True)
    time.sleep(600)
""")


def test_enforcement_survives_the_loader_and_is_adopted_then_removed(
        pin_root: Path, workload: Workload) -> None:
    import json

    doc = exec_allowlist("outlives", ALLOWED).document
    root = str(Path(__file__).resolve().parents[2])
    code = _LOADER.format(root=root, pins=str(pin_root), doc=json.dumps(doc), cg=str(workload.path))
    loader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert loader.stdout is not None
        assert loader.stdout.readline().strip() == b"loaded"
    finally:
        loader.kill()
        loader.wait()
    assert loader.returncode == -signal.SIGKILL

    # nobody holds a file descriptor any more: only the pins keep it enforcing
    assert workload.run(["/bin/sh", "-c", "true"]).returncode == -signal.SIGKILL
    assert workload.run(["/usr/bin/true"]).returncode == 0

    e = Engine(pin_root=pin_root)
    try:
        assert e.adopt() == ["outlives"]
        adopted = e.loaded()["outlives"]
        assert adopted.adopted and adopted.mode == "enforced"
        assert adopted.cgroups == (str(workload.path),)
        ids = {i for _, i in adopted.prog_ids}
        assert ids <= our_programs()
        e.unload("outlives")
    finally:
        e.close()
    assert not ids & our_programs()  # unload returns once the kernel has freed them
    assert workload.run(["/bin/sh", "-c", "true"]).returncode == 0
    inv = inventory.inventory(pin_root=pin_root, cgroup_hooks=())
    assert inv.pins == ()
    assert not any(link.prog_id in ids for link in inv.links)


def test_kprobe_on_a_kernel_function_is_refused_and_leaves_the_kernel_unchanged(
        engine: Engine, pin_root: Path) -> None:
    before = inventory.inventory(pin_root=pin_root, cgroup_hooks=())
    # Override on a function that is neither a security hook nor a cgroup socket call: this kernel lacks
    # kprobes, Debian's stock kernels lack bpf_override_return; either way the node cannot run it
    p = policy("fd-install", {"kprobes": [{
        "call": "fd_install", "syscall": False,
        "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "file"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Prefix", "values": ["/etc/"]}],
                       "matchActions": [{"action": "Override", "argError": -1}]}],
    }]})
    res = engine.load(p, "enforced")
    assert not res.loaded
    assert (res.reasons[0] == "unsupported: kprobe on fd_install needs kprobes, which this kernel lacks"
            or res.reasons[0].startswith("unsupported: spec.kprobes[0]: Override on fd_install needs "
                                         "bpf_override_return, which this kernel lacks")), res.reasons
    after = inventory.inventory(pin_root=pin_root, cgroup_hooks=())
    d = inventory.diff(before, after)
    # other tests may load programs meanwhile; the engine's own are named pl_*
    assert [p for p in d.added_programs if p.name.startswith("pl_")] == []
    assert d.added_pins == () and after.pins == ()
    assert engine.loaded() == {}


def test_a_load_failing_halfway_is_rolled_back(engine: Engine, pin_root: Path, workload: Workload) -> None:
    """The second attachment fails (a cgroup v1 directory cannot take cgroup BPF programs): the
    programs, maps, the first cgroup link and every pin made before it are removed."""
    v1 = next((p for p in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/memory"))
               if (p / "cgroup.procs").exists() and p != workload.path.parent), None)
    if v1 is None:
        pytest.skip("no cgroup v1 hierarchy to make the attachment fail")
    # A policy kept loaded meanwhile holds the exemption map, which every program of this pin root
    # uses: a leftover of the failed load would show up among the programs using it (programs of
    # other tests, or of other processes on the machine, do not).
    assert engine.load(exec_allowlist("keeper", ALLOWED), "observe", cgroups=[workload.path]).loaded
    keeper = {i for _, i in engine.loaded()["keeper"].prog_ids}
    fd = syscall.obj_get(engine.self_pin)
    try:
        self_map = syscall.map_info(fd).id
    finally:
        os.close(fd)

    res = engine.load(parse(templates.render("block-raw-sockets", "raw")), "enforced",
                      cgroups=[workload.path, v1])
    assert not res.loaded
    assert res.reasons[0].startswith("load failed: ")
    users = {p.id for p in inventory.inventory(cgroup_hooks=()).programs if self_map in p.map_ids}
    assert users and users <= keeper  # (not every program of the keeper needs the map)
    assert sorted(p.name for p in pin_root.iterdir()) == ["_self", "keeper"]
    # and the workload's sockets are not affected by a leftover link
    ok = workload.run([sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)"])
    assert ok.returncode == 0, ok.stderr
    # the last unload takes the exemption map with it
    engine.unload("keeper")
    assert list(pin_root.iterdir()) == []


def test_a_workload_policy_needs_its_cgroups(engine: Engine) -> None:
    namespaced = parse({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicyNamespaced",
                        "metadata": {"name": "ns-pol", "namespace": "team-a"},
                        "spec": {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_unshare"}]}})
    res = engine.load(namespaced, "enforced")
    assert not res.loaded and "load it with the cgroups of those workloads" in res.reasons[0]
    assert engine.loaded() == {}


def test_scoping_covers_cgroups_nested_in_the_workload(engine: Engine, workload: Workload) -> None:
    """A container's processes often sit in a child cgroup of the pod's: they are in scope too."""
    nested = Workload(workload.path / "container")
    nested.path.mkdir()
    try:
        assert engine.load(exec_allowlist("nested", ALLOWED), "enforced", cgroups=[workload.path]).loaded
        assert nested.run(["/bin/sh", "-c", "true"]).returncode == -signal.SIGKILL
        assert nested.run(["/usr/bin/true"]).returncode == 0
    finally:
        nested.path.rmdir()


def test_scoping_at_several_levels_covers_each_and_nothing_between(engine: Engine, workload: Workload) -> None:
    """The kernel looks up a task's ancestors only at the levels scope cgroups are at: with scopes at two
    levels, tasks under either are in scope, and a cgroup above the deeper one is not."""
    deep = Workload(workload.path / "pod" / "container")
    inside_deep = Workload(deep.path / "init")
    above_deep = Workload(workload.path / "pod")
    other = new_cgroup()
    made = [above_deep.path, deep.path, inside_deep.path]
    for d in made:
        d.mkdir()
    try:
        assert engine.load(exec_allowlist("levels", ALLOWED), "enforced", cgroups=[deep.path, other.path]).loaded
        for w in (deep, inside_deep, other):
            assert w.run(["/bin/sh", "-c", "true"]).returncode == -signal.SIGKILL, w.path
            assert w.run(["/usr/bin/true"]).returncode == 0
        assert above_deep.run(["/bin/sh", "-c", "true"]).returncode == 0
        assert workload.run(["/bin/sh", "-c", "true"]).returncode == 0
    finally:
        for d in reversed(made):
            d.rmdir()
        remove_cgroup(other)

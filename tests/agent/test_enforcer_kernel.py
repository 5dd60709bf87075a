"""EngineEnforcer on the real kernel: workload scoping, in-place map restore, foreign programs on its hooks,
the typed key each load runs under."""
from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from agent.apply import Inactive, Refused, apply, plan
from agent.enforcer import EngineEnforcer, LoadKey
from agent.select import Desired
from bpf import syscall
from bpf.syscall import AttachType, Insn, ProgType
from support.podpolicies import https_only
from wire.bundle import Origin, sha256_hex
from wire.values import Scope, State

pytestmark = pytest.mark.kernel

CONNECT = https_only("only-https")



def _desired(text: str, state: State = State.ENFORCED) -> Desired:
    return Desired("only-https", Origin("rule", "only-https"), Scope(), state, text, sha256_hex(text.encode()), 1,
                   "c" * 40)


def _connect(cgroup: Path, host: str, port: int) -> str:
    """The errno of a TCP connect from inside `cgroup` (empty when it connected)."""
    code = ("import socket\ns=socket.socket()\ns.settimeout(1)\n"
            f"try:\n  s.connect(('{host}',{port}))\nexcept OSError as e:\n  print(e.errno)\n")
    procs = cgroup / "cgroup.procs"
    return subprocess.run(["python3", "-c", code], capture_output=True, text=True, timeout=20,
                          preexec_fn=lambda: procs.write_text(str(os.getpid()))).stdout.strip()


def test_a_policy_for_no_workload_here_is_inactive(require_kernel: None, tmp_path: Path) -> None:
    root = Path("/sys/fs/bpf") / f"palisade-agent-enf-{uuid.uuid4().hex[:8]}"
    e = EngineEnforcer([], pin_root=root, node_name="t")
    try:
        with pytest.raises(Inactive, match="no workload on this node matches podSelector app=web"):
            e.load(_desired(CONNECT))
        assert e.loaded() == ()
    finally:
        e.close()


def test_connect_policy_denies_in_the_workload_and_a_foreign_program_on_its_hook_is_drift(
        enforcer: EngineEnforcer, cgroup: Path) -> None:
    loaded = enforcer.load(_desired(CONNECT))
    assert enforcer.drift() == []

    def connect(port: int) -> str:
        return _connect(cgroup, "127.0.0.1", port)

    assert connect(9) == "1"  # EPERM from the cgroup connect4 hook, in the workload only

    # another program attached to the same hook of the same cgroup
    prog = syscall.prog_load(ProgType.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, [Insn(0xB7, dst=0, imm=1), Insn(0x95)],
                             name="foreign", expected_attach_type=AttachType.BPF_CGROUP_INET4_CONNECT)
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        link = syscall.link_create_cgroup(prog, cg, AttachType.BPF_CGROUP_INET4_CONNECT)
        try:
            findings = enforcer.drift()
            assert [f.kind for f in findings] == ["foreign"], findings
            assert str(cgroup) in findings[0].detail
            assert connect(9) == "1"  # cgroup hooks run every program: ours still denies
        finally:
            os.close(link)
    finally:
        os.close(cg)
        os.close(prog)
    assert enforcer.drift() == []
    assert [x.handle for x in enforcer.loaded()] == [loaded.handle]


def test_a_written_map_entry_is_restored_in_place(enforcer: EngineEnforcer, cgroup: Path) -> None:
    loaded = enforcer.load(_desired(CONNECT))
    d = enforcer.pin_root / loaded.handle
    maps = sorted(p.name for p in d.iterdir() if p.name.startswith("map_pl_scope"))
    assert maps == ["map_pl_scope"]
    fd = syscall.obj_get(d / "map_pl_scope")
    try:
        syscall.map_update_elem(fd, (12345).to_bytes(8, "little"), b"\1")  # widen the scope to another cgroup
    finally:
        os.close(fd)
    (finding,) = enforcer.drift()
    assert (finding.kind, finding.handle) == ("map_changed", loaded.handle)
    assert enforcer.repair(loaded.handle).handle == loaded.handle  # same load, not a reload
    assert enforcer.drift() == []


#: CONNECT with destinations given by the node's placeholders instead of a port
EGRESS = CONNECT.replace("operator: NotDPort", "operator: NotDAddr").replace(
    'values: ["443"]', 'values: ["${PODCIDR}", "${SERVICECIDR}"]')


def test_placeholders_are_filled_from_the_node_and_an_unset_one_is_refused(enforcer: EngineEnforcer,
                                                                           cgroup: Path) -> None:
    enforcer.placeholders["PODCIDR"] = ["127.0.0.0/8"]
    with pytest.raises(Refused, match=r"placeholder \$\{SERVICECIDR\} has no value on this node"):
        enforcer.load(_desired(EGRESS))
    assert enforcer.loaded() == ()
    enforcer.placeholders["SERVICECIDR"] = ["10.96.0.0/12"]
    enforcer.load(_desired(EGRESS))

    assert _connect(cgroup, "127.0.0.1", 9) == "111"  # inside PODCIDR: reaches the port (ECONNREFUSED)
    assert _connect(cgroup, "192.0.2.1", 9) == "1"  # elsewhere: EPERM from the hook


NAMESPACED = CONNECT.replace("kind: TracingPolicy", "kind: TracingPolicyNamespaced").replace(
    "  name: only-https", "  name: only-https\n  namespace: shop")


def test_each_load_runs_under_its_typed_key_which_a_restarted_enforcer_reads_back(
        enforcer: EngineEnforcer, cgroup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`<name>--<digest>-<n>`: a second load of one version is n=2, a namespaced policy's handle is the engine's
    key of it (`<namespace>:<load name>`), each load reads the policy's YAML once; an enforcer started anew on
    the pins lists the same loads, and applying the selection keeps one and removes the other."""
    d = _desired(NAMESPACED)
    reads: list[str] = []
    real_load = yaml.load
    monkeypatch.setattr(yaml, "load", lambda text, **kw: reads.append(text) or real_load(text, **kw))
    first, second = enforcer.load(d), enforcer.load(d)
    assert reads == [d.yaml, d.yaml]
    key = LoadKey("only-https", d.sha256[:12], 1)
    assert (first.handle, first.name, first.digest) == (f"shop:{key}", "only-https", d.sha256[:12])
    assert second.handle == f"shop:{replace(key, n=2)}"
    assert LoadKey.of_pinned(str(key)) == key and LoadKey.of_pinned("only-https") is None
    assert (enforcer.pin_root / first.handle).is_dir() and enforcer.drift() == []
    assert _connect(cgroup, "127.0.0.1", 9) == "1"  # in force in the workload of namespace shop

    again = EngineEnforcer(enforcer.workloads, pin_root=enforcer.pin_root, node_name="t")
    try:
        assert again.loaded() == enforcer.loaded() == (first, second)
        assert apply(again, plan(again.loaded(), [d])).unloaded == [second.handle]
        assert again.loaded() == (first,)
        assert again.set_mode(first.handle, State.OBSERVE) == replace(first, state=State.OBSERVE)
        assert _connect(cgroup, "127.0.0.1", 9) == "111"  # observed only: the connect goes out (ECONNREFUSED)
    finally:
        again.close()

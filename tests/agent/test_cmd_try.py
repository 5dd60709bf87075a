"""`palisade-agent try`, run as the installed console script against this kernel and real files.

Each policy is really loaded (observe mode, scoped to an empty cgroup the command
makes) and unloaded; the tests check the report and that the command leaves
nothing behind: no program whose metadata names its policy, no pin root, no cgroup.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpf import inventory, syscall
from bpf.engine import Engine, remove_all
from bpf.policy import KINDS, parse
from support import cgroups, console

HOST_FLOOR = 25  # of Tetragon's examples load on this kernel (no kprobes; tests/bpf/test_engine_corpus.py)

pytestmark = pytest.mark.kernel


def _script() -> str:
    return console.script("palisade-agent")


def _try(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_script(), "try", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _document(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name},
                           "spec": spec}, sort_keys=False)


def _tracepoint(name: str) -> str:
    return _document(name, {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_setuid",
                                             "args": [{"index": 5, "type": "int"}]}]})


def _kprobe(name: str) -> str:
    return _document(name, {"kprobes": [{"call": "fd_install", "syscall": False,
                                         "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "file"}]}]})


@pytest.fixture()
def names() -> tuple[str, str]:
    """Policy names no other test uses, so the kernel's metadata maps tell the command's programs apart."""
    tag = uuid.uuid4().hex[:8]
    return f"try-setuid-{tag}", f"try-fd-install-{tag}"


@pytest.fixture()
def two(tmp_path: Path, names: tuple[str, str]) -> Path:
    f = tmp_path / "two.yaml"
    f.write_text(_tracepoint(names[0]) + "---\n" + _kprobe(names[1]))
    return f


def _programs_scoped_to(cgroup_name: str) -> set[int]:
    """Ids of the engine programs scoped to a cgroup whose name starts with `cgroup_name`: those that read
    their policy's `pl_cgpaths` map, keyed by the scope cgroups' paths (every scoped policy's cgroup-move
    check does). Not `pl_self`, which holds the loading engine's pid: the kernel drops that entry when
    the engine exits, so it would miss programs a dead command left pinned."""
    needle = f"/{cgroup_name}".encode()
    found = set()
    for prog in inventory.inventory(cgroup_hooks=()).programs:
        if not prog.name.startswith("pl_"):
            continue
        for map_id in prog.map_ids:
            try:
                fd = syscall.map_get_fd_by_id(map_id)
            except OSError:
                continue  # freed meanwhile
            try:
                info = syscall.map_info(fd)
                if info.name == "pl_cgpaths" and any(needle in k for k in syscall.map_keys(fd, info.key_size)):
                    found.add(prog.id)
            finally:
                os.close(fd)
    return found


def _programs_of(pid: int) -> set[int]:
    """The programs of the `palisade-agent try` that ran as `pid` (its cgroup is palisade-try-<pid>-*)."""
    return _programs_scoped_to(f"palisade-try-{pid}-")


def _leftovers(pid: int) -> list[Path]:
    """The pin root and cgroup of the command that ran as `pid`, if still there."""
    pattern = f"palisade-try-{pid}-*"
    return [*Path("/sys/fs/bpf").glob(pattern), *syscall.cgroup2_root().glob(pattern)]


def _gone(cgroup_name: str, timeout: float = 5.0) -> bool:
    # the kernel frees programs after an RCU grace period; the engine waits for it, this allows for slack
    deadline = time.monotonic() + timeout
    while _programs_scoped_to(cgroup_name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_loadable_and_an_unloadable_policy(require_kernel: None, two: Path, names: tuple[str, str]) -> None:
    result = _try(two)
    assert result.returncode == 1, result.stderr
    release = os.uname().release
    assert result.stdout.splitlines() == [
        f"{two}#0 {names[0]}: loaded",
        f"{two}#1 {names[1]}: refused: unsupported: kprobe on fd_install needs kprobes, which this kernel lacks",
        f"1 of 2 load on this kernel ({release})",
    ]
    assert "Traceback" not in result.stderr


def test_exit_0_when_everything_loads(require_kernel: None, tmp_path: Path, names: tuple[str, str]) -> None:
    f = tmp_path / "one.yml"
    f.write_text(_tracepoint(names[0]))
    result = _try(f)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"1 of 1 load on this kernel ({os.uname().release})"


def test_json_lists_every_policy_with_its_reasons(require_kernel: None, two: Path, names: tuple[str, str]) -> None:
    result = _try("-o", "json", two)
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kernel_release"] == os.uname().release
    assert doc["skipped"] == []
    loaded, refused = doc["policies"]
    assert loaded == {"file": str(two), "document": 0, "name": names[0], "loaded": True, "reason": None,
                      "reasons": [], "notes": loaded["notes"]}
    assert isinstance(loaded["notes"], list)
    assert refused["file"] == str(two) and refused["document"] == 1 and refused["name"] == names[1]
    assert refused["loaded"] is False
    assert refused["reasons"] == ["unsupported: kprobe on fd_install needs kprobes, which this kernel lacks"]
    assert refused["reason"] == refused["reasons"][0]


def test_several_reasons_show_the_first_and_how_many_more(require_kernel: None, tmp_path: Path) -> None:
    f = tmp_path / "many.yaml"
    doc = yaml.safe_load(_kprobe("try-two-kprobes"))
    doc["spec"]["kprobes"].append({"call": "security_file_open", "syscall": False})
    f.write_text(yaml.safe_dump(doc))
    result = _try("-o", "json", f)
    assert result.returncode == 1, result.stderr
    (p,) = json.loads(result.stdout)["policies"]
    assert len(p["reasons"]) >= 2
    assert p["reason"] == f"{p['reasons'][0]} (+{len(p['reasons']) - 1} more)"


def test_yaml_and_schema_errors_are_refusals_naming_the_file(
        require_kernel: None, tmp_path: Path, names: tuple[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: x\n spec: [\n")
    schema = tmp_path / "schema.yaml"
    schema.write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: wrong\n"
                      "spec:\n  kprobes: 3\n")
    good = tmp_path / "good.yaml"
    good.write_text(_tracepoint(names[0]))
    result = _try(bad, schema, good)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{bad}: refused: invalid YAML: ")
    assert lines[0].endswith("(line 5, column 2)")
    assert lines[1] == (f"{schema}#0 wrong: refused: invalid TracingPolicy (line 6, column 12): "
                        "spec.kprobes: expected a list, got int")
    assert lines[2] == f"{good}#0 {names[0]}: loaded"
    assert lines[3].startswith("1 of 3 load on this kernel")


def _egress(name: str) -> str:
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: tcp_connect
    syscall: false
    args:
    - index: 0
      type: sock
    selectors:
    - matchArgs:
      - index: 0
        operator: NotDAddr
        values:
        - 127.0.0.1
        - ${{PODCIDR}}
        - ${{SERVICECIDR}}
"""


def test_placeholders_come_from_the_agent_config_and_the_command_line(
        require_kernel: None, tmp_path: Path, names: tuple[str, str]) -> None:
    f = tmp_path / "egress.yaml"
    f.write_text(_egress(names[0]))
    # without values, refused at the value's line, as an agent without `placeholders` refuses it
    result = _try(f)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"{f}#0 {names[0]}: refused: invalid TracingPolicy (line 18, column 11): "
        "spec.kprobes[0].selectors[0].matchArgs[0].values[1]: placeholder ${PODCIDR} has no value on this "
        "node (set it under `placeholders` in agent.yaml); or give it here with --config or --placeholder")
    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text("placeholders: {PODCIDR: [10.244.0.0/16]}\n")
    result = _try("--config", agent_yaml, f)  # SERVICECIDR still missing
    assert result.returncode == 1, result.stderr
    assert "values[2]: placeholder ${SERVICECIDR} has no value" in result.stdout
    result = _try("--config", agent_yaml, "--placeholder", "SERVICECIDR=10.96.0.0/12,fd00::/108", f)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"{f}#0 {names[0]}: loaded"
    # a malformed flag is a usage error; a config that is not the agent's schema is an environment error
    result = _try("--placeholder", "PODCIDR", f)
    assert result.returncode == 2 and "expected NAME=VALUE" in result.stderr
    agent_yaml.write_text("placeholders: [10.0.0.0/8]\n")
    result = _try("--config", agent_yaml, f)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(f"palisade-agent try: config {agent_yaml}: placeholders: ")
    assert "Traceback" not in result.stderr


def test_other_kinds_are_skipped_and_a_file_without_policies_is_exit_2(
        require_kernel: None, tmp_path: Path, names: tuple[str, str]) -> None:
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n---\n" + _tracepoint(names[0]))
    result = _try(mixed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [f"{mixed}#0: skipped: kind Pod is not a TracingPolicy",
                                               f"{mixed}#1 {names[0]}: loaded"]
    config = tmp_path / "config.yaml"
    config.write_text("debug: false\n")
    result = _try(config)
    assert result.returncode == 2
    assert result.stderr == f"palisade-agent try: no TracingPolicy document in {config}\n"


def test_a_missing_file_is_exit_2_and_nothing_is_loaded(tmp_path: Path, two: Path) -> None:
    result = _try(two, tmp_path / "missing.yaml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"palisade-agent try: no such file: {tmp_path / 'missing.yaml'}\n"


def test_not_root_is_exit_2(require_kernel: None, names: tuple[str, str]) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    with tempfile.TemporaryDirectory() as d:  # pytest's tmp_path is private to root
        Path(d).chmod(0o755)
        f = Path(d) / "one.yaml"
        f.write_text(_tracepoint(names[0]))
        f.chmod(0o644)
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 _script(), "try", str(f)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "palisade-agent try: try needs root (it loads BPF programs)\n"


def test_nothing_is_left_after_a_run(require_kernel: None, two: Path, names: tuple[str, str],
                                     tmp_path: Path) -> None:
    # the detector sees a loaded policy (else its silence below would prove nothing)
    pin_root = Path("/sys/fs/bpf") / f"palisade-test-{uuid.uuid4().hex[:10]}"
    cg = syscall.cgroup2_root() / f"palisade-test-{uuid.uuid4().hex[:10]}"
    cg.mkdir()
    try:
        with Engine(pin_root=pin_root, node_name="test") as engine:
            policy = parse(yaml.safe_load(_tracepoint(names[0])))
            assert engine.load(policy, "observe", cgroups=[cg]).loaded
            assert _programs_scoped_to(cg.name)
            engine.unload(policy.key)
        assert _gone(cg.name)
    finally:
        assert not remove_all(pin_root)[1]
        cgroups.remove(cg)

    p = subprocess.Popen([_script(), "try", str(two)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 1, err
    assert f"{names[0]}: loaded" in out
    assert _programs_of(p.pid) == set()
    assert _leftovers(p.pid) == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_cleans_up(require_kernel: None, tmp_path: Path, names: tuple[str, str],
                                      signum: int, code: int) -> None:
    f = tmp_path / "many.yaml"
    f.write_text("---\n".join([_tracepoint(names[0])] * 200))
    p = subprocess.Popen([_script(), "try", str(f)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        first = p.stdout.readline()  # lines are flushed one by one: the run is under way
        assert first == f"{f}#0 {names[0]}: loaded\n"
        p.send_signal(signum)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == code, err
    assert err.endswith("palisade-agent try: interrupted; everything it loaded is unloaded\n"), err
    assert "Traceback" not in err
    assert "load on this kernel" not in out  # stopped before the end
    assert _programs_of(p.pid) == set()
    assert _leftovers(p.pid) == []


def _tracing_policies(corpus: Path) -> int:
    n = 0
    for f in (corpus / "examples").rglob("*.y*ml"):
        n += sum(isinstance(d, dict) and d.get("kind") in KINDS for d in yaml.safe_load_all(f.read_text()))
    return n


@pytest.mark.slow
def test_the_tetragon_corpus(require_kernel: None, corpus: Path) -> None:
    files = sorted((corpus / "examples").rglob("*.y*ml"))
    # the values a Kubernetes node's agent.yaml gives, for the policies that use ${PODCIDR}, ${SERVICECIDR}
    placeholders = ("--placeholder", "PODCIDR=10.244.0.0/16", "--placeholder", "SERVICECIDR=10.96.0.0/12")
    p = subprocess.Popen([_script(), "try", "-o", "json", *placeholders, *map(str, files)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 1, err  # most of Tetragon's examples need kprobes
    assert "Traceback" not in err
    doc = json.loads(out)
    policies = doc["policies"]
    assert len(policies) == _tracing_policies(corpus)
    for pol in policies:
        assert pol["loaded"] or (pol["reason"] and all(pol["reasons"])), pol
        assert not any(r.startswith("internal error") for r in pol["reasons"]), pol  # an engine crash
    loaded = [pol for pol in policies if pol["loaded"]]
    # tests/bpf/test_engine_corpus.py counts the same through the engine (and in the 6.1 guest)
    assert len(loaded) >= HOST_FLOOR, [f"{pol['file']}#{pol['document']}" for pol in loaded]
    assert {s["kind"] for s in doc["skipped"]} <= {None, "Pod", "EventChecker"}
    assert _programs_of(p.pid) == set()
    assert _leftovers(p.pid) == []

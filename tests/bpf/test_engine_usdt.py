"""USDT probes (`spec.usdts`) on this machine's kernel: a C program built here with <sys/sdt.h>
(tests/bpf/usdt_prog.py), run from a workload cgroup. The tests assert the `process_usdt` event as Tetragon
prints it, with each argument read as the probe's note says (a register, memory off the stack pointer, a
pointer to a string), matchArgs on an argument, Sigkill at the probe, the probe's semaphore counted up in a
running process while the policy is loaded and down when it goes, and that a policy whose binary,
provider or probe is missing is refused with the reason and leaves nothing in the kernel.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import Workload, our_programs, policy, programs_gone, wait_events
from usdt_prog import build

from bpf import usdt
from bpf.engine import Engine
from bpf.policy import UsdtTarget

pytestmark = pytest.mark.kernel

_ARGS = [{"index": 0, "type": "int32"}, {"index": 1, "type": "int64"}, {"index": 2, "type": "string"},
         {"index": 3, "type": "int", "label": "on-stack"}]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("usdt-prog")
    yield build(d)
    shutil.rmtree(d)


def _usdt(program: Path, name: str = "args", **extra: Any) -> dict[str, Any]:
    return {"usdts": [{"path": str(program), "provider": "pl", "name": name, **extra}]}


def _events(engine: Engine, until: Any = lambda b: True, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The process_usdt bodies polled until one satisfies `until`."""
    events = wait_events(engine, lambda ev: "process_usdt" in ev and until(ev["process_usdt"]), timeout)
    return [ev["process_usdt"] for ev in events if "process_usdt" in ev]


def test_a_probe_reports_its_arguments_as_tetragon_prints_them(engine: Engine, workload: Workload,
                                                               program: Path) -> None:
    doc = policy("usdt-args", _usdt(program, args=_ARGS, message="probe hit", tags=["usdt"]))
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    run = workload.run([str(program), "args", "3", "hello", "world"])
    assert run.returncode == 0 and run.stdout == b"after hello\nafter world\n", run
    events = _events(engine, lambda b: b["args"][2] == {"string_arg": "world"})
    mine = [e for e in events if e["process"]["binary"] == str(program)]
    assert [e["args"] for e in mine] == [
        # an int in a register, a long in another, a string behind a pointer in memory, an int on the stack
        [{"int_arg": 3}, {"long_arg": -3_000_000_000_000}, {"string_arg": "hello"},
         {"int_arg": 6, "label": "on-stack"}],
        [{"int_arg": 3}, {"long_arg": -3_000_000_000_000}, {"string_arg": "world"},
         {"int_arg": 7, "label": "on-stack"}],
    ], events
    ev = mine[0]
    assert (ev["path"], ev["provider"], ev["name"]) == (str(program), "pl", "args")
    assert ev["policy_name"] == "usdt-args" and ev["message"] == "probe hit" and ev["tags"] == ["usdt"]
    assert ev["action"] == "KPROBE_ACTION_POST"
    assert ev["process"]["pid"] > 0 and "function_name" not in ev and "symbol" not in ev
    # a negative int in a register, sign-extended from the 4 bytes the note gives
    run = workload.run([str(program), "args", "-2", "neg"])
    assert run.returncode == 0
    neg = _events(engine, lambda b: b["args"][2] == {"string_arg": "neg"})
    assert [e["args"][:2] for e in neg if e["args"][2] == {"string_arg": "neg"}] == [
        [{"int_arg": -2}, {"long_arg": 2_000_000_000_000}]]


def test_match_args_on_a_probe_argument_chooses_the_hits(engine: Engine, workload: Workload,
                                                         program: Path) -> None:
    doc = policy("usdt-match", _usdt(program, args=_ARGS, selectors=[
        {"matchArgs": [{"index": 2, "operator": "Equal", "values": ["wanted"]}]},
        {"matchArgs": [{"index": 0, "operator": "GT", "values": ["40"]}]}]))
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run([str(program), "args", "1", "other", "wanted", "more"]).returncode == 0
    assert workload.run([str(program), "args", "41", "big"]).returncode == 0
    events = _events(engine, lambda b: b["args"][2] == {"string_arg": "big"})
    assert sorted((e["args"][0]["int_arg"], e["args"][2]["string_arg"]) for e in events) == [(1, "wanted"),
                                                                                            (41, "big")]


def test_sigkill_at_a_probe_kills_the_process_there(engine: Engine, workload: Workload, program: Path) -> None:
    doc = policy("usdt-kill", _usdt(program, args=_ARGS[2:3], selectors=[
        {"matchArgs": [{"index": 2, "operator": "Equal", "values": ["doomed"]}],
         "matchActions": [{"action": "Sigkill"}]}]))
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    run = workload.run([str(program), "args", "1", "spared", "doomed", "never"])
    assert run.returncode == -signal.SIGKILL, run
    assert run.stdout == b"after spared\n"  # killed at the probe: the line after it never printed
    events = _events(engine, lambda b: b["action"] == "KPROBE_ACTION_SIGKILL")
    killed = [e for e in events if e["action"] == "KPROBE_ACTION_SIGKILL"]
    assert killed and killed[0]["args"] == [{"string_arg": "doomed"}] and killed[0]["name"] == "args"


def _semaphore(pid: int, program: Path) -> int:
    """The pl:sema semaphore's value in process `pid`, read from its memory at the address the note gives
    (the file's load base is where the mapping of its first page starts)."""
    note = next(n for n in usdt.notes(program) if n.name == "sema")
    base = None
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(program) and int(fields[2], 16) == 0:
            base = int(fields[0].split("-")[0], 16)
            break
    assert base is not None, f"pid {pid} does not map {program}"
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(base + note.semaphore)
        return int.from_bytes(mem.read(2), "little")


def test_a_probe_with_a_semaphore_is_enabled_while_the_policy_is_loaded(engine: Engine, workload: Workload,
                                                                        program: Path) -> None:
    assert usdt.resolve(UsdtTarget(str(program), "pl", "sema"))[0].ref_ctr_offset > 0
    waiting = workload.popen([str(program), "sema", "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert waiting.stdout is not None and waiting.stdout.readline() == b"ready\n"
        assert _semaphore(waiting.pid, program) == 0
        doc = policy("usdt-sema", _usdt(program, "sema", args=[{"index": 0, "type": "int32"}]))
        res = engine.load(doc, "observe", cgroups=[workload.path])
        assert res.loaded, res.reasons
        # counted up in the process that was already running, and in one started now
        assert _semaphore(waiting.pid, program) == 1
        run = workload.run([str(program), "sema"])
        assert run.stdout == b"semaphore 1\n", run
        events = _events(engine, lambda b: b["name"] == "sema")
        assert [e["args"] for e in events if e["process"]["binary"] == str(program)] == [[{"int_arg": 7}]]
        engine.unload(doc.key)
        # the kernel drops the uprobe when the link's last reference goes, which it may finish a moment later
        deadline = time.monotonic() + 5
        while _semaphore(waiting.pid, program) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _semaphore(waiting.pid, program) == 0
        out, _ = waiting.communicate(b"go\n", timeout=10)
        assert waiting.returncode == 0 and out == b"semaphore 0\n"
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert workload.run([str(program), "sema"]).stdout == b"semaphore 0\n"


@pytest.mark.parametrize("entry, expected", [
    pytest.param({"path": "/nonexistent/usdt-prog"},
                 "usdt /nonexistent/usdt-prog pl:args: no such file on this node", id="missing-file"),
    pytest.param({"provider": "nope"}, "usdt {prog} nope:args: no USDT probe nope:args in {prog} "
                                       "(it has pl:args, pl:sema, pl:set, pl:twice)", id="missing-provider"),
    pytest.param({"name": "nope"}, "usdt {prog} pl:nope: no USDT probe pl:nope in {prog}", id="missing-name"),
    pytest.param({"args": [{"index": 5, "type": "int"}]},
                 "argument index 5 of usdt {prog} pl:args: the probe has 4 argument(s)", id="missing-argument"),
    pytest.param({"name": "set", "args": [{"index": 1, "type": "int"}],
                  "selectors": [{"matchActions": [{"action": "Set", "argIndex": 0, "argValue": 32}]}]},
                 "Set on usdt {prog} pl:set: argument 1 of the probe is", id="set-on-a-register"),
])
def test_a_probe_that_cannot_be_placed_is_refused_and_leaves_nothing(engine: Engine, workload: Workload,
                                                                     program: Path, entry: dict[str, Any],
                                                                     expected: str) -> None:
    before = our_programs()
    spec = _usdt(program)
    spec["usdts"][0].update(entry)
    res = engine.load(policy("usdt-refused", spec), "enforced", cgroups=[workload.path])
    assert not res.loaded
    assert all(r.startswith("unsupported: spec.usdts[0]") for r in res.reasons), res.reasons
    assert any(expected.format(prog=program) in r for r in res.reasons), res.reasons
    assert programs_gone(our_programs() - before)
    assert not engine.pin_root.exists() or not [p for p in engine.pin_root.iterdir() if p.is_dir()]
    assert workload.run([str(program), "args", "1", "free"]).stdout == b"after free\n"


@pytest.mark.parametrize("mode", ["enforced", "observe"])
def test_set_writes_its_value_where_the_probe_argument_is_when_enforced(engine: Engine, workload: Workload,
                                                                        program: Path, mode: str) -> None:
    """As Tetragon's Set (usdt-set.yaml): the int the probe's first argument names in memory becomes argValue,
    which the program reads after the probe; the event shows the argument as the probe saw it. In observe
    mode nothing is written and the event says what would have been done. A kernel in lockdown (this
    development host forces integrity mode) has no bpf_probe_write_user: the policy is refused saying so,
    and the write is checked in the 6.1 guest (tests/vm)."""
    doc = policy(f"usdt-set-{mode}", _usdt(program, "set", args=[{"index": 0, "type": "int32"},
                                                                   {"index": 1, "type": "int32"}],
                                           selectors=[{"matchArgs": [{"index": 1, "operator": "Equal",
                                                                      "values": ["5"]}],
                                                       "matchActions": [{"action": "Set", "argIndex": 0,
                                                                         "argValue": 32}]}]))
    before = our_programs()
    res = engine.load(doc, mode, cgroups=[workload.path])
    if not engine.features.probe_write_user:
        assert not res.loaded and len(res.reasons) == 1, res.reasons
        assert res.reasons[0].startswith("unsupported: spec.usdts[0].selectors[0].matchActions[0]: Set on usdt "
                                         f"{program} pl:set writes argValue into the process's memory with "
                                         "bpf_probe_write_user, which this kernel refuses ("), res.reasons
        assert "cannot use helper bpf_probe_write_user" in res.reasons[0]
        assert programs_gone(our_programs() - before)
        assert workload.run([str(program), "set", "5"]).stdout == b"result 0\n"
        return
    assert res.loaded, res.reasons
    run = workload.run([str(program), "set", "5"])
    assert run.returncode == 0 and run.stdout == (b"result 32\n" if mode == "enforced" else b"result 0\n"), run
    assert workload.run([str(program), "set", "6"]).stdout == b"result 0\n"  # the selector does not match
    events = wait_events(engine, lambda ev: ev.get("process_usdt", {}).get("name") == "set")
    hits = [ev for ev in events if ev.get("process_usdt", {}).get("name") == "set"]
    assert [ev["process_usdt"]["args"] for ev in hits] == [[{"int_arg": 0}, {"int_arg": 5}]], events
    assert hits[0]["process_usdt"]["action"] == "KPROBE_ACTION_SET"
    assert hits[0]["palisade"]["acted"] == (mode == "enforced")
    assert hits[0]["palisade"]["would_have_acted"] == (mode != "enforced")


def test_a_probe_at_two_sites_fires_at_each_with_that_sites_arguments(engine: Engine, workload: Workload,
                                                                      program: Path) -> None:
    """Two notes of one probe (pl:twice): one uprobe each, whose link's cookie picks that site's argument
    specs (the first site passes the constant 1 and N in a register, the second 2 and a pointer)."""
    probes = usdt.resolve(UsdtTarget(str(program), "pl", "twice"))
    assert len(probes) == 2 and probes[0].args[0].value == 1 and probes[1].args[0].value == 2
    res = engine.load(policy("usdt-twice", _usdt(program, "twice", args=[{"index": 0, "type": "int"}])),
                      "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    run = workload.run([str(program), "twice", "7"])
    assert run.returncode == 0 and run.stdout == b"between\n"
    events = _events(engine, lambda b: b["args"] == [{"int_arg": 2}])
    assert [e["args"] for e in events if e["process"]["binary"] == str(program)] == [[{"int_arg": 1}],
                                                                                    [{"int_arg": 2}]]
    links = sorted(p.name for p in (engine.pin_root / "usdt-twice").iterdir() if p.name.startswith("link_pl_h0"))
    assert links == ["link_pl_h0_ud_0", "link_pl_h0_ud_1"]


_THROWER = r"""
#include <cstdio>
#include <stdexcept>
int main() {
    std::setvbuf(stdout, nullptr, _IONBF, 0);
    try { throw std::runtime_error("boom"); } catch (const std::exception &e) { std::printf("caught %s\n", e.what()); }
    return 0;
}
"""


def test_a_probe_of_a_shared_library_fires_in_the_programs_that_map_it(engine: Engine, workload: Workload,
                                                                        tmp_path: Path) -> None:
    """libstdc++'s own SDT probe libstdcxx:throw, in a C++ program built here that throws: the uprobe is on
    the library's file, so it fires in any process that maps it."""
    cxx = shutil.which("c++")
    if cxx is None:
        pytest.fail("this test builds a C++ program: install a C++ compiler (c++)")
    (tmp_path / "thrower.cc").write_text(_THROWER)
    subprocess.run([cxx, "-O1", "-o", str(tmp_path / "thrower"), str(tmp_path / "thrower.cc")], check=True)
    libs = subprocess.run(["ldd", str(tmp_path / "thrower")], capture_output=True, text=True, check=True).stdout
    lib = next(line.split()[2] for line in libs.splitlines() if "libstdc++.so" in line)
    res = engine.load(policy("usdt-throw", {"usdts": [{
        "path": lib, "provider": "libstdcxx", "name": "throw",
        "args": [{"index": 0, "type": "uint64"}, {"index": 1, "type": "uint64"}]}]}),
        "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    run = workload.run([str(tmp_path / "thrower")])
    assert run.returncode == 0 and run.stdout == b"caught boom\n", run
    events = _events(engine, lambda b: b["process"]["binary"] == str(tmp_path / "thrower"))
    mine = [e for e in events if e["process"]["binary"] == str(tmp_path / "thrower")]
    assert len(mine) == 1 and (mine[0]["path"], mine[0]["provider"], mine[0]["name"]) == (lib, "libstdcxx", "throw")
    # the exception object and its type_info: two user-space pointers
    assert all(a["size_arg"] > 0x1000 for a in mine[0]["args"]), mine[0]["args"]  # uint64: size_arg


def test_a_probe_in_a_binary_the_policy_names_through_a_symlink_fires_and_reports_that_path(
        engine: Engine, workload: Workload, program: Path, tmp_path: Path) -> None:
    link = tmp_path / "usdt-link"
    link.symlink_to(program)
    res = engine.load(policy("usdt-link", _usdt(link, args=_ARGS[:1])), "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run([str(program), "args", "9", "x"]).returncode == 0
    events = _events(engine)
    assert events and events[0]["path"] == str(link) and events[0]["args"] == [{"int_arg": 9}]
    assert os.path.realpath(link) == str(program)

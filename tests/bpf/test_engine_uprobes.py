"""uprobes in Tetragon's TracingPolicy language, on this machine's kernel (it has uprobes, not kprobes).

Each policy is written as Tetragon's documentation writes it (`spec.uprobes` with a path and symbols);
the probed code is libc's `getpid` or the functions of a small C program compiled here, run from a
workload cgroup. The tests assert the `process_uprobe` event as Tetragon prints it, the action (the
process killed before the code after the call runs), the selectors, the scope, and that a policy
whose file or function is missing is refused with the reason and leaves nothing in the kernel.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import Workload, build_c, libc, our_programs, policy, programs_gone, wait_events

from agent.events import compact
from bpf.engine import Engine

pytestmark = pytest.mark.kernel

_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* the probed functions: kept out of line, and called for real */
__attribute__((noinline)) void pl_target(const char *s) { __asm__ volatile("" : : "r"(s) : "memory"); }
__attribute__((noinline)) void pl_number(int n) { __asm__ volatile("" : : "r"(n) : "memory"); }

/* getpid: call libc's getpid; num N...: pl_number(N); otherwise pl_target(argv[i]) for each argument.
   Each call is followed by a line saying it returned. */
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 1 && strcmp(argv[1], "getpid") == 0) {
        printf("pid %d\n", (int)getpid());
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "num") == 0) {
        for (int i = 2; i < argc; i++) {
            pl_number(atoi(argv[i]));
            printf("after %s\n", argv[i]);
        }
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        pl_target(argv[i]);  /* argv is on the stack, in memory: readable from the probe */
        printf("after %s\n", argv[i]);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The C program above, built with the system compiler."""
    d = tmp_path_factory.mktemp("uprobe-prog")
    yield build_c(d, _PROGRAM, "-O1")
    shutil.rmtree(d)


def _uprobe_events(engine: Engine, until: Any = lambda b: True, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The process_uprobe bodies polled until one satisfies `until`."""
    events = wait_events(engine, lambda ev: "process_uprobe" in ev and until(ev["process_uprobe"]), timeout)
    return [ev["process_uprobe"] for ev in events if "process_uprobe" in ev]


def test_a_uprobe_on_libc_getpid_reports_the_call_as_tetragon_does(engine: Engine, workload: Workload,
                                                                  program: Path, tmp_path: Path) -> None:
    # the policy names libc through a symlink: the probe is on the file it leads to, the event names the
    # path the policy gave (as Tetragon's do)
    link = tmp_path / "libc-link.so.6"
    link.symlink_to(libc())
    doc = policy("uprobe-getpid", {"uprobes": [{"path": str(link), "symbols": ["getpid"],
                                                "message": "getpid called", "tags": ["test"]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    proc = workload.popen([str(program), "getpid"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out == f"pid {proc.pid}\n".encode()
    events = _uprobe_events(engine, lambda b: b["process"]["pid"] == proc.pid)
    mine = [e for e in events if e["process"]["pid"] == proc.pid]
    assert mine, f"no process_uprobe event of pid {proc.pid}: {events}"
    ev = mine[0]
    assert ev["path"] == str(link) and ev["symbol"] == "getpid"
    assert ev["process"]["binary"] == str(program)
    assert ev["policy_name"] == "uprobe-getpid"
    assert ev["message"] == "getpid called" and ev["tags"] == ["test"]
    assert ev["action"] == "KPROBE_ACTION_POST"
    assert "args" in ev and ev["args"] == []
    # tetra getevents -o compact's line for it
    line = compact({"process_uprobe": ev, "node_name": "test-node"})
    assert line.startswith("🕵️ uprobe  test-node ") and line.endswith(f"{program} {link} getpid"), line


def test_sigkill_on_a_uprobe_kills_before_the_function_runs(engine: Engine, workload: Workload,
                                                            program: Path) -> None:
    doc = policy("uprobe-kill", {"uprobes": [{
        "path": str(program), "symbols": ["pl_target"], "args": [{"index": 0, "type": "string"}],
        "selectors": [{"matchActions": [{"action": "Sigkill"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    run = workload.run([str(program), "doomed"])
    assert run.returncode == -signal.SIGKILL, run
    assert b"after" not in run.stdout  # killed in the probe: the code after the call never ran
    events = _uprobe_events(engine, lambda b: b["action"] == "KPROBE_ACTION_SIGKILL")
    killed = [e for e in events if e["action"] == "KPROBE_ACTION_SIGKILL"]
    assert killed and killed[0]["symbol"] == "pl_target" and killed[0]["args"] == [{"string_arg": "doomed"}]
    assert killed[0]["process"]["binary"] == str(program)


def test_signal_on_a_uprobe_sends_the_signal_given(engine: Engine, workload: Workload, program: Path) -> None:
    doc = policy("uprobe-signal", {"uprobes": [{
        "path": str(program), "symbols": ["pl_target"],
        "selectors": [{"matchActions": [{"action": "Signal", "argSig": int(signal.SIGTERM)}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    run = workload.run([str(program), "x"])
    assert run.returncode == -signal.SIGTERM and b"after" not in run.stdout, run


def test_observe_mode_reports_the_kill_it_would_make(engine: Engine, workload: Workload, program: Path) -> None:
    doc = policy("uprobe-would-kill", {"uprobes": [{
        "path": str(program), "symbols": ["pl_target"],
        "selectors": [{"matchActions": [{"action": "Sigkill"}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    run = workload.run([str(program), "spared"])
    assert run.returncode == 0 and run.stdout == b"after spared\n"
    events = wait_events(engine, lambda ev: "process_uprobe" in ev)
    seen = [ev for ev in events if "process_uprobe" in ev]
    assert seen and seen[0]["palisade"]["would_have_acted"] and not seen[0]["palisade"]["acted"]


def test_match_args_and_match_binaries_choose_the_calls(engine: Engine, workload: Workload, program: Path,
                                                        tmp_path: Path) -> None:
    # a hard link is the same inode (the uprobe fires in it too) under another name: matchBinaries tells
    # them apart by the file that runs
    other = tmp_path / "prog-other"
    os.link(program, other)
    doc = policy("uprobe-filter", {"uprobes": [
        {"path": str(program), "symbols": ["pl_target"], "args": [{"index": 0, "type": "string"}],
         "selectors": [{"matchBinaries": [{"operator": "In", "values": [str(program)]}],
                        "matchArgs": [{"index": 0, "operator": "Equal", "values": ["secret"]}]}]},
        {"path": str(program), "symbols": ["pl_number"], "args": [{"index": 0, "type": "int"}],
         "selectors": [{"matchArgs": [{"index": 0, "operator": "GT", "values": ["10"]}]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run([str(program), "public", "secret", "other"]).stdout == \
        b"after public\nafter secret\nafter other\n"
    assert workload.run([str(other), "secret"]).returncode == 0  # another binary: not matched
    assert workload.run([str(program), "num", "5", "42", "7"]).returncode == 0
    events = _uprobe_events(engine, lambda b: b["symbol"] == "pl_number")
    events += _uprobe_events(engine, timeout=0.5)  # anything else that would have come
    strings = [e["args"] for e in events if e["symbol"] == "pl_target"]
    numbers = [e["args"] for e in events if e["symbol"] == "pl_number"]
    assert strings == [[{"string_arg": "secret"}]], events
    assert numbers == [[{"int_arg": 42}]], events
    assert {e["process"]["binary"] for e in events} == {str(program)}


def test_match_pids_limits_the_probe_to_those_processes(engine: Engine, workload: Workload,
                                                        program: Path) -> None:
    sleeper = workload.popen(["/bin/sleep", "60"])
    try:
        for operator, killed in (("In", False), ("NotIn", True)):
            # the pid of a process that never calls the function: In spares the calls of others, NotIn kills
            doc = policy(f"uprobe-pids-{operator.lower()}", {"uprobes": [{
                "path": str(program), "symbols": ["pl_target"],
                "selectors": [{"matchPIDs": [{"operator": operator, "values": [sleeper.pid]}],
                               "matchActions": [{"action": "Sigkill"}]}]}]})
            res = engine.load(doc, "enforced", cgroups=[workload.path])
            assert res.loaded, res.reasons
            run = workload.run([str(program), "call"])
            assert (run.returncode, run.stdout) == ((-signal.SIGKILL, b"") if killed else (0, b"after call\n"))
            engine.unload(doc.key)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_process_outside_the_workload_is_not_affected(engine: Engine, workload: Workload,
                                                        program: Path) -> None:
    doc = policy("uprobe-scoped", {"uprobes": [{
        "path": str(program), "symbols": ["pl_target"],
        "selectors": [{"matchActions": [{"action": "Sigkill"}]}]}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    outside = subprocess.run([str(program), "outside"], capture_output=True, timeout=30)
    assert outside.returncode == 0 and outside.stdout == b"after outside\n"
    inside = workload.run([str(program), "inside"])
    assert inside.returncode == -signal.SIGKILL and inside.stdout == b""
    # nor is it reported
    events = wait_events(engine, lambda ev: False, timeout=0.5)
    assert [ev for ev in events if "process_uprobe" in ev]
    assert all(ev["palisade"]["cgroup_id"] == workload.cgroup_id for ev in events if "process_uprobe" in ev)


@pytest.mark.parametrize(("entry", "expected"), [
    pytest.param({"symbols": ["pl_target", "pl_no_such_function"]},
                 "uprobe on {prog} pl_no_such_function: {prog}: no function pl_no_such_function", id="missing-symbol"),
    pytest.param({"path": "/nonexistent/palisade/prog", "symbols": ["main"]},
                 "uprobe on /nonexistent/palisade/prog main: no such file on this node", id="missing-file"),
    pytest.param({"path": "/etc/hostname", "symbols": ["main"]},
                 "uprobe on /etc/hostname main: /etc/hostname: not a 64-bit little-endian ELF file", id="not-elf"),
    pytest.param({"symbols": ["pl_target"], "selectors": [{"matchActions": [{"action": "Override", "argError": -1}]}]},
                 "Override on uprobe {prog} pl_target", id="override"),
])
def test_a_uprobe_that_cannot_be_placed_is_refused_and_leaves_nothing(engine: Engine, workload: Workload,
                                                                      program: Path, entry: dict[str, Any],
                                                                      expected: str) -> None:
    before = our_programs()
    doc = policy("uprobe-refused", {"uprobes": [{"path": str(program), **entry}]})
    res = engine.load(doc, "enforced", cgroups=[workload.path])
    assert not res.loaded
    assert all(r.startswith("unsupported: spec.uprobes[0]: ") for r in res.reasons), res.reasons
    assert any(expected.format(prog=program) in r for r in res.reasons), res.reasons
    assert programs_gone(our_programs() - before)
    assert not engine.pin_root.exists() or not [p for p in engine.pin_root.iterdir() if p.is_dir()]
    # and the calls run unhindered
    assert workload.run([str(program), "free"]).stdout == b"after free\n"


def test_uprobes_at_an_offset_and_an_address_fire(engine: Engine, workload: Workload, program: Path) -> None:
    from bpf import elf

    offset = elf.symbol_offset(program, "pl_target")
    number = elf.symbol_offset(program, "pl_number")
    # the compiler's position-independent output loads its code at the address equal to its file offset
    assert elf.file_offset(program, number) == number
    doc = policy("uprobe-offsets", {"uprobes": [
        {"path": str(program), "offsets": [offset]},
        {"path": str(program), "addrs": [number]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run([str(program), "a"]).returncode == 0
    assert workload.run([str(program), "num", "1"]).returncode == 0
    events = _uprobe_events(engine, lambda b: b.get("offset") == str(number))
    events += _uprobe_events(engine, lambda b: b.get("offset") == str(offset), timeout=0.5)
    assert {e["offset"] for e in events} == {str(offset), str(number)}, events
    assert all(e["path"] == str(program) and "symbol" not in e for e in events)

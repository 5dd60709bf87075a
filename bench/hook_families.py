"""Benchmark: load time per hook family, and a kprobe-based policy's cost against its tracepoint form.

Run on this host and in the kernel matrix's Debian 6.1 guest (kprobes, kretprobes,
fentry/fmod_ret and BPF LSM exist only there):

    .venv/bin/python bench/hook_families.py
    .venv/bin/python scripts/vm/run.py --kernel 6.1 --core-objects -- .venv/bin/python bench/hook_families.py

1. Load: one small policy per hook family (tracepoint, syscall kprobe on its tracepoint,
   syscall return, raw tracepoint, cgroup socket hook, uprobe, loader, kprobe, kretprobe,
   fmod_ret, BPF LSM), observe mode, scoped to a workload cgroup; its object built first
   (not timed), then `Engine.load` (object → attached) and unload `--loads` times: median,
   p99. A family the kernel lacks is listed with the engine's reason.
2. Overhead, in interleaved rounds: N getppid() syscalls from a native loop, and fork+exec of
   /bin/true, with no policy, with the policy in its tracepoint form (`syscall: true` on
   sys_enter_getppid; sched_process_exec) and in its kprobe form (a kprobe on
   __x64_sys_getppid; on security_bprm_check), each with the same selector that never
   matches (matchBinaries In a binary that does not exist), so what is measured is the hook
   and its filter. Reported: wall ns per call over the baseline, and the programs' own time
   per call as the kernel measures it (bpf stats), and the kprobe/tracepoint ratios. Under
   TCG absolute times are not comparable with the host; the ratios are.
Writes bench/results/hook_families[-<release>].json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _bpfbench import (
    bpf_stats,
    engine,
    percentile,
    prog_runtime,
    require_root,
    run_spawns,
    spawner,
    tempdir,
    workload,
    write_results,
)

from bpf.engine import Engine
from bpf.policy import TracingPolicy, parse

NEVER = [{"matchBinaries": [{"operator": "In", "values": ["/nonexistent/palisade-bench"]}]}]
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"

#: family → spec of one small policy of it.
FAMILIES: dict[str, dict[str, Any]] = {
    "tracepoint": {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_getppid"}]},
    "syscall kprobe (tracepoint)": {"kprobes": [{"call": "sys_getppid", "syscall": True}]},
    "syscall return (sys_enter+sys_exit)": {"kprobes": [{
        "call": "sys_getppid", "syscall": True, "return": True, "returnArg": {"index": 0, "type": "int"}}]},
    "raw tracepoint": {"tracepoints": [{"subsystem": "sched", "event": "sched_process_exec", "raw": True,
                                        "args": [{"index": 2, "type": "linux_binprm"}]}]},
    "cgroup socket hook": {"kprobes": [{
        "call": "security_socket_connect", "syscall": False, "args": [{"index": 1, "type": "sockaddr"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Family", "values": ["AF_INET"]}],
                       "matchBinaries": [{"operator": "In", "values": ["/nonexistent/palisade-bench"]}],
                       "matchActions": [{"action": "Override", "argError": -1}]}]}]},
    "uprobe": {"uprobes": [{"path": LIBC, "symbols": ["getppid"]}]},
    "loader": {"loader": True},
    "kprobe": {"kprobes": [{"call": "fd_install", "syscall": False,
                            "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "file"}]}]},
    "kretprobe": {"kprobes": [{"call": "security_file_permission", "syscall": False, "return": True,
                               "args": [{"index": 0, "type": "file"}, {"index": 1, "type": "int"}],
                               "returnArg": {"index": 0, "type": "int"}}]},
    "fmod_ret (Override on security_*)": {"kprobes": [{
        "call": "security_inode_mkdir", "syscall": False,
        "selectors": [{"matchBinaries": [{"operator": "In", "values": ["/nonexistent/palisade-bench"]}],
                       "matchActions": [{"action": "Override", "argError": -1}]}]}]},
    "BPF LSM": {"lsmhooks": [{"hook": "file_open", "args": [{"index": 0, "type": "file"}]}]},
}

#: The overhead pairs: (what is called, tracepoint form, kprobe form).
SYSCALL_FORMS = {"tracepoint": {"kprobes": [{"call": "sys_getppid", "syscall": True, "selectors": NEVER}]},
                 "kprobe": {"kprobes": [{"call": "__x64_sys_getppid", "syscall": False, "selectors": NEVER}]}}
EXEC_FORMS = {"tracepoint": {"tracepoints": [{"subsystem": "sched", "event": "sched_process_exec",
                                              "selectors": NEVER}]},
              "kprobe": {"kprobes": [{"call": "security_bprm_check", "syscall": False,
                                      "args": [{"index": 0, "type": "linux_binprm"}], "selectors": NEVER}]}}


def doc(name: str, spec: dict[str, Any]) -> TracingPolicy:
    return parse({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name},
                  "spec": spec})


def load_times(eng: Engine, cg: Path, loads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, (family, spec) in enumerate(FAMILIES.items()):
        pol = doc(f"bench-family-{k}", spec)
        res = eng.load(pol, "observe", cgroups=[cg])  # builds (or fetches) the object: not timed
        if not res.loaded:
            out[family] = {"refused": res.reasons[0]}
            print(f"  {family:38s} refused: {res.reasons[0][:110]}")
            continue
        eng.unload(pol.key)
        ms = []
        programs = 0
        for _ in range(loads):
            t0 = time.perf_counter()
            assert eng.load(pol, "observe", cgroups=[cg]).loaded
            ms.append((time.perf_counter() - t0) * 1000)
            programs = len(eng.loaded()[pol.key].prog_ids)
            eng.unload(pol.key)
        out[family] = {"median_ms": round(statistics.median(ms), 2), "p99_ms": round(percentile(ms, 99), 2),
                       "programs": programs}
        print(f"  {family:38s} median {statistics.median(ms):7.1f} ms   p99 {percentile(ms, 99):7.1f} ms   "
              f"({programs} programs)")
    return out


def program_ns(eng: Engine, key: str) -> tuple[int, int]:
    """(run time ns, runs) summed over the policy's programs (bpf stats must be on)."""
    d = eng.loaded()[key].pin_dir
    t = n = 0
    for pin in d.glob("prog_*"):
        rt, rc = prog_runtime(pin)
        t, n = t + rt, n + rc
    return t, n


def getppid_ns(spawn: list[str], calls: int, cg: Path) -> float:
    """Wall ns per getppid() of a native loop of `calls` calls inside `cg`."""
    def enter() -> None:
        (cg / "cgroup.procs").write_text(str(os.getpid()))

    t0 = time.perf_counter_ns()
    subprocess.run([*spawn, "g", str(calls)], preexec_fn=enter, check=True)
    return (time.perf_counter_ns() - t0) / calls


def overhead(eng: Engine, cg: Path, spawn: list[str], calls: int, execs: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for what, forms in (("getppid", SYSCALL_FORMS), ("exec", EXEC_FORMS)):
        pols = {form: doc(f"bench-{what}-{form}", spec) for form, spec in forms.items()}
        usable = {}
        for form, pol in pols.items():
            res = eng.load(pol, "observe", cgroups=[cg])
            if res.loaded:
                usable[form] = pol
                eng.unload(pol.key)
            else:
                out[f"{what}:{form}"] = {"refused": res.reasons[0]}
        wall: dict[str, list[float]] = {k: [] for k in ("baseline", *usable)}
        prog: dict[str, list[float]] = {k: [] for k in usable}
        for _ in range(rounds):
            for setting in wall:
                pol = usable.get(setting)
                if pol is not None:
                    assert eng.load(pol, "observe", cgroups=[cg]).loaded
                with bpf_stats():
                    before = program_ns(eng, pol.key) if pol is not None else (0, 0)
                    if what == "getppid":
                        wall[setting].append(getppid_ns(spawn, calls, cg))
                    else:
                        runs = run_spawns(spawn, execs, ["/bin/true"], cg)
                        wall[setting].append(statistics.median(w for w, _, _ in runs))
                    if pol is not None:
                        after = program_ns(eng, pol.key)
                        prog[setting].append((after[0] - before[0]) / max(1, after[1] - before[1]))
                if pol is not None:
                    eng.unload(pol.key)
        base = statistics.median(wall["baseline"])
        unit = "ns/call" if what == "getppid" else "ns/exec (median)"
        print(f"  {what}: baseline {base:9.0f} {unit}")
        for form in usable:
            w, p = statistics.median(wall[form]), statistics.median(prog[form])
            out[f"{what}:{form}"] = {"wall_ns": round(w, 1), "over_baseline_ns": round(w - base, 1),
                                     "program_ns": round(p, 1)}
            print(f"    {form:10s} {w:9.0f} {unit}  (+{w - base:7.0f} ns over no policy; program {p:6.0f} ns/run, "
                  "kernel-measured)")
        out[f"{what}:baseline_ns"] = round(base, 1)
        if len(usable) == 2:
            t, k = out[f"{what}:tracepoint"], out[f"{what}:kprobe"]
            ratio_prog = k["program_ns"] / t["program_ns"] if t["program_ns"] else None
            ratio_over = (k["over_baseline_ns"] / t["over_baseline_ns"]) if t["over_baseline_ns"] > 0 else None
            out[f"{what}:kprobe_vs_tracepoint"] = {"program": ratio_prog, "overhead": ratio_over}
            print(f"    kprobe / tracepoint: program time x{ratio_prog:.2f}" if ratio_prog else "", end="")
            print(f", added wall time x{ratio_over:.2f}" if ratio_over else "")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=10)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--execs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    require_root()
    release = platform.release()
    started = time.time()
    with tempdir() as tmp, workload() as cg, engine() as eng:
        spawn = spawner(tmp)
        if spawn is None:
            sys.exit("this benchmark needs a C compiler for its native loop")
        print(f"hook families on {release}: load (object ready -> attached), {args.loads} loads each")
        loads = load_times(eng, cg, args.loads)
        print(f"overhead, {args.rounds} interleaved rounds: {args.calls} getppid() per round, "
              f"{args.execs} fork+exec of /bin/true per round; selectors that never match")
        costs = overhead(eng, cg, spawn, args.calls, args.execs, args.rounds)
    results = {"benchmark": "hook_families", "kernel": release, "loads": args.loads, "load_ms": loads,
               "overhead": costs, "seconds": round(time.time() - started, 1)}
    try:
        print(f"  results: {write_results(f'hook_families-{release}', results)}")
    except OSError as e:  # the kernel matrix's guest sees the tree read-only: the figures are printed above
        print(f"  results not written ({e.strerror}): {json.dumps(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

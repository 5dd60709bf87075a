"""Benchmark: the cost of an enforced exec allowlist on fork + exec.

20,000 fork+exec+wait of /bin/true (native spawner) in each of three settings,
interleaved in rounds so that drift of the machine hits all of them alike:
- baseline: no policy loaded;
- in scope: an exec allowlist of 50 binaries (NotIn + Sigkill, enforced) scoped
  to the workload cgroup, spawner inside that cgroup (every exec is checked);
- out of scope: the same policy, spawner outside the cgroup (the scope check
  alone runs).
Prints median/mean/p99 per exec and the overhead ratios; target < 2 % (Tetragon
quotes 2-5 % for enforcement). Writes bench/results/exec_overhead.json.

    .venv/bin/python bench/exec_overhead.py [--execs 20000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from _bpfbench import (
    bpf_stats,
    engine,
    prog_runtime,
    require_root,
    run_spawns,
    spawner,
    summary_us,
    tempdir,
    workload,
    write_results,
)

from bpf.policy import parse

TARGET = 0.02


def allowlist(n: int, spawner_path: str) -> list[str]:
    names = sorted(os.listdir("/usr/bin"))
    values = ["/usr/bin/true", "/bin/true", spawner_path]
    values += [f"/usr/bin/{x}" for x in names if f"/usr/bin/{x}" not in values]
    return values[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--execs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    require_root()
    per_round = max(1, args.execs // args.rounds)
    wall: dict[str, list[int]] = {"baseline": [], "in_scope": [], "out_of_scope": []}
    cpu: dict[str, list[int]] = {k: [] for k in wall}
    started = time.time()
    with tempdir() as tmp, workload() as cg, engine() as eng:
        spawn = spawner(tmp)
        # the spawner itself is exec'd inside the workload: it must be allowed too
        values = allowlist(50, spawn[0] if spawn else os.path.realpath(sys.executable))
        doc = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "bench-allowlist"},
               "spec": {"tracepoints": [{"subsystem": "sched", "event": "sched_process_exec", "selectors": [{
                   "matchBinaries": [{"operator": "NotIn", "values": values}],
                   "matchActions": [{"action": "Sigkill"}]}]}]}}
        run_spawns(spawn, 500, ["/bin/true"], cg)  # warm up caches

        def batch(name: str, where: object) -> None:
            runs = run_spawns(spawn, per_round, ["/bin/true"], where)  # type: ignore[arg-type]
            if any(st != 0 for _, st, _ in runs):
                raise SystemExit(f"{name}: an exec of an allowed binary failed")
            wall[name] += [w for w, _, _ in runs]
            cpu[name] += [c for _, _, c in runs]

        for _ in range(args.rounds):
            batch("baseline", cg)
            res = eng.load(parse(doc), "enforced", cgroups=[cg])
            if not res.loaded:
                raise SystemExit("cannot load the allowlist: " + "; ".join(res.reasons))
            batch("in_scope", cg)
            batch("out_of_scope", None)
            [(_, status, _)] = run_spawns(spawn, 1, ["/bin/sh", "-c", "true"], cg)
            if status != 9:
                raise SystemExit(f"/bin/sh (not allowed) was not killed: wait status {status}")
            counters = eng.counters("bench-allowlist")
            eng.unload("bench-allowlist")
        # the program's own cost per exec, measured by the kernel (bpf stats), in and out of scope
        res = eng.load(parse(doc), "enforced", cgroups=[cg])
        prog = eng.loaded()["bench-allowlist"].pin_dir / "prog_pl_h0_tp"
        with bpf_stats():
            t0, n0 = prog_runtime(prog)
            run_spawns(spawn, 2000, ["/bin/true"], cg)
            t1, n1 = prog_runtime(prog)
            run_spawns(spawn, 2000, ["/bin/true"], None)
            t2, n2 = prog_runtime(prog)
        eng.unload("bench-allowlist")
    prog_ns = {"in_scope": (t1 - t0) / max(1, n1 - n0), "out_of_scope": (t2 - t1) / max(1, n2 - n1)}
    stats = {k: summary_us(v) for k, v in wall.items()}
    cpu_stats = {k: summary_us(v) for k, v in cpu.items()}
    base, cbase = stats["baseline"], cpu_stats["baseline"]
    ratios = {k: {"median_wall_overhead": round(stats[k]["median_us"] / base["median_us"] - 1, 4),
                  "mean_cpu_overhead": round(cpu_stats[k]["mean_us"] / cbase["mean_us"] - 1, 4),
                  "program_ns_per_exec": round(prog_ns[k], 1),
                  "program_share_of_exec": round(prog_ns[k] / (base["median_us"] * 1000), 5)}
              for k in ("in_scope", "out_of_scope")}
    print(f"fork+exec+wait of /bin/true: {per_round * args.rounds} per setting in {args.rounds} interleaved rounds "
          f"({'native spawner' if spawn else 'Python posix_spawn fallback'}), allowlist of {len(values)} binaries")
    for k, st in stats.items():
        line = (f"  {k:13s} wall median {st['median_us']:7.1f} us  p99 {st['p99_us']:8.1f} us   "
                f"child cpu mean {cpu_stats[k]['mean_us']:6.1f} us")
        if k in ratios:
            r = ratios[k]
            line += (f"   wall {r['median_wall_overhead']:+.2%}  cpu {r['mean_cpu_overhead']:+.2%}  "
                     f"program {r['program_ns_per_exec']:.0f} ns/exec = {r['program_share_of_exec']:.3%}")
        print(line)
    # the kernel's own measurement of the program is the figure noise cannot move
    worst = max(r["program_share_of_exec"] for r in ratios.values())
    print(f"  enforcement cost: {worst:.3%} of a fork+exec (kernel-measured program time); target < {TARGET:.0%}, "
          f"Tetragon's guidance 2-5 %: {'met' if worst < TARGET else 'MISSED'}")
    print("  (wall and cpu ratios are shown as measured; on a shared 2-core machine their noise exceeds the effect)")
    path = write_results("exec_overhead", {
        "benchmark": "exec_overhead", "execs_per_setting": per_round * args.rounds, "rounds": args.rounds,
        "allowlist_size": len(values), "native_spawner": bool(spawn), "wall": stats, "child_cpu": cpu_stats,
        "overhead": ratios, "target": TARGET, "meets_target": worst < TARGET,
        "last_round_counters": counters.to_json(), "seconds": round(time.time() - started, 1),
    })
    print(f"  results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

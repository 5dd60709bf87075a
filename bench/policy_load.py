"""Benchmark: a policy's load once its object is built (object ready → attached), 50 at once, and memory.

- 50 policies: every built-in template and exec allowlists of 5..50 binaries, each
  scoped to a workload cgroup (as the agent loads them); their objects are built
  first (clang, cached by source digest) and not timed;
- one at a time: `Engine.load` from the object's bytes to every program attached and
  pinned, maps filled (libbpf open + load, pins, links), with the other 49 loaded; median,
  p99; and the first policy on an empty node (whose attach switches the tracepoints on);
- all 50 loaded one after the other (timed together), then the process's RSS with the
  50 in the kernel, against its RSS before (the agent's modules imported, so the figure
  is what an agent process would hold);
- the same per-policy figure for the build (cold clang) for reference.
Writes bench/results/policy_load.json.

    .venv/bin/python bench/policy_load.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from _bpfbench import engine, percentile, require_root, workload, write_results

import agent.daemon  # noqa: F401  (what an agent process has imported)
from bpf import templates
from bpf.compile import compile_policy
from bpf.errors import Unsupported
from bpf.objects import source_digest
from bpf.policy import TracingPolicy, parse

BINARIES = sorted(str(p) for p in Path("/usr/bin").iterdir() if p.is_file())[:50]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def policies(runs: Callable[[TracingPolicy], bool]) -> list[TracingPolicy]:
    out = [p for p in (parse(templates.render(name, f"t-{name}")) for name in templates.TEMPLATES) if runs(p)]
    n = 0
    while len(out) < 50:
        n += 1
        size = 5 + (n * 7) % 46
        out.append(parse({
            "apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": f"allow-{n}"},
            "spec": {"tracepoints": [{"subsystem": "sched", "event": "sched_process_exec", "selectors": [{
                "matchBinaries": [{"operator": "NotIn", "values": BINARIES[:size]}],
                "matchActions": [{"action": "Sigkill"}]}]}]}}))
    return out[:50]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    require_root()
    with engine() as e, workload() as cg:
        def runs(p: TracingPolicy) -> bool:  # block-kmod-load needs a kernel with modules
            try:
                compile_policy(p, e.features, e.formats, scoped=True)
            except Unsupported:
                return False
            return True

        pols = policies(runs)
        # build every object first (what a bundle would carry), timing the cold builds
        build_ms, sources = [], set()
        for p in pols:
            plan = compile_policy(p, e.features, e.formats, scoped=True)
            t0 = time.perf_counter()
            e.objects.get(plan.source, p.key)
            if source_digest(plan.source) not in sources:
                build_ms.append((time.perf_counter() - t0) * 1000)
            sources.add(source_digest(plan.source))
        rss_before = rss_mb()
        singles: list[float] = []  # one more policy on a node that runs the others
        empty: list[float] = []  # the first policy on an empty node (tracepoints switched on by its attach)
        totals: list[float] = []
        rss_loaded = 0.0
        for _ in range(args.rounds):
            for p in pols[:10]:
                t0 = time.perf_counter()
                r = e.load(p, "observe", cgroups=[cg])
                empty.append((time.perf_counter() - t0) * 1000)
                assert r.loaded, r.reasons
                e.unload(p.key)
            t0 = time.perf_counter()
            for p in pols:
                r = e.load(p, "observe", cgroups=[cg])
                assert r.loaded, (p.key, r.reasons[0][:2000])
            totals.append((time.perf_counter() - t0) * 1000)
            rss_loaded = max(rss_loaded, rss_mb())
            for p in pols:
                e.unload(p.key)
                t0 = time.perf_counter()
                assert e.load(p, "observe", cgroups=[cg]).loaded
                singles.append((time.perf_counter() - t0) * 1000)
            for p in pols:
                e.unload(p.key)
    med, p99 = statistics.median(singles), percentile(singles, 99)
    print(f"policy load (object ready -> attached), {len(singles)} loads of {len(pols)} policies "
          f"({len(sources)} distinct objects)")
    print(f"  one policy          median {med:7.1f} ms   p99 {p99:7.1f} ms   (target median < 30 ms; the other 49 "
          "loaded)")
    print(f"  on an empty node    median {statistics.median(empty):7.1f} ms   (its attach switches the tracepoints on)")
    print(f"  50 policies         median {statistics.median(totals):7.0f} ms   "
          f"slowest {max(totals):7.0f} ms   (target < 1,500 ms)")
    print(f"  RSS                 {rss_before:5.1f} MB before, {rss_loaded:5.1f} MB with 50 loaded "
          f"(target < 60 MB)")
    print(f"  object (cache/clang) median {statistics.median(build_ms):6.0f} ms per distinct object, before the "
          "timed loads (clang only when not cached; a node with a bundle's objects never builds)")
    write_results("policy_load", {
        "policies": len(pols), "distinct_objects": len(sources), "loads": len(singles),
        "load_ms": {"median": round(med, 2), "p99": round(p99, 2)},
        "empty_node_load_ms_median": round(statistics.median(empty), 2),
        "fifty_ms": {"median": round(statistics.median(totals), 1), "max": round(max(totals), 1)},
        "rss_mb": {"before": round(rss_before, 1), "with_50": round(rss_loaded, 1)},
        "object_fetch_ms_median": round(statistics.median(build_ms), 1),
    })


if __name__ == "__main__":
    main()

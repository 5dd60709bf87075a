"""Benchmark: open + load + attach of the CO-RE base sensor through libbpf, against one bcc compile + load.

- build: the sensor compiled by clang into a fresh cache (cold), then found in it (cached);
- core: `runs` times, from the object's bytes to both programs attached (bpf_object__open_mem,
  bpf_object__load, bpf_program__attach x2), then closed (not timed); median and p99;
- bcc: in the same process afterwards, one BPF(text=...) of a comparable program (the
  same two sched tracepoints, a ring buffer, pid + filename), compile + load + attach;
- RSS of the process (VmRSS) at start, after the core runs, after the bcc load (LLVM in process).
Writes bench/results/core_load.json.

    .venv/bin/python bench/core_load.py [--runs 30]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _bpfbench import percentile, require_root, tempdir, write_results

from bpf.core import sensor
from bpf.core.libbpf import BpfObject

BCC_PROGRAM = r"""
struct rec { u32 pid; u32 kind; char file[256]; };
BPF_RINGBUF_OUTPUT(events, 1 << 8);
TRACEPOINT_PROBE(sched, sched_process_exec) {
    struct rec *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) return 0;
    r->pid = bpf_get_current_pid_tgid() >> 32;
    r->kind = 1;
    TP_DATA_LOC_READ_STR(r->file, filename, sizeof(r->file));
    events.ringbuf_submit(r, 0);
    return 0;
}
TRACEPOINT_PROBE(sched, sched_process_exit) {
    struct rec *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) return 0;
    r->pid = bpf_get_current_pid_tgid() >> 32;
    r->kind = 2;
    r->file[0] = 0;
    events.ringbuf_submit(r, 0);
    return 0;
}
"""


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def core_once(obj: bytes) -> float:
    """ms from bytes to both programs attached."""
    t0 = time.perf_counter()
    o = BpfObject.open_mem(obj, "palisade_sensor")
    o.load()
    links = [p.attach() for p in o.programs()]
    ms = (time.perf_counter() - t0) * 1000
    for link in links:
        link.close()
    o.close()
    return ms


def bcc_once() -> float:
    from bcc import BPF  # imported here: what it costs in memory is part of what is measured
    t0 = time.perf_counter()
    b = BPF(text=BCC_PROGRAM)
    ms = (time.perf_counter() - t0) * 1000
    b.cleanup()
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    require_root()
    rss_start = rss_kb()
    with tempdir() as cache:
        t0 = time.perf_counter()
        built = sensor.build(cache)
        cold_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        again = sensor.build(cache)
        cached_ms = (time.perf_counter() - t0) * 1000
        assert again.cached
        obj = built.read()
    core = [core_once(obj) for _ in range(args.runs)]
    rss_core = rss_kb()
    bcc_ms = bcc_once()
    rss_bcc = rss_kb()

    med, p99 = statistics.median(core), percentile(core, 99)
    print(f"CO-RE base sensor ({len(obj)} byte object, 2 raw tracepoint programs), {args.runs} runs")
    print(f"  build: cold {cold_ms:7.1f} ms   cached {cached_ms:5.1f} ms (digest lookup, includes BTF hash)")
    print(f"  libbpf open+load+attach   median {med:7.1f} ms  p99 {p99:7.1f} ms  first {core[0]:7.1f} ms")
    print(f"  bcc compile+load+attach   once   {bcc_ms:7.1f} ms  ({bcc_ms / med:.0f}x the libbpf median)")
    print(f"  RSS: start {rss_start / 1024:5.1f} MB  after libbpf runs {rss_core / 1024:5.1f} MB  "
          f"after one bcc load {rss_bcc / 1024:5.1f} MB")
    path = write_results("core_load", {
        "runs": args.runs, "object_bytes": len(obj),
        "build_cold_ms": round(cold_ms, 1), "build_cached_ms": round(cached_ms, 2),
        "core_load_attach_ms": {"median": round(med, 2), "p99": round(p99, 2), "first": round(core[0], 2),
                                "all": [round(x, 2) for x in core]},
        "bcc_compile_load_attach_ms": round(bcc_ms, 1),
        "rss_kb": {"start": rss_start, "after_core": rss_core, "after_bcc": rss_bcc},
    })
    print(f"  results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

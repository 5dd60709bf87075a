"""Benchmark: events per second delivered to userspace (rendered as Tetragon JSON), and loss past that.

1. exec storm, reader draining: a policy posting every exec in the workload
   (sched_process_exec, observe), two native spawners doing fork+exec of
   /bin/true as fast as they can, the engine's reader polling all along.
   Delivered events/s with the loss counter (expected 0: the machine cannot
   exec faster than the reader renders).
2. the same storm with the reader stalled until the end: the ring buffer
   (1 MiB) fills and the rest is counted as lost, not silently dropped.
3. syscall storm, reader draining: a policy posting every getppid(2) of the
   workload, one process calling it in a tight loop; this pushes past what the
   reader can render, so it shows the reader's ceiling and the loss counter;
4. the same, paced at --paced-rate events/s for 5 s: delivered to the log with
   nothing lost, or not.
Writes bench/results/event_throughput.json.

    .venv/bin/python bench/event_throughput.py [--execs 4000] [--syscalls 300000]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bpfbench import engine, require_root, spawner, tempdir, workload, write_results

from agent.events import EventLog
from bpf.engine import Engine
from bpf.policy import parse


def _policy(name: str, subsystem: str, event: str) -> Any:
    return parse({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name},
                  "spec": {"tracepoints": [{"subsystem": subsystem, "event": event}]}})


def _storm(eng: Engine, key: str, start: Callable[[], list[subprocess.Popen[bytes]]],
           drain: bool, log: EventLog) -> dict[str, Any]:
    eng.poll_events(0.1)  # nothing left over from before
    before = eng.counters(key)
    lines_before = _lines(log)
    delivered = 0
    t0 = time.monotonic()
    procs = start()
    while any(p.poll() is None for p in procs):
        if drain:
            got = eng.poll_events(0.05)
            log.write_many(got)  # the agent's path: Tetragon JSON lines in the event log
            delivered += len(got)
        else:
            time.sleep(0.05)
    t1 = time.monotonic()
    while True:  # what is still in the ring buffer
        got = eng.poll_events(0.2)
        log.write_many(got)
        delivered += len(got)
        if not got:
            break
    assert _lines(log) - lines_before == delivered, "the log must hold every delivered event"
    after = eng.counters(key)
    posted = after.posted - before.posted
    lost = after.lost - before.lost
    for p in procs:
        if p.returncode != 0:
            raise SystemExit(f"a generator failed: {p.args} -> {p.returncode}")
    return {"seconds": round(t1 - t0, 3), "generated": posted + lost, "posted": posted, "delivered": delivered,
            "lost": lost, "delivered_per_s": round(delivered / (t1 - t0)), "generated_per_s":
            round((posted + lost) / (t1 - t0))}


def _lines(log: EventLog) -> int:
    with log.path.open("rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--execs", type=int, default=4000, help="execs per spawner (two spawners)")
    ap.add_argument("--syscalls", type=int, default=3000000)
    ap.add_argument("--paced-rate", type=int, default=110000, help="events/s of the paced storm (5 s of it)")
    args = ap.parse_args()
    require_root()
    started = time.time()
    results: dict[str, Any] = {}
    with tempdir() as tmp, workload() as cg, engine() as eng:
        log = EventLog(tmp, max_bytes=1 << 40)  # no rotation: the bench counts its lines
        spawn = spawner(tmp)
        if spawn is None:
            raise SystemExit("this benchmark needs a C compiler (cc) for its load generators")

        def gen(*argv: str) -> subprocess.Popen[bytes]:
            procs = Path(cg) / "cgroup.procs"
            return subprocess.Popen([*spawn, *argv], stdout=subprocess.DEVNULL,
                                    preexec_fn=lambda: procs.write_text(str(os.getpid())))

        assert eng.load(_policy("bench-exec-events", "sched", "sched_process_exec"), "observe", [cg]).loaded
        def execs() -> list[subprocess.Popen[bytes]]:
            return [gen(str(args.execs), "/bin/true") for _ in range(2)]

        results["exec_draining"] = _storm(eng, "bench-exec-events", execs, drain=True, log=log)
        results["exec_stalled_reader"] = _storm(eng, "bench-exec-events", execs, drain=False, log=log)
        eng.unload("bench-exec-events")

        assert eng.load(_policy("bench-getppid", "syscalls", "sys_enter_getppid"), "observe", [cg]).loaded
        results["syscall_draining"] = _storm(eng, "bench-getppid", lambda: [gen("g", str(args.syscalls))],
                                             drain=True, log=log)
        results["syscall_paced"] = _storm(eng, "bench-getppid",
                                          lambda: [gen("r", str(args.paced_rate * 5), str(args.paced_rate))],
                                          drain=True, log=log)
        eng.unload("bench-getppid")

    labels = {"exec_draining": "exec storm, reader draining",
              "exec_stalled_reader": "exec storm, reader stalled",
              "syscall_draining": "getppid storm, reader draining",
              "syscall_paced": "getppid paced, reader draining"}
    print("events delivered to the agent's JSON event log (ring buffer 1 MiB per policy, 1,040-byte records)")
    for k, r in results.items():
        print(f"  {labels[k]:31s} generated {r['generated']:7d} ({r['generated_per_s']:7d}/s)  "
              f"delivered {r['delivered']:7d} ({r['delivered_per_s']:6d}/s)  lost {r['lost']:7d}")
    ok = results["exec_draining"]
    print(f"  max exec events/s delivered without loss (as fast as this machine execs): "
          f"{ok['delivered_per_s']}/s, lost {ok['lost']}")
    paced = results["syscall_paced"]
    print(f"  paced at {args.paced_rate}/s for 5 s: delivered {paced['delivered_per_s']}/s to the log, "
          f"lost {paced['lost']} (target >= 100,000/s without loss)")
    print(f"  reader ceiling under a syscall storm: {results['syscall_draining']['delivered_per_s']}/s; "
          f"past it the loss counter reads {results['syscall_draining']['lost']}")
    path = write_results("event_throughput", {"benchmark": "event_throughput", **results,
                                              "seconds": round(time.time() - started, 1)})
    print(f"  results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

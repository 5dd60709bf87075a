"""Benchmark: from execve of a forbidden binary to the process's death, in-kernel vs a /proc watcher.

The forbidden binary is a copy of /bin/sh in a temporary directory, run as
`payload -c 'echo ran > <dir>/$$; read x'`: if it gets to run a single command
it leaves a file behind, then it waits forever on stdin.
- in-kernel: the block-execve-tmp template (directories = that temporary
  directory) loaded in enforced mode, scoped to the workload cgroup: SIGKILL from
  the sys_enter_execve tracepoint, before the new image is loaded;
- reactive: no policy; a userspace watcher scans /proc every 10 ms and SIGKILLs
  any process whose executable is the payload.
Time is measured by the native spawner from just before fork() to waitpid()
returning (so it includes fork + exec, shown as the /bin/true baseline).
Prints median/p99 per method, the ratio, and how often the payload ran.
Writes bench/results/kill_latency.json.

    .venv/bin/python bench/kill_latency.py [--runs 200]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time

from _bpfbench import engine, require_root, run_spawns, spawner, summary_us, tempdir, workload, write_results

from bpf import templates
from bpf.policy import parse


def watcher(target: str, stop: threading.Event, period: float = 0.010) -> threading.Thread:
    """The reactive tool: every `period`, kill what runs `target`."""
    def loop() -> None:
        while not stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    if os.readlink(f"/proc/{entry.name}/exe") == target:
                        os.kill(int(entry.name), 9)
                except OSError:
                    pass
            stop.wait(period)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    require_root()
    started = time.time()
    with tempdir() as tmp, workload() as cg, engine() as eng:
        spawn = spawner(tmp)
        forbidden = tmp / "forbidden"
        marks = tmp / "marks"
        forbidden.mkdir()
        marks.mkdir()
        payload = forbidden / "payload"
        shutil.copy("/bin/sh", payload)
        argv = [str(payload), "-c", f"echo ran > {marks}/$$; read x"]
        floor = run_spawns(spawn, args.runs, ["/bin/true"], cg)

        doc = templates.render("block-execve-tmp", "bench-kill", {"directories": [str(forbidden)]})
        res = eng.load(parse(doc), "enforced", cgroups=[cg])
        if not res.loaded:
            raise SystemExit("cannot load block-execve-tmp: " + "; ".join(res.reasons))
        # the payload's stdin: a pipe nobody writes to, so `read x` waits until the process is killed
        hold_r, hold_w = os.pipe()
        in_kernel = run_spawns(spawn, args.runs, argv, cg, stdin=hold_r)
        ran_in_kernel = len(os.listdir(marks))
        eng.unload("bench-kill")
        for m in marks.iterdir():
            m.unlink()

        stop = threading.Event()
        t = watcher(str(payload), stop)
        try:
            reactive = run_spawns(spawn, args.runs, argv, cg, stdin=hold_r)
        finally:
            stop.set()
            t.join()
            os.close(hold_r)
            os.close(hold_w)
        ran_reactive = len(os.listdir(marks))
    odd = sorted({st for _, st, _ in in_kernel + reactive} - {9})
    if odd:
        raise SystemExit(f"a payload ended otherwise than by SIGKILL (wait status {odd})")
    s_floor = summary_us([w for w, _, _ in floor])
    s_kernel = summary_us([w for w, _, _ in in_kernel])
    s_react = summary_us([w for w, _, _ in reactive])
    ratio = s_react["median_us"] / s_kernel["median_us"]
    print(f"execve of a forbidden binary until its death, {args.runs} runs each (fork+exec included)")
    rows = (("fork+exec of /bin/true (floor)", s_floor, ""),
            ("in-kernel, sys_enter_execve", s_kernel, f"  payload ran {ran_in_kernel}/{args.runs}"),
            ("/proc watcher every 10 ms", s_react, f"  payload ran {ran_reactive}/{args.runs}"))
    for label, st, extra in rows:
        print(f"  {label:31s} median {st['median_us']:9.1f} us  p99 {st['p99_us']:9.1f} us{extra}")
    print(f"  the reactive window is {ratio:.1f}x the in-kernel one")
    path = write_results("kill_latency", {
        "benchmark": "kill_latency", "runs": args.runs, "native_spawner": bool(spawn),
        "fork_exec_true": s_floor, "in_kernel": s_kernel, "proc_watcher_10ms": s_react,
        "payload_ran": {"in_kernel": ran_in_kernel, "proc_watcher_10ms": ran_reactive},
        "ratio_watcher_to_kernel_median": round(ratio, 2), "seconds": round(time.time() - started, 1),
    })
    print(f"  results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

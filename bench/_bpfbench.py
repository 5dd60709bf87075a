"""Shared plumbing for the eBPF benchmarks: a private pin root, a workload cgroup, a native spawner.

The spawner is a few lines of C (built with the system compiler into a temp
dir) so that what is timed is fork + execve + waitpid, not Python: it prints
one "<wall ns> <wait status> <child cpu ns>" line per run. Without a C compiler the
benchmarks fall back to os.posix_spawn from Python (noted in the results).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bpf import syscall  # noqa: E402
from bpf.engine import Engine  # noqa: E402

RESULTS = ROOT / "bench" / "results"

_SPAWN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/resource.h>
static long long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
    if (argc >= 3 && argv[1][0] == 'g') {            /* g N: N getppid() syscalls */
        long n = atol(argv[2]);
        for (long i = 0; i < n; i++) syscall(SYS_getppid);
        return 0;
    }
    if (argc >= 4 && argv[1][0] == 'r') {            /* r N R: N getppid() syscalls at R per second */
        long n = atol(argv[2]), rate = atol(argv[3]);
        long long start = now();
        for (long i = 0; i < n; i++) {
            syscall(SYS_getppid);
            if (i % 100 == 99) {                     /* keep to the rate, 100 calls at a time */
                long long due = start + (i + 1) * 1000000000LL / rate;
                while (now() < due) ;
            }
        }
        return 0;
    }
    if (argc < 3) return 2;
    long n = atol(argv[1]);
    char *env[] = { "PATH=/usr/bin:/bin", NULL };
    for (long i = 0; i < n; i++) {
        long long a = now();
        pid_t p = fork();
        if (p == 0) { execve(argv[2], argv + 2, env); _exit(127); }
        int st = 0;
        struct rusage ru;
        wait4(p, &st, 0, &ru);
        long long d = now() - a;
        long long cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL
                      + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
        printf("%lld %d %lld\n", d, st, cpu);
    }
    return 0;
}
"""


def spawner(tmp: Path) -> list[str] | None:
    """Build the native spawner; None when there is no C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src, exe = tmp / "spawn.c", tmp / "spawn"
    src.write_text(_SPAWN_C)
    subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
    return [str(exe)]


def run_spawns(spawn: list[str] | None, n: int, argv: Sequence[str], cgroup: Path | None = None,
               stdin: int | None = None) -> list[tuple[int, int, int]]:
    """n fork+exec+wait of argv (inside `cgroup` when given): [(wall ns, wait status, child cpu ns)]."""
    def enter() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    if spawn is None:  # Python fallback
        code = ("import os,sys,time\nargv=sys.argv[2:]\n"
                "for _ in range(int(sys.argv[1])):\n a=time.monotonic_ns()\n"
                " p=os.posix_spawn(argv[0],argv,{'PATH':'/usr/bin:/bin'})\n _,st,ru=os.wait4(p,0)\n"
                " print(time.monotonic_ns()-a, st, int((ru.ru_utime+ru.ru_stime)*1e9))\n")
        cmd = [sys.executable, "-c", code, str(n), *argv]
    else:
        cmd = [*spawn, str(n), *argv]
    out = subprocess.run(cmd, preexec_fn=enter, stdout=subprocess.PIPE, stdin=stdin,
                         check=True, timeout=3600).stdout
    return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in out.decode().splitlines())]


def prog_runtime(prog_pin: Path) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a pinned program, as the kernel counts them while bpf stats are on."""
    fd = syscall.obj_get(prog_pin)
    try:
        info = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
                    if ":" in line)
    finally:
        os.close(fd)
    return int(info.get("run_time_ns", "0").strip()), int(info.get("run_cnt", "0").strip())


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled on for the duration (it costs a clock read per program run)."""
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    knob.write_text("1")
    try:
        yield
    finally:
        knob.write_text(old)


@contextlib.contextmanager
def workload() -> Iterator[Path]:
    path = syscall.cgroup2_root() / f"palisade-bench-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        for _ in range(100):
            pids = (path / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.05)
        path.rmdir()


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    root = Path("/sys/fs/bpf") / f"palisade-bench-{uuid.uuid4().hex[:8]}"
    e = Engine(pin_root=root, node_name="bench")
    try:
        yield e
    finally:
        for key in list(e.loaded()):
            e.unload(key)
        e.close()
        if root.exists():
            root.rmdir()


@contextlib.contextmanager
def tempdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="palisade-bench-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def percentile(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def summary_us(ns: Sequence[int]) -> dict[str, float]:
    us = [v / 1000 for v in ns]
    return {"n": len(us), "median_us": round(statistics.median(us), 2), "mean_us": round(statistics.fmean(us), 2),
            "p99_us": round(percentile(us, 99), 2)}


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (it loads BPF programs)")

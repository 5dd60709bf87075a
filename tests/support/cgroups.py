"""Test cgroups: removing one kills whatever still runs in it first (tests must leave nothing behind)."""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def remove(cg: Path) -> None:
    """SIGKILL every process left in cgroup `cg` and its sub-cgroups, then remove them all (a no-op
    when it is gone)."""
    if not cg.exists():
        return
    for sub in sorted((p for p in cg.iterdir() if p.is_dir()), reverse=True):
        remove(sub)
    for _ in range(50):
        pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    cg.rmdir()

"""`make demo` runs to the end on this machine and tells the story it promises."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What the demo's output tells, each of them somewhere in it: the kill, the rest running, the reviewers
#: who approved, the cleanup.
STORY = (
    "workload runs /usr/bin/id  → killed by SIGKILL",
    "workload runs /usr/bin/date → exit 0",
    "outside the workload, /usr/bin/id → exit 0",
    "approved by: Alice Reviewer <alice@example.com>",
    "approved by: Bob Reviewer <bob@example.com>",
    "removed the cgroup",
)


@pytest.mark.slow
def test_demo_runs_to_the_end(require_kernel: None) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                       timeout=600)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    assert [line for line in STORY if line not in out] == [], out[-3000:]
    leftovers = [p.name for p in Path("/sys/fs/bpf").glob("palisade-demo-*")]
    assert leftovers == []
    assert not list(Path("/sys/fs/cgroup/unified").glob("palisade-demo-*"))

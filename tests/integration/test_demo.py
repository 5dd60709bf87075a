"""`make demo` runs to the end on this machine and tells the story it promises."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_to_the_end(require_kernel: None) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                       timeout=600)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    assert "workload runs /usr/bin/id  → killed by SIGKILL" in out
    assert "workload runs /usr/bin/date → exit 0" in out
    assert "outside the workload, /usr/bin/id → exit 0" in out
    assert "approved by: Alice Reviewer <alice@example.com>" in out
    assert "approved by: Bob Reviewer <bob@example.com>" in out
    assert "removed the cgroup" in out
    leftovers = [p.name for p in Path("/sys/fs/bpf").glob("palisade-demo-*")]
    assert leftovers == []
    assert not list(Path("/sys/fs/cgroup/unified").glob("palisade-demo-*"))

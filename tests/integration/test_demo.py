"""`make demo` runs to the end on this machine and tells the story it promises."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What the demo's output tells, each of them somewhere in it: the kill, the rest running, the same allowlist
#: following a podman container labelled app=web started afterwards (and not one labelled app=db), the
#: event naming the container and its image, the reviewers who approved, the cleanup; the console's URL, answering.
STORY = (
    "console (read-only, live): open http://127.0.0.1:",
    "the console answers HTTP 200 (text/html",
    "workload runs /usr/bin/id  → killed by SIGKILL",
    "workload runs /usr/bin/date → exit 0",
    "outside the workload, /usr/bin/id → exit 0",
    "the agent took container web into the allowlist's scope",
    "container web (app=web) runs /bin/id → exit 137 (killed by SIGKILL)",
    "container db (app=db) runs /bin/id → exit 0",
    "SIGKILL /bin/busybox in container web (docker://",
    "image localhost/palisade-demo/busybox:1 (sha256:",
    "approved by: Alice Reviewer <alice@example.com>",
    "approved by: Bob Reviewer <bob@example.com>",
    "removed the containers, stopped podman's API service, removed its image and storage",
    "removed the cgroup",
)


@pytest.mark.slow
def test_demo_runs_to_the_end(require_kernel: None) -> None:
    tmp = Path(tempfile.gettempdir())
    before, mounted = set(tmp.glob("palisade-demo-*")), _demo_mounts()  # another run's (CI here) are not ours
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                       timeout=600)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    assert [line for line in STORY if line not in out] == [], out[-3000:]
    leftovers = [p.name for p in Path("/sys/fs/bpf").glob("palisade-demo-*")]
    assert leftovers == []
    assert not list(Path("/sys/fs/cgroup/unified").glob("palisade-demo-*"))
    # podman's storage, runroot and socket lived in the demo's temp dir: gone, and nothing left mounted there
    assert set(tmp.glob("palisade-demo-*")) - before == set()
    assert _demo_mounts() <= mounted


def _demo_mounts() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if "palisade-demo-" in line.split()[4]}

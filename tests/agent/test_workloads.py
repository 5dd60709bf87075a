"""Events of a workload's processes carry Tetragon's process.pod, so the agent's own event log feeds
`palisade generate --events` like a Tetragon export does."""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Workload
from agent.heartbeat import Observations
from agent.workloads import WorkloadIndex

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@pytest.fixture()
def cgroup(require_kernel: None) -> Iterator[Path]:
    path = Path("/sys/fs/cgroup/unified") / f"palisade-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


def _exec_event(binary: str, cgroup_id: int, parent: str = "/usr/bin/python3") -> dict:
    return {"process_tracepoint": {"process": {"binary": binary, "pid": 42}, "parent": {"binary": parent},
                                   "subsys": "sched", "event": "sched_process_exec",
                                   "policy_name": "baseline-process-lifecycle", "action": "KPROBE_ACTION_POST"},
            "palisade": {"cgroup_id": cgroup_id}, "node_name": "node-1", "time": "2026-11-21T10:00:00Z"}


def test_events_of_a_workload_carry_its_pod_and_feed_generate(cgroup: Path, tmp_path: Path) -> None:
    web = Workload("web", str(cgroup), "shop", (("app", "web"),))
    index = WorkloadIndex([web])
    ours, foreign = _exec_event("/usr/bin/date", os.stat(cgroup).st_ino), _exec_event("/usr/bin/id", 1)
    for ev in (ours, foreign):
        index.annotate(ev)
    assert ours["process_tracepoint"]["process"]["pod"] == {
        "namespace": "shop", "name": "web", "workload": "web", "pod_labels": {"app": "web"}}
    assert "pod" not in foreign["process_tracepoint"]["process"]

    obs = Observations([web])
    obs.add(ours)
    obs.add(_exec_event("", os.stat(cgroup).st_ino))  # an exit whose process is gone: not an observation
    assert [(o["binary"], o.get("workload")) for o in obs.drain()] == [("/usr/bin/date", "web")]

    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in (ours, foreign)))
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(Path(__file__).resolve().parents[2] / "example-repo"), str(repo)], check=True)
    r = subprocess.run([str(BIN / "palisade"), "generate", "--workload", "web", "--events", str(log),
                        "--repo", str(repo), "--name", "web-observed", "-o", "json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    policy = (repo / "packs" / "web-observed" / "exec-allowlist.yaml").read_text()
    assert "/usr/bin/date" in policy and "/usr/bin/id" not in policy
    v = subprocess.run([str(BIN / "palisade"), "validate", "--repo", str(repo)], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr

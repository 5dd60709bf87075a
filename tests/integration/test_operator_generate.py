"""`palisade generate` from live observation and from the shared Tetragon samples, end to end: the
generated pack validates, and once enforced in a workload's cgroup on the real kernel, a binary
that was never observed is killed while the observed ones keep running.

Live observation here is the agent's own path, step by step: the engine loads an exec-observing
policy in the workload's cgroup, its events go through the agent's heartbeat aggregation
(agent/heartbeat.py, which names the workload from the event's cgroup id and the agent's
workload configuration) and are posted to a real server over HTTP.
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from operator_support import FleetServer, fleet_server

from agent import config, heartbeat
from reconciler.cli import main
from support.policyrepo import PolicyRepo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bpf"))
from engine_support import Workload, cleanup_pins, new_cgroup, policy, remove_cgroup

OBSERVED = (["/usr/bin/true"], ["/usr/bin/env", "true"], ["/usr/bin/whoami"])
NEVER_OBSERVED = ["/usr/bin/id"]


@pytest.fixture()
def kernel(require_kernel: None) -> Iterator[tuple[Any, Workload]]:
    from bpf.engine import Engine

    root = Path("/sys/fs/bpf") / f"palisade-test-{uuid.uuid4().hex[:10]}"
    engine = Engine(pin_root=root, node_name="web-1")
    w = new_cgroup()
    try:
        yield engine, w
    finally:
        engine.close()
        cleanup_pins(root)
        remove_cgroup(w)


def _observe(engine: Any, w: Workload) -> list[dict[str, Any]]:
    """Run the workload's normal binaries under an exec-observing policy; their events."""
    res = engine.load(policy("web-exec-observe", {"tracepoints": [
        {"subsystem": "sched", "event": "sched_process_exec"}]}), "observe", cgroups=[w.path])
    assert res.loaded, res.reasons
    for argv in OBSERVED:
        assert w.run(argv).returncode == 0
    want = {"/usr/bin/true", "/usr/bin/env", "/usr/bin/whoami"}
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not want <= {_binary(e) for e in events}:
        events += engine.poll_events(0.2)
    assert want <= {_binary(e) for e in events}, events
    engine.unload("web-exec-observe")
    return events


def _binary(ev: dict[str, Any]) -> str:
    return str(ev.get("process_tracepoint", {}).get("process", {}).get("binary", ""))


def _enforce(engine: Any, doc: dict[str, Any], w: Workload) -> None:
    from bpf.policy import parse

    res = engine.load(parse(doc), "enforced", cgroups=[w.path])
    assert res.loaded, res.reasons


def _generated(repo: Path, pack: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((repo / f"packs/{pack}/exec-allowlist.yaml").read_text())
    return doc


def test_from_live_observation_the_unobserved_binary_is_killed(kernel: tuple[Any, Workload], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    engine, w = kernel
    repo = PolicyRepo.create(tmp_path)
    with fleet_server(tmp_path) as fleet:
        # the agent names the workload from the event's cgroup and its configuration
        obs = heartbeat.Observations([config.Workload("web", str(w.path), labels=(("app", "web"),))])
        for ev in _observe(engine, w):
            obs.add(ev)
        fleet.heartbeat("web-1", {"role": "web"}, observations=obs.drain())

        assert main(["generate", "--workload", "web", "--server", fleet.url, "--repo", str(repo.path),
                     "--selector", "app=web", "--scope", "group:web", "--name", "web-observed"]) == 0
    assert "3 binaries allowed, 0 held for review" in capsys.readouterr().out
    assert main(["validate", "--repo", str(repo.path)]) == 0, capsys.readouterr()
    doc = _generated(repo.path, "web-observed")
    assert doc["metadata"]["name"] == "web-observed-exec-allowlist"
    [tp] = doc["spec"]["tracepoints"]
    assert tp["selectors"][0]["matchBinaries"][0]["values"] == ["/usr/bin/env", "/usr/bin/true", "/usr/bin/whoami"]

    _enforce(engine, doc, w)
    for argv in OBSERVED:
        assert w.run(argv).returncode == 0, argv  # observed: keeps running
    killed = w.run(NEVER_OBSERVED)
    assert killed.returncode == -9 and killed.stdout == b""  # never observed: killed before it ran


def test_from_the_tetragon_samples_the_unobserved_binary_is_killed(kernel: tuple[Any, Workload], corpus: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    engine, w = kernel
    repo = PolicyRepo.create(tmp_path)
    assert main(["generate", "--workload", "xwing", "--events", str(corpus / "events"), "--repo",
                 str(repo.path)]) == 0
    assert main(["validate", "--repo", str(repo.path)]) == 0, capsys.readouterr()
    doc = _generated(repo.path, "xwing-allowlist")
    assert doc["kind"] == "TracingPolicyNamespaced"
    _enforce(engine, doc, w)  # the workload's cgroup stands for the xwing pod
    assert w.run(["/usr/bin/whoami"]).returncode == 0  # seen in the samples
    assert w.run(["/bin/bash", "-c", "exit 3"]).returncode == 3  # seen (the shell of the samples)
    killed = w.run(NEVER_OBSERVED)
    assert killed.returncode == -9 and killed.stdout == b""


def test_live_generation_needs_observations_of_the_workload(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    repo = PolicyRepo.create(tmp_path)
    with fleet_server(tmp_path) as fleet:
        fleet.heartbeat("web-1", {"role": "web"}, observations=[
            {"policy": "baseline-process-lifecycle", "binary": "/usr/bin/ls", "count": 2, "workload": "batch"}])
        assert main(["generate", "--workload", "web", "--server", fleet.url, "--repo", str(repo.path)]) == 2
        err = capsys.readouterr().err
        assert "no observations of workload 'web'" in err and "Traceback" not in err


def test_live_startup_installs_are_held_for_review(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = PolicyRepo.create(tmp_path)
    with fleet_server(tmp_path) as fleet:
        _post(fleet, [("/usr/sbin/nginx", None), ("/bin/sh", None), ("/usr/bin/apt-get", "/bin/sh"),
                      ("/usr/bin/dpkg", "/usr/bin/apt-get")])
        argv = ["generate", "--workload", "web", "--state", str(fleet.state), "--repo", str(repo.path)]
        # example-repo already has a policy named web-exec-allowlist (pack web-lockdown)
        assert main(argv) == 2
        assert "web-exec-allowlist is already used in packs/web-lockdown/allowlist.yaml" in capsys.readouterr().err
        assert main([*argv, "--name", "web-observed", "-o", "json", "--since", "1h"]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert [c["binary"] for c in doc["allowed"]] == ["/bin/sh", "/usr/sbin/nginx"]
    assert [c["binary"] for c in doc["review"]] == ["/usr/bin/apt-get", "/usr/bin/dpkg"]
    assert doc["labels"] == {"app": "web"} and "scoping by app=web" in out.err
    assert main(["validate", "--repo", str(repo.path)]) == 0


def _post(fleet: FleetServer, execs: list[tuple[str, str | None]]) -> None:
    obs = [{"policy": "baseline-process-lifecycle", "binary": b, "count": 1, "workload": "web",
            **({"parent": p} if p else {})} for b, p in execs]
    r = httpx.post(f"{fleet.url}/v1/agents/web-1/heartbeat", json={"labels": {"role": "web"}, "observations": obs,
                                                                  "time": _dt.datetime.now(_dt.UTC).isoformat()})
    assert r.status_code == 204, r.text

"""`palisade impact` and `palisade events` against a real repository and a real server: the counts are
exactly the events the test's agents reported in their heartbeats."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from operator_support import FleetServer, fleet_server

from reconciler.cli import main
from support.policyrepo import PolicyRepo

KILL: dict[str, Any] = {"action": "KPROBE_ACTION_SIGKILL", "acted": False}


def _obs(binary: str, count: int, policy: str = "web-exec-allowlist", **extra: Any) -> dict[str, Any]:
    return {"policy": policy, "binary": binary, "count": count, "workload": "web", **extra}


@pytest.fixture()
def fleet(tmp_path: Path) -> Any:
    with fleet_server(tmp_path) as f:
        f.heartbeat("web-1", {"role": "web"}, observations=[
            _obs("/usr/bin/curl", 5, **KILL), _obs("/usr/bin/wget", 2, **KILL, parent="/bin/sh"),
            _obs("/usr/bin/ls", 9, policy="baseline-process-lifecycle", action="KPROBE_ACTION_POST")])
        f.heartbeat("web-2", {"role": "web"}, observations=[_obs("/usr/bin/curl", 3, **KILL)])
        # a second interval of web-1, from an agent that does not report actions (inferred: the policy kills)
        f.heartbeat("web-1", {"role": "web"}, observations=[{"policy": "web-exec-allowlist",
                                                             "binary": "/usr/bin/curl", "count": 1}])
        # the same policy matched on a database node: outside group:web
        f.heartbeat("db-1", {"role": "db"}, observations=[_obs("/usr/bin/curl", 40, **KILL)])
        yield f


def _impact(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["impact", *argv, "-o", "json"]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def test_impact_counts_equal_the_reported_events(repo: PolicyRepo, fleet: FleetServer,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for source in (["--server", fleet.url], ["--state", str(fleet.state)]):
        doc = _impact(capsys, "pack/web-lockdown", "--scope", "group:web", "--days", "7", "--repo", str(repo.path),
                      *source)
        assert (doc["events"], doc["wouldAct"], doc["unknown"], doc["noData"]) == (11, 11, 0, False)
        assert doc["perSensor"] == [{"sensor": "web-1", "events": 8, "wouldAct": 8, "unknown": 0},
                                    {"sensor": "web-2", "events": 3, "wouldAct": 3, "unknown": 0}]
        assert [(b["binary"], b["count"]) for b in doc["topBinaries"]] == [("/usr/bin/curl", 9), ("/usr/bin/wget", 2)]
        assert doc["agentsInScope"] == ["web-1", "web-2"]
    # no agent of the canary group ever reported
    doc = _impact(capsys, "pack/web-lockdown", "--scope", "group:canary", "--repo", str(repo.path),
                  "--server", fleet.url)
    assert doc["noData"] is True  # node-canary-1 never reported


def test_impact_text_names_the_top_binaries(repo: PolicyRepo, fleet: FleetServer,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["impact", "web-lockdown", "--scope", "group:web", "--repo", str(repo.path),
                 "--server", fleet.url]) == 0
    out = capsys.readouterr().out
    assert "11 event(s) observed; 11 would have been acted on if enforced" in out
    assert "       9  /usr/bin/curl  on web-1, web-2 (workload web)" in out


def test_no_data_is_explicit_and_not_safe(repo: PolicyRepo, fleet: FleetServer,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["impact", "pack/egress-guard", "--scope", "group:db", "--repo", str(repo.path),
                 "--server", fleet.url]) == 0
    out = capsys.readouterr().out
    assert "NO DATA" in out and "does not mean enforcing is safe" in out


def test_a_period_before_the_reports_has_no_data(repo: PolicyRepo, fleet: FleetServer,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    doc = _impact(capsys, "pack/web-lockdown", "--scope", "group:web", "--repo", str(repo.path),
                  "--server", fleet.url, "--since", "2020-01-01T00:00:00Z", "--until", "2020-01-08T00:00:00Z")
    assert doc["noData"] is True and doc["events"] == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--state", "/nonexistent", "--days", "0"], "--days"),
    (["--state", "/nonexistent", "--since", "last week"], "--since 'last week'"),
    (["--state", "/nonexistent"], "no fleet.db"),
])
def test_impact_bad_input_is_exit_2(repo: PolicyRepo, capsys: pytest.CaptureFixture[str], argv: list[str],
                                    message: str) -> None:
    assert main(["impact", "pack/web-lockdown", "--scope", "group:web", *argv, "--repo", str(repo.path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_impact_needs_a_fleet(repo: PolicyRepo, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:  # argparse: usage error
        main(["impact", "pack/web-lockdown", "--scope", "group:web", "--repo", str(repo.path)])
    assert e.value.code == 2
    assert "one of the arguments --server --state is required" in capsys.readouterr().err


def test_events_query_by_workload_binary_sensor_and_time(fleet: FleetServer,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    def rows(*argv: str) -> list[dict[str, Any]]:
        assert main(["events", "--server", fleet.url, *argv, "-o", "json"]) == 0
        out: list[dict[str, Any]] = json.loads(capsys.readouterr().out)["observations"]
        return out

    curl = rows("--workload", "web", "--binary", "/usr/bin/curl")
    assert sorted((r["sensor"], r["count"]) for r in curl) == [("db-1", 40), ("web-1", 5), ("web-2", 3)]
    assert sum(r["count"] for r in rows("--sensor", "web-1")) == 5 + 2 + 9 + 1
    assert [r["binary"] for r in rows("--policy", "baseline-process-lifecycle")] == ["/usr/bin/ls"]
    assert rows("--since", "2019-01-01T00:00:00Z", "--until", "2020-01-01T00:00:00Z") == []
    [wget] = rows("--binary", "/usr/bin/wget")
    assert (wget["parent"], wget["action"], wget["acted"]) == ("/bin/sh", "KPROBE_ACTION_SIGKILL", False)
    assert main(["events", "--state", str(fleet.state), "--workload", "web", "--binary", "/usr/bin/wget"]) == 0
    text = capsys.readouterr().out
    assert "would sigkill" in text and "1 row(s), 2 event(s)" in text
    assert main(["events", "--server", fleet.url, "--since", "soon"]) == 2
    assert "--since 'soon'" in capsys.readouterr().err


def test_the_agents_aggregation_carries_workload_parent_and_action_to_events(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent import heartbeat

    sample = json.loads((corpus / "events" / "sample_process_kprobe.json").read_text())
    obs = heartbeat.Observations()
    for _ in range(3):
        obs.add(sample)
    obs.add({"process_tracepoint": {"policy_name": "p", "action": "KPROBE_ACTION_SIGKILL",
                                    "process": {"binary": "/usr/bin/id"}}, "palisade": {"acted": True}})
    with fleet_server(tmp_path) as fleet:
        fleet.heartbeat("node-1", {}, observations=obs.drain())
        assert main(["events", "--server", fleet.url, "-o", "json"]) == 0
    rows = {r["binary"]: r for r in json.loads(capsys.readouterr().out)["observations"]}
    body = sample["process_kprobe"]
    vi = rows[body["process"]["binary"]]
    assert (vi["count"], vi["workload"], vi["parent"], vi["policy"]) == (
        3, body["process"]["pod"]["workload"], body["parent"]["binary"], body["policy_name"])
    assert (rows["/usr/bin/id"]["action"], rows["/usr/bin/id"]["acted"]) == ("KPROBE_ACTION_SIGKILL", True)

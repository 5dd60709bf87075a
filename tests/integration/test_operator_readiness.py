"""`palisade readiness` against a real git policy repository and a real server fed real heartbeats."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from operator_support import FleetServer, policy_status

from reconciler.cli import main
from reconciler.publish.reconcile import Reconciler
from support.policyrepo import PolicyRepo

WEB_ALLOWLIST = policy_status("web-exec-allowlist", ("pack", "web-lockdown"), mode="enforce_ready")
SEEN = [{"policy": "web-exec-allowlist", "binary": "/usr/bin/curl", "count": 3, "workload": "web",
         "action": "KPROBE_ACTION_SIGKILL", "acted": False}]


def _readiness(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["readiness", *argv, "-o", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def _conditions(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in doc["conditions"]}


def test_not_yet_observed(repo: PolicyRepo, fleet: FleetServer, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.heartbeat("db-1", {"role": "db"})  # an agent, but not in the scope
    code, doc = _readiness(capsys, "pack/web-lockdown", "--scope", "group:web", "--repo", str(repo.path),
                           "--server", fleet.url)
    assert code == 1 and doc["readiness"] == "NotReady"
    c = _conditions(doc)
    assert c["Agents"]["severity"] == "blocking" and "no agent in scope group:web" in c["Agents"]["message"]
    assert c["Observations"]["severity"] == "caution"
    assert "no observations does not mean safe" in c["Observations"]["message"]
    assert c["ObservationWindow"]["severity"] == "ok"  # the history is old enough: the fleet is what is missing


def test_too_early(repo: PolicyRepo, fleet: FleetServer, capsys: pytest.CaptureFixture[str]) -> None:
    # a new assignment at observe, merged two hours ago (the repository asks for 72h)
    repo.git.now = (_dt.datetime.now(_dt.UTC) - _dt.timedelta(hours=2)).replace(microsecond=0)
    repo.change("Observe the allowlist on web-1", [(
        "enforcement/web-lockdown.yaml", "    - scope: {group: web}\n",
        "    - scope: {sensor: web-1}\n      state: observe\n    - scope: {group: web}\n")])
    fleet.heartbeat("web-1", {"role": "web"}, policies=[WEB_ALLOWLIST], observations=SEEN)
    code, doc = _readiness(capsys, "pack/web-lockdown", "--scope", "sensor:web-1", "--repo", str(repo.path),
                           "--state", str(fleet.state))
    assert code == 1 and doc["readiness"] == "NotReady" and doc["state"] == "observe"
    c = _conditions(doc)
    assert [k for k, v in c.items() if v["severity"] == "blocking"] == ["ObservationWindow"]
    window = c["ObservationWindow"]["message"]
    assert "for only 1h5" in window and "requires 3d" in window  # merged 2h ago, less the clock ticks
    ready_at = _dt.datetime.fromisoformat(doc["readyAt"].replace("Z", "+00:00"))
    assert _dt.timedelta(hours=69) < ready_at - _dt.datetime.now(_dt.UTC) <= _dt.timedelta(hours=70, minutes=5)


def test_refused_on_some_node(repo: PolicyRepo, fleet: FleetServer, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.heartbeat("web-1", {"role": "web"}, policies=[WEB_ALLOWLIST], observations=SEEN)
    fleet.heartbeat("web-2", {"role": "web"}, policies=[policy_status(
        "web-exec-allowlist", ("pack", "web-lockdown"), "refused", "tracepoint sched:sched_process_exec: not found")])
    code, doc = _readiness(capsys, "web-lockdown", "--scope", "group:web", "--repo", str(repo.path),
                           "--server", fleet.url)
    assert code == 1 and doc["readiness"] == "NotReady"
    refused = _conditions(doc)["Refused"]
    assert refused["severity"] == "blocking"
    assert refused["details"] == ["web-2: web-exec-allowlist: tracepoint sched:sched_process_exec: not found"]
    assert doc["loadedOn"] == ["web-1"] and doc["agentsInScope"] == ["web-1", "web-2"]


def test_ready(repo: PolicyRepo, fleet: FleetServer, capsys: pytest.CaptureFixture[str]) -> None:
    for sensor in ("web-1", "web-2"):
        fleet.heartbeat(sensor, {"role": "web"}, policies=[WEB_ALLOWLIST], observations=SEEN)
    fleet.heartbeat("db-1", {"role": "db"})
    for source in (["--server", fleet.url], ["--state", str(fleet.state)]):
        code, doc = _readiness(capsys, "pack/web-lockdown", "--scope", "group:web", "--repo", str(repo.path),
                               *source)
        assert code == 0, doc
        assert doc["readiness"] == "CandidateForEnforced" and doc["nextState"] == "enforced"
        c = _conditions(doc)
        assert not [k for k, v in c.items() if v["severity"] == "blocking"]
        # ready, but a reviewer must see that enforcing would have killed curl six times
        assert c["WouldAct"]["severity"] == "caution" and "6 event(s) would have been acted on" in \
            c["WouldAct"]["message"]
    assert main(["readiness", "pack/web-lockdown", "--scope", "group:web", "--repo", str(repo.path),
                 "--server", fleet.url]) == 0
    text = capsys.readouterr().out
    assert text.startswith("pack web-lockdown at group:web: enforce_ready -> enforced: CandidateForEnforced")
    assert "caution  WouldAct" in text


def test_with_the_reconciler_state_time_in_state_runs_from_its_first_acceptance(
        repo: PolicyRepo, fleet: FleetServer, capsys: pytest.CaptureFixture[str]) -> None:
    # git says web-lockdown has been at enforce_ready for a year; the reconciler first saw it now
    with Reconciler(str(repo.path), fleet.state, SigningKey.generate()) as rec:
        assert rec.run_once().published == (1,)
    for sensor in ("web-1", "web-2"):
        fleet.heartbeat(sensor, {"role": "web"}, policies=[WEB_ALLOWLIST], observations=SEEN)
    argv = ("pack/web-lockdown", "--scope", "group:web", "--repo", str(repo.path))
    code, doc = _readiness(capsys, *argv, "--state", str(fleet.state))
    assert code == 1 and doc["readiness"] == "NotReady"
    window = _conditions(doc)["ObservationWindow"]
    assert window["severity"] == "blocking", window
    code, doc = _readiness(capsys, *argv, "--server", fleet.url)  # git alone: commit dates
    assert _conditions(doc)["ObservationWindow"]["severity"] == "ok"


def test_without_a_fleet_view_it_is_not_ready(repo: PolicyRepo, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _readiness(capsys, "rule/no-ptrace-attach", "--scope", "group:web", "--repo", str(repo.path))
    assert code == 1 and _conditions(doc)["FleetView"]["severity"] == "blocking"


@pytest.mark.parametrize(("argv", "message"), [
    (["pack/nothing", "--scope", "group:web"], "there is no pack named 'nothing'"),
    (["pack/web-lockdown", "--scope", "group:db"], "has no assignment at group:db; it is assigned at"),
    (["pack/web-lockdown", "--scope", "rack:4"], "use fleet, group:NAME or sensor:ID"),
    (["pack/web-lockdown", "--scope", "group:web", "--server", "http://127.0.0.1:9"], "cannot reach"),
    (["pack/web-lockdown", "--scope", "group:web", "--server", "ftp://x"], "expected a URL"),
])
def test_bad_input_is_exit_2(repo: PolicyRepo, capsys: pytest.CaptureFixture[str], argv: list[str],
                             message: str) -> None:
    assert main(["readiness", *argv, "--repo", str(repo.path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_state_directory_without_a_fleet_is_exit_2(repo: PolicyRepo, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["readiness", "web-lockdown", "--scope", "group:web", "--repo", str(repo.path),
                 "--state", str(tmp_path / "empty")]) == 2
    assert "no fleet.db" in capsys.readouterr().err

"""Readiness classes of a unit at a scope, from its history and the fleet's evidence (pure)."""
from __future__ import annotations

import datetime as _dt
from typing import Any

from reconciler.analysis import readiness
from reconciler.analysis.readiness import Readiness, Severity
from reconciler.repository.model import Group, UnitKey
from reconciler.state.fleet import AgentRecord, ObservationRow
from wire.heartbeat import parse as parse_heartbeat
from wire.values import Scope, State

NOW = _dt.datetime(2026, 11, 21, 12, 0, tzinfo=_dt.UTC)
WINDOW = _dt.timedelta(hours=72)
UNIT = UnitKey("pack", "web-lockdown", Scope(group="web"))
GROUPS = (Group("web", match_labels=(("role", "web"),)),)
POLICIES = {"web-exec-allowlist": {"spec": {"tracepoints": [{"subsystem": "sched", "event": "sched_process_exec",
            "selectors": [{"matchBinaries": [{"operator": "NotIn", "values": ["/usr/sbin/nginx"]}],
                           "matchActions": [{"action": "Sigkill"}]}]}]}}}


def _agent(sensor: str, *, role: str = "web", status: str | None = "loaded", reason: str | None = None,
           drift: list[dict[str, str]] | None = None) -> AgentRecord:
    policies: list[dict[str, Any]] = []
    if status is not None:
        policies.append({"name": "web-exec-allowlist", "status": status, "mode": "observe", "reason": reason,
                         "origin": {"kind": "pack", "name": "web-lockdown"}, "version": 3})
    beat = parse_heartbeat({"labels": {"role": role}, "version": 3, "stage": "fleet", "commit": "ab" * 20,
                            "policies": policies,
                            "drift": {"unhealed": len(drift or []), "findings": drift or []}}, sensor)
    return AgentRecord.of(beat, NOW)


def _obs(sensor: str, binary: str, count: int, action: str | None = "KPROBE_ACTION_POST") -> ObservationRow:
    at = NOW - _dt.timedelta(hours=1)
    return ObservationRow(sensor, "web-exec-allowlist", binary, "web", None, action, False, count, at, at)


def _assess(state: State = State.OBSERVE, *, entered: _dt.timedelta = _dt.timedelta(days=5),
            agents: list[AgentRecord] | None = None, observations: list[ObservationRow] | None = None,
            **kw: Any) -> readiness.Report:
    return readiness.assess(UNIT, state, entered=NOW - entered, min_observation=WINDOW, now=NOW, policies=POLICIES,
                            agents=agents if agents is not None else [_agent("web-1"), _agent("web-2")],
                            groups=GROUPS,
                            observations=observations if observations is not None else [_obs("web-1", "/x", 3)],
                            **kw)


def _cond(report: readiness.Report, kind: str) -> readiness.Condition:
    return next(c for c in report.conditions if c.type == kind)


def test_ready_in_observe_is_a_candidate_for_enforce_ready() -> None:
    r = _assess()
    assert r.readiness is Readiness.CANDIDATE_FOR_ENFORCE_READY and r.blocking == ()
    assert r.loaded_on == ("web-1", "web-2") and r.agents_in_scope == ("web-1", "web-2")


def test_ready_in_enforce_ready_is_a_candidate_for_enforced_with_a_caution_for_would_act() -> None:
    r = _assess(State.ENFORCE_READY, observations=[_obs("web-1", "/usr/bin/curl", 4, "KPROBE_ACTION_SIGKILL")])
    assert r.readiness is Readiness.CANDIDATE_FOR_ENFORCED
    c = _cond(r, "WouldAct")
    assert c.severity is Severity.CAUTION and "4 event(s) would have been acted on" in c.message
    assert c.details == ("4 x /usr/bin/curl on web-1",)


def test_too_early_is_not_ready_and_says_when() -> None:
    r = _assess(entered=_dt.timedelta(hours=3))
    assert r.readiness is Readiness.NOT_READY
    c = _cond(r, "ObservationWindow")
    assert c.severity is Severity.BLOCKING
    assert "only 3h" in c.message and "requires 3d" in c.message and "2026-11-24T09:00:00Z" in c.message


def test_not_yet_observed_no_agent_and_no_observations() -> None:
    r = _assess(agents=[_agent("db-1", role="db")], observations=[])
    assert r.readiness is Readiness.NOT_READY
    assert _cond(r, "Agents").severity is Severity.BLOCKING and "no agent in scope group:web" in \
        _cond(r, "Agents").message
    obs = _cond(r, "Observations")
    assert obs.severity is Severity.CAUTION and "no observations does not mean safe" in obs.message


def test_no_observations_alone_is_a_caution_not_a_block() -> None:
    r = _assess(observations=[])
    assert r.readiness is Readiness.CANDIDATE_FOR_ENFORCE_READY
    assert _cond(r, "Observations").severity is Severity.CAUTION


def test_refused_on_some_node_blocks_with_the_reason() -> None:
    r = _assess(agents=[_agent("web-1"), _agent("web-2", status="refused", reason="kprobes are not available")])
    assert r.readiness is Readiness.NOT_READY
    c = _cond(r, "Refused")
    assert c.severity is Severity.BLOCKING
    assert c.details == ("web-2: web-exec-allowlist: kprobes are not available",)


def test_unhealed_drift_on_its_policy_blocks_elsewhere_cautions() -> None:
    mine = _assess(agents=[_agent("web-1", drift=[{"kind": "missing", "policy": "web-exec-allowlist",
                                                    "detail": "link 12 gone"}])])
    assert mine.readiness is Readiness.NOT_READY and _cond(mine, "Drift").severity is Severity.BLOCKING
    other = _assess(agents=[_agent("web-1", drift=[{"kind": "foreign", "policy": "other", "detail": "x"}])])
    assert other.readiness is Readiness.CANDIDATE_FOR_ENFORCE_READY
    assert _cond(other, "Drift").severity is Severity.CAUTION


def test_agents_that_do_not_report_it_are_a_caution_and_none_loaded_blocks() -> None:
    some = _assess(agents=[_agent("web-1"), _agent("web-2", status=None)])
    assert some.readiness is Readiness.CANDIDATE_FOR_ENFORCE_READY
    assert _cond(some, "Agents").severity is Severity.CAUTION
    none = _assess(agents=[_agent("web-1", status="inactive")])
    assert none.readiness is Readiness.NOT_READY
    assert "inactive" in _cond(none, "Agents").details[0]


def test_a_pack_that_cannot_enforce_stays_in_observe() -> None:
    r = _assess(enforcement_capable=False)
    assert r.readiness is Readiness.NOT_READY and _cond(r, "Capability").severity is Severity.BLOCKING


def test_enforced_is_the_top_of_the_ladder() -> None:
    r = _assess(State.ENFORCED)
    assert r.readiness is Readiness.ENFORCED and r.next_state is None
    assert r.to_json()["readiness"] == "Enforced"


def test_text_lists_blocking_conditions_first() -> None:
    out = readiness.text(_assess(entered=_dt.timedelta(hours=1), observations=[]))
    lines = out.splitlines()
    assert lines[0] == "pack web-lockdown at group:web: observe -> enforce_ready: NotReady"
    assert "BLOCKING ObservationWindow" in lines[1]

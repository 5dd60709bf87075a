"""The rollout decisions: promotion order, bake, gates, halt and rollback, fast-track, operators."""
from __future__ import annotations

import datetime as _dt

import pytest

from reconciler.rollout.decide import Action, AgentReport, Decision, Progress, evaluate, operate, start
from wire.bundle import Bundle, BundleGroup, BundleStage, StageGates, Staging

T0 = _dt.datetime(2026, 11, 21, 12, 0, tzinfo=_dt.UTC)
STALE = _dt.timedelta(seconds=30)
GATES = StageGates(max_agent_errors=0, max_policies_refused=0, max_unhealed_drift=0,
                   max_enforcement_actions_per_node=5, min_reporting_ratio=1.0)


def plan(fast_track: bool = False, bake: int = 60) -> Staging:
    return Staging(fast_track, (
        BundleStage("canary", sensors=("c1",), bake_seconds=bake, gates=GATES),
        BundleStage("group", groups=("web",), bake_seconds=bake, gates=GATES),
        BundleStage("fleet", rest=True, bake_seconds=bake,
                    gates=StageGates(max_agent_errors=1, min_reporting_ratio=0.5)),
    ))


def bundle(version: int, staging: Staging | None = None) -> Bundle:
    return Bundle(version=version, commit=f"{version:040x}", parent=None, author="Dana <d@example.com>",
                  approvers=(), created=T0, policies=(),
                  groups=(BundleGroup("web", match_labels=(("role", "web"),)),),
                  staging=staging or plan())


def fleet(versions: dict[str, int], at: _dt.datetime, **over: AgentReport) -> list[AgentReport]:
    """c1 (canary), w1..w3 (group, role=web), f1..f2 (fleet)."""
    out = []
    for sensor in ("c1", "w1", "w2", "w3", "f1", "f2"):
        labels = (("role", "web"),) if sensor.startswith("w") else ()
        stage = {"c": "canary", "w": "group", "f": "fleet"}[sensor[0]]
        out.append(over.get(sensor) or AgentReport(sensor, labels, versions[stage], at))
    return out


def evaluate_at(now: _dt.datetime, target: Bundle, progress: Progress, pins: dict[str, int],
                versions: dict[str, int], **over: AgentReport) -> Decision:
    """evaluate() at `now`, every agent of `fleet` reporting at `now` the version of its stage in `versions`."""
    return evaluate(target, progress, pins, fleet(versions, now, **over), now=now, stale_after=STALE)


def test_first_version_goes_everywhere() -> None:
    progress, pins = start(plan(), Progress(), {}, 1, relaxing=False, now=T0)
    assert pins == {"canary": 1, "group": 1, "fleet": 1, "default": 1}
    assert progress.stable == 1 and not progress.active


def test_tightening_change_moves_stage_by_stage_after_bake() -> None:
    pins = {"canary": 1, "group": 1, "fleet": 1, "default": 1}
    progress, pins = start(plan(), Progress(target=1, stable=1), pins, 2, relaxing=False, now=T0)
    assert pins == {"canary": 2, "group": 1, "fleet": 1, "default": 1}
    target = bundle(2)

    # canary runs v2 but has not baked yet
    d = evaluate_at(T0 + _dt.timedelta(seconds=10), target, progress, pins, {"canary": 2, "group": 1, "fleet": 1})
    assert d.action == Action.HOLD and d.reason == "baking, 50s left"
    assert d.stages[0].bake_left == 50 and d.stages[0].state == "baking"

    now = T0 + _dt.timedelta(seconds=61)
    d = evaluate_at(now, target, progress, pins, {"canary": 2, "group": 1, "fleet": 1})
    assert d.action == Action.PROMOTE and d.stage == "group"
    assert d.pins == {"canary": 2, "group": 2, "fleet": 1, "default": 1}
    progress, pins = d.progress, d.pins

    # two of three web agents run v2: hold even after the bake
    later = now + _dt.timedelta(seconds=120)
    reports = fleet({"canary": 2, "group": 2, "fleet": 1}, later, w3=AgentReport("w3", (("role", "web"),), 1, later))
    d = evaluate(target, progress, pins, reports, now=later, stale_after=STALE)
    assert d.action == Action.HOLD and d.reason == "2 of 3 reporting agents run v2"

    d = evaluate_at(later, target, progress, pins, {"canary": 2, "group": 2, "fleet": 1})
    assert d.action == Action.PROMOTE and d.stage == "fleet"
    assert d.pins == {"canary": 2, "group": 2, "fleet": 2, "default": 2}
    progress, pins = d.progress, d.pins

    end = later + _dt.timedelta(seconds=60)
    d = evaluate_at(end, target, progress, pins, {"canary": 2, "group": 2, "fleet": 2})
    assert d.action == Action.DONE and d.progress.stable == 2 and not d.progress.active

    d = evaluate_at(end, target, d.progress, pins, {"canary": 2, "group": 2, "fleet": 2})
    assert d.action == Action.IDLE


def test_enforcement_actions_over_the_gate_halt_and_roll_back_the_canary() -> None:
    pins = {"canary": 1, "group": 1, "fleet": 1, "default": 1}
    progress, pins = start(plan(), Progress(target=1, stable=1), pins, 2, relaxing=False, now=T0)
    now = T0 + _dt.timedelta(seconds=5)
    noisy = AgentReport("c1", (), 2, now, enforcement_actions=6)
    d = evaluate_at(now, bundle(2), progress, pins, {"canary": 2, "group": 1, "fleet": 1}, c1=noisy)
    assert d.action == Action.HALT and d.stage == "canary" and d.gate == "maxEnforcementActionsPerNode"
    assert d.pins == {"canary": 1, "group": 1, "fleet": 1, "default": 1}
    assert "enforcement actions per node 6 > 5" in d.reason and "c1" in d.reason
    assert d.progress.halted == d.reason and not d.progress.active
    # a halted rollout stays halted
    later = evaluate_at(now, bundle(2), d.progress, d.pins, {"canary": 1, "group": 1, "fleet": 1})
    assert later.action == Action.IDLE and later.reason.startswith("halted: stage canary")


def test_actions_at_the_limit_do_not_halt() -> None:
    progress, pins = start(plan(), Progress(target=1, stable=1), {"canary": 1}, 2, relaxing=False, now=T0)
    now = T0 + _dt.timedelta(seconds=61)
    d = evaluate_at(now, bundle(2), progress, pins, {"canary": 2, "group": 1, "fleet": 1},
                    c1=AgentReport("c1", (), 2, now, enforcement_actions=5))
    assert d.action == Action.PROMOTE


def test_a_canary_that_stops_reporting_blocks_promotion_and_says_why() -> None:
    progress, pins = start(plan(), Progress(target=1, stable=1), {"canary": 1}, 2, relaxing=False, now=T0)
    now = T0 + _dt.timedelta(seconds=300)
    silent = AgentReport("c1", (), 2, T0 + _dt.timedelta(seconds=10))
    d = evaluate_at(now, bundle(2), progress, pins, {"canary": 2, "group": 1, "fleet": 1}, c1=silent)
    assert d.action == Action.HOLD
    assert d.reason == ("reporting share 0.00 < 1.00 (minReportingRatio): 0 of 1 agents reporting; "
                        "not reporting: c1")


def test_a_failed_gate_on_an_earlier_stage_rolls_back_every_stage_running_the_target() -> None:
    progress = Progress(target=2, stable=1, stage=1, since=T0, started=T0)
    pins = {"canary": 2, "group": 2, "fleet": 1, "default": 1}
    now = T0 + _dt.timedelta(seconds=5)
    sick = AgentReport("c1", (), 2, now, refused=1)
    d = evaluate_at(now, bundle(2), progress, pins, {"canary": 2, "group": 2, "fleet": 1}, c1=sick)
    assert d.action == Action.HALT and d.stage == "canary" and d.gate == "maxPoliciesRefused"
    assert d.pins == {"canary": 1, "group": 1, "fleet": 1, "default": 1}


def test_a_new_version_during_a_rollout_starts_again_at_the_first_stage() -> None:
    progress = Progress(target=2, stable=1, stage=1, since=T0, started=T0)
    pins = {"canary": 2, "group": 2, "fleet": 1, "default": 1}
    new, out = start(plan(), progress, pins, 3, relaxing=False, now=T0)
    assert out == {"canary": 3, "group": 1, "fleet": 1, "default": 1}
    assert new.target == 3 and new.stage == 0 and new.stable == 1


def test_relaxing_change_with_fast_track_goes_everywhere_at_once() -> None:
    pins = {"canary": 2, "group": 1, "fleet": 1, "default": 1}
    progress = Progress(target=2, stable=1, stage=0, since=T0, started=T0)
    new, out = start(plan(fast_track=True), progress, pins, 3, relaxing=True, now=T0)
    assert out == {"canary": 3, "group": 3, "fleet": 3, "default": 3}
    assert new.stable == 3 and new.fast_tracked and not new.active
    # the same change without fast-track goes stage by stage
    new, out = start(plan(fast_track=False), progress, pins, 3, relaxing=True, now=T0)
    assert out == {"canary": 3, "group": 1, "fleet": 1, "default": 1} and new.active
    # and a tightening change is never fast-tracked
    new, out = start(plan(fast_track=True), progress, pins, 3, relaxing=False, now=T0)
    assert out["group"] == 1 and not new.fast_tracked


def test_pause_holds_resume_continues_abort_rolls_back() -> None:
    progress, pins = start(plan(), Progress(target=1, stable=1), {"canary": 1}, 2, relaxing=False, now=T0)
    paused, out, what = operate(progress, plan(), pins, "pause", "investigating", now=T0)
    assert paused.paused and out == {} and what == "paused at stage canary"
    now = T0 + _dt.timedelta(seconds=120)
    reports = fleet({"canary": 2, "group": 1, "fleet": 1}, now)
    d = evaluate(bundle(2), paused, pins, reports, now=now, stale_after=STALE)
    assert d.action == Action.HOLD and d.reason == "paused by an operator"
    resumed, out, _ = operate(paused, plan(), pins, "resume", "fine", now=now)
    assert not resumed.paused and out == {}
    assert evaluate(bundle(2), resumed, pins, reports, now=now, stale_after=STALE).action == Action.PROMOTE

    aborted, out, _ = operate(resumed, plan(), pins, "abort", "wrong change", now=now)
    assert aborted.aborted == "wrong change" and not aborted.active
    assert out == {"canary": 1, "group": 1, "fleet": 1, "default": 1}
    with pytest.raises(ValueError, match="no rollout is in progress"):
        operate(aborted, plan(), out, "pause", "x", now=now)
    # resuming an aborted (or halted) rollout retries it from the first stage
    retried, out, what = operate(aborted, plan(), out, "resume", "fixed", now=now)
    assert retried.active and retried.stage == 0 and out["canary"] == 2 and out["group"] == 1
    assert what == "retrying v2 from the first stage"


def test_stage_views_carry_gate_values_against_limits() -> None:
    progress, pins = start(plan(), Progress(target=1, stable=1), {"canary": 1}, 2, relaxing=False, now=T0)
    now = T0 + _dt.timedelta(seconds=20)
    d = evaluate_at(now, bundle(2), progress, pins, {"canary": 2, "group": 1, "fleet": 1})
    canary, group, rest = d.stages
    assert (canary.name, canary.pinned, canary.agents, canary.reporting, canary.at_pinned) == ("canary", 2, 1, 1, 1)
    assert {g.name: (g.value, g.limit, g.ok) for g in canary.gates} == {
        "minReportingRatio": (1.0, 1.0, True), "maxAgentErrors": (0, 0, True), "maxPoliciesRefused": (0, 0, True),
        "maxUnhealedDrift": (0, 0, True), "maxEnforcementActionsPerNode": (0, 5, True)}
    assert (group.pinned, group.agents, group.state, group.gates) == (1, 3, "waiting", ())
    assert (rest.agents, rest.at_pinned) == (2, 2)

"""The audit's assembly: steps from consecutive bundles, per-sensor enforcement periods."""
from __future__ import annotations

import datetime as _dt

import pytest

from reconciler.analysis.audit import CommitFacts, Run, build, render_text
from reconciler.errors import UsageError
from wire.bundle import Bundle, BundleGroup, BundlePolicy, Origin
from wire.values import Scope, State

T0 = _dt.datetime(2026, 11, 21, 12, 0, tzinfo=_dt.UTC)
WEB = BundleGroup("web", match_labels=(("role", "web"),))
ALICE = "Alice <alice@example.com>"


def bundle(version: int, *policies: tuple[Scope, State], approvers: tuple[str, ...] = ()) -> Bundle:
    ps = tuple(BundlePolicy.of("allow", Origin("pack", "web-lockdown"), scope, state, "kind: TracingPolicy\n")
               for scope, state in policies)
    other = BundlePolicy.of("other", Origin("rule", "r"), Scope(), State.ENFORCED, "x: 1\n")
    return Bundle(version, f"{version:040x}", None, "Dana <dana@example.com>", approvers, T0, (*ps, other), (WEB,))


def at(minutes: int) -> _dt.datetime:
    return T0 + _dt.timedelta(minutes=minutes)


BUNDLES = [
    bundle(1, (Scope(group="web"), State.OBSERVE)),
    bundle(2, (Scope(group="web"), State.ENFORCE_READY), approvers=(ALICE,)),
    bundle(3, (Scope(group="web"), State.ENFORCE_READY), (Scope(sensor="w2"), State.OBSERVE)),  # an exception
    bundle(4, (Scope(group="web"), State.ENFORCED), (Scope(sensor="w2"), State.OBSERVE), approvers=(ALICE,)),
    bundle(5, (Scope(sensor="w2"), State.OBSERVE)),
]
COMMITS = {b.commit: CommitFacts(b.commit, "accepted", b.version, b.author, b.approvers, at(b.version), f"c{b.version}")
           for b in BUNDLES}
RUNS = [Run(s, v, at(10 * v), at(10 * (v + 1)) if v < 5 else None) for s in ("w1", "w2", "db1") for v in range(1, 6)]
LABELS = {"w1": {"role": "web"}, "w2": {"role": "web"}, "db1": {"role": "db"}}


def test_steps_are_the_changes_between_consecutive_bundles() -> None:
    a = build("web-lockdown", BUNDLES, COMMITS, RUNS, LABELS)
    assert a.kind == "pack" and a.versions == (1, 2, 3, 4, 5)
    assert [(s.version, s.approvers, [c.text() for c in s.changes]) for s in a.steps] == [
        (1, (), ["allow @ group:web: (none) → observe"]),
        (2, (ALICE,), ["allow @ group:web: observe → enforce_ready"]),
        (3, (), ["allow @ sensor:w2: (none) → observe"]),
        (4, (ALICE,), ["allow @ group:web: enforce_ready → enforced"]),
        (5, (), ["allow @ group:web: enforced → (removed)"]),
    ]
    assert a.steps[1].subject == "c2" and a.steps[1].committed == at(2)


def test_sensor_periods_follow_the_state_each_sensor_ran() -> None:
    a = build("web-lockdown", BUNDLES, COMMITS, RUNS, LABELS)
    periods = {s: [(i.state, i.start, i.stop, i.versions) for i in a.sensors if i.sensor == s] for s in ("w1", "w2")}
    assert periods["w1"] == [("observe", at(10), at(20), (1,)), ("enforce_ready", at(20), at(40), (2, 3)),
                             ("enforced", at(40), at(50), (4,))]
    # w2's own exception (the most specific scope) wins over the group from v3 on
    assert periods["w2"] == [("observe", at(10), at(20), (1,)), ("enforce_ready", at(20), at(30), (2,)),
                             ("observe", at(30), None, (3, 4, 5))]
    assert not [i for i in a.sensors if i.sensor == "db1"]


def test_one_sensor_and_the_text_form() -> None:
    a = build("allow", BUNDLES, COMMITS, RUNS, LABELS, sensor="w1")
    assert a.kind == "policy" and {i.sensor for i in a.sensors} == {"w1"}
    text = render_text(a)
    assert "author: Dana <dana@example.com>; approved by: Alice <alice@example.com>" in text
    assert "w1  allow  enforced  2026-11-21T12:40:00Z → 2026-11-21T12:50:00Z  (v4)" in text
    assert "carried by: v1-v5" in text


def test_an_unknown_subject_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not a pack, rule or policy"):
        build("nope", BUNDLES, COMMITS, RUNS, LABELS)

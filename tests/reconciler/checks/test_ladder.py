"""The ladder rules as pure logic: moves between two revisions and the verdict on them."""
from __future__ import annotations

import datetime as _dt

import pytest

from reconciler.checks import ladder
from reconciler.checks.ladder import Approval, MoveKind
from reconciler.findings import Severity
from reconciler.repository.model import RepositoryConfig, Reviewer, UnitKey
from wire.values import Scope, State

OBS, READY, ENF = State.OBSERVE, State.ENFORCE_READY, State.ENFORCED
WEB = UnitKey("pack", "web-lockdown", Scope(group="web"))
CANARY = UnitKey("pack", "web-lockdown", Scope(group="canary"))
RULE = UnitKey("rule", "no-kmod", Scope())
T0 = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)
WINDOW = _dt.timedelta(hours=72)
APPROVED = Approval(approvers=("Alice",))
UNSIGNED = Approval()


def codes(problems: list[ladder.Problem]) -> list[str]:
    return [p.code for p in problems]


def test_moves_classifies_every_unit_of_either_side() -> None:
    base = {WEB: OBS, CANARY: ENF, RULE: READY}
    head = {WEB: READY, CANARY: OBS, UnitKey("rule", "new", Scope()): OBS}
    by_unit = {m.unit: m for m in ladder.moves(base, head)}
    assert by_unit[WEB].kind is MoveKind.FORWARD and by_unit[WEB].steps == 1
    assert by_unit[CANARY].kind is MoveKind.BACK and by_unit[CANARY].steps == -2
    assert by_unit[RULE].kind is MoveKind.REMOVED and by_unit[RULE].after is None
    assert by_unit[UnitKey("rule", "new", Scope())].kind is MoveKind.NEW
    assert ladder.moves(base, base) == [m for m in ladder.moves(base, base) if m.kind is MoveKind.UNCHANGED]


def test_a_scope_is_its_own_unit() -> None:
    # the same pack at another scope is a different rung: advancing web says nothing about canary
    moves = ladder.moves({WEB: OBS}, {WEB: OBS, CANARY: ENF})
    assert [(m.unit, m.kind) for m in moves] == [(CANARY, MoveKind.NEW), (WEB, MoveKind.UNCHANGED)]


def test_one_approved_step_after_the_window_passes() -> None:
    moves = ladder.moves({WEB: OBS}, {WEB: READY})
    assert ladder.check(moves, APPROVED, {WEB: T0}, WINDOW, T0 + WINDOW) == []


def test_skipping_a_step_is_refused_even_when_approved() -> None:
    moves = ladder.moves({WEB: OBS}, {WEB: ENF})
    problems = ladder.check(moves, APPROVED, {WEB: T0}, WINDOW, T0 + 10 * WINDOW)
    assert codes(problems) == ["ladder-skip"]
    assert "observe -> enforce_ready first" in problems[0].message


@pytest.mark.parametrize("state", [READY, ENF])
def test_new_unit_above_observe_is_refused(state: State) -> None:
    problems = ladder.check(ladder.moves({}, {RULE: state}), APPROVED, {}, WINDOW, T0)
    assert codes(problems) == ["new-not-observe"]


def test_new_unit_at_observe_needs_nothing() -> None:
    assert ladder.check(ladder.moves({}, {RULE: OBS}), UNSIGNED, {}, WINDOW, T0) == []


@pytest.mark.parametrize("base", [{WEB: ENF}, {WEB: READY}, {WEB: ENF, RULE: READY}])
def test_going_back_or_removing_needs_no_approval_and_no_window(base: dict[UnitKey, State]) -> None:
    moves = ladder.moves(base, {WEB: OBS})
    assert ladder.check(moves, UNSIGNED, {WEB: T0}, WINDOW, T0) == []


@pytest.mark.parametrize(
    "code", [ladder.UNSIGNED, ladder.BAD_SIGNATURE, ladder.NOT_REVIEWER, ladder.SELF_APPROVED]
)
def test_unapproved_step_reports_why(code: str) -> None:
    approval = Approval(code=code, reason=f"because {code}")
    problems = ladder.check(ladder.moves({WEB: OBS}, {WEB: READY}), approval, {WEB: T0}, WINDOW, T0 + WINDOW)
    assert codes(problems) == [code]
    assert f"because {code}" in problems[0].message and problems[0].severity is Severity.ERROR


def test_every_forward_unit_is_reported_separately() -> None:
    moves = ladder.moves({WEB: OBS, RULE: READY}, {WEB: READY, RULE: ENF})
    problems = ladder.check(moves, UNSIGNED, {WEB: T0, RULE: T0}, WINDOW, T0 + WINDOW)
    assert sorted((p.unit, p.code) for p in problems) == sorted([(WEB, "unsigned"), (RULE, "unsigned")])


def test_advance_inside_the_window_says_how_long_is_left() -> None:
    now = T0 + _dt.timedelta(hours=70)
    problems = ladder.check(ladder.moves({WEB: OBS}, {WEB: READY}), APPROVED, {WEB: T0}, WINDOW, now)
    assert codes(problems) == ["window"]
    assert "2h left" in problems[0].message
    assert "2026-01-04 00:00:00Z" in problems[0].message  # the earliest time it may advance


def test_unapproved_and_early_reports_both() -> None:
    problems = ladder.check(ladder.moves({WEB: OBS}, {WEB: READY}), UNSIGNED, {WEB: T0}, WINDOW, T0)
    assert sorted(codes(problems)) == ["unsigned", "window"]


def test_pending_approval_is_a_warning_naming_what_is_needed() -> None:
    approval = Approval(pending=True, reason="a merge signed by Alice or Bob")
    problems = ladder.check(ladder.moves({WEB: OBS}, {WEB: READY}), approval, {WEB: T0}, WINDOW, T0 + WINDOW)
    assert codes(problems) == ["approval-pending"]
    assert problems[0].severity is Severity.WARNING and "Alice or Bob" in problems[0].message


def test_required_approvals_count_distinct_reviewers() -> None:
    assert not Approval(approvers=("Alice", "Alice"), required=2).granted
    assert Approval(approvers=("Alice", "Bob"), required=2).granted


ALICE = Reviewer("Alice", "alice@example.com", "ssh-ed25519 AAAAkeyA alice")
BOB = Reviewer("Bob", "bob@example.com", "ssh-ed25519 AAAAkeyB bob")
MALLORY = Reviewer("Mallory", "mallory@example.com", "ssh-ed25519 AAAAkeyM mallory")


def config(*reviewers: Reviewer, required: int = 1, window: _dt.timedelta = WINDOW) -> RepositoryConfig:
    return RepositoryConfig("r", reviewers, approvals_required=required, min_observation=window)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (config(ALICE, BOB, MALLORY), ["reviewer Mallory <mallory@example.com> added"]),
        (config(ALICE), ["reviewer Bob <bob@example.com> removed"]),
        (config(ALICE, BOB, required=2), ["approvals.required 1 -> 2"]),
        (config(ALICE, BOB, window=_dt.timedelta(hours=1)), ["minObservation 3d -> 1h"]),
        (None, ["palisade.yaml was removed"]),
    ],
)
def test_config_changes_are_named(head: RepositoryConfig | None, expected: list[str]) -> None:
    assert ladder.config_changes(config(ALICE, BOB), head) == expected


def test_key_comment_is_not_a_change_but_a_new_key_is() -> None:
    recommented = Reviewer("Alice", "alice@example.com", "ssh-ed25519 AAAAkeyA laptop")
    rekeyed = Reviewer("Alice", "alice@example.com", "ssh-ed25519 AAAAkeyX alice")
    assert ladder.config_changes(config(ALICE), config(recommented)) == []
    assert ladder.config_changes(config(ALICE), config(rekeyed)) != []


def test_first_reviewer_list_is_trusted() -> None:
    assert ladder.check_config(None, config(ALICE), UNSIGNED) == []


def test_reviewer_change_needs_previous_reviewers() -> None:
    problems = ladder.check_config(config(ALICE), config(ALICE, MALLORY), UNSIGNED)
    assert codes(problems) == ["reviewers-unapproved"] and "Mallory" in problems[0].message
    assert ladder.check_config(config(ALICE), config(ALICE, MALLORY), APPROVED) == []
    pending = ladder.check_config(config(ALICE), config(ALICE, MALLORY), Approval(pending=True))
    assert codes(pending) == ["approval-pending"]

"""The enforcement ladder as pure logic (DESIGN.md §2): what moved, and whether it may.

Nothing here touches git or the clock. `history` gathers the facts from git (the
units of two revisions, who signed, when each unit entered its state) and asks
this module for the verdict; `palisade plan` reuses `moves` to show what a change does.

Problem codes (stable; CI filters and dashboards match on them):

- ``ladder-skip``          a unit moved forward more than one step in one change
- ``new-not-observe``      a new unit did not start at ``observe``
- ``unsigned``             a forward step whose introducing commit carries no signature
- ``bad-signature``        ... carries a signature that does not verify
- ``not-reviewer``         ... is signed by a key that is not a reviewer's
- ``self-approved``        ... is signed by a reviewer who authored a commit of the change
- ``insufficient-approvals``  fewer distinct reviewers approved than ``approvals.required``
- ``unproven-author``      one reviewer approved, but a commit of the change is not signed by a
                           listed person, so that reviewer may have written it: two must approve
- ``unapproved-tightening`` a unit at enforce_ready/enforced acts on more (a policy changed,
                           an exception removed, its group widened) without approval
- ``new-policy-enforcing`` a policy new to a pack that is at enforce_ready/enforced
- ``reviewers-unapproved`` reviewers, approval rule or observation window changed without
                           the approval of the previous reviewers
- ``window``               a forward step before the unit spent the observation window
                           in its current state
- ``approval-pending``     (warning, pull-request mode) the approval does not exist yet
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from reconciler.findings import Severity
from reconciler.repository.model import RepositoryConfig, UnitKey
from wire.values import State

if TYPE_CHECKING:
    from reconciler.checks.tightening import Tightening

# Codes an `Approval` may carry as the reason it falls short.
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad-signature"
NOT_REVIEWER = "not-reviewer"
SELF_APPROVED = "self-approved"
INSUFFICIENT = "insufficient-approvals"
UNPROVEN_AUTHOR = "unproven-author"


class MoveKind(StrEnum):
    NEW = "new"
    FORWARD = "forward"
    BACK = "back"
    REMOVED = "removed"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, order=True)
class Move:
    """What one change does to one unit: its state before (None: absent) and after (None: gone)."""

    unit: UnitKey
    before: State | None
    after: State | None
    kind: MoveKind

    @property
    def steps(self) -> int:
        """Ladder steps forward (negative: back); 0 for new, removed and unchanged units."""
        if self.before is None or self.after is None:
            return 0
        return self.after.rank - self.before.rank

    def __str__(self) -> str:
        before = self.before.value if self.before else "absent"
        after = self.after.value if self.after else "absent"
        return f"{self.unit}: {before} -> {after} ({self.kind.value})"


@dataclass(frozen=True)
class Approval:
    """The verified facts about who approved a change, as `history` found them in git.

    `approvers` are the distinct reviewers (of the parent revision) whose valid
    signature counts: they are reviewers and authored none of the change's commits.
    When there are fewer than `required`, `code` and `reason` say why the
    introducing commit's own signature did not count (one of the module's codes).
    `pending` means the approving commit cannot exist yet (a pull request before
    its merge): a shortfall is a warning naming what is needed, not an error.
    """

    approvers: tuple[str, ...] = ()
    required: int = 1
    code: str = UNSIGNED
    reason: str = "the commit introducing it is not signed"
    pending: bool = False

    @property
    def granted(self) -> bool:
        return len(set(self.approvers)) >= max(self.required, 1)


@dataclass(frozen=True, order=True)
class Problem:
    """A ladder rule a change breaks; `unit` is None for repository-level problems (reviewers)."""

    unit: UnitKey | None
    code: str
    message: str
    severity: Severity = Severity.ERROR


def moves(base: Mapping[UnitKey, State], head: Mapping[UnitKey, State]) -> list[Move]:
    """Every unit of either side and how it moved from `base` to `head`, sorted by unit."""
    out: list[Move] = []
    for unit in sorted(set(base) | set(head)):
        before, after = base.get(unit), head.get(unit)
        if before is None:
            kind = MoveKind.NEW
        elif after is None:
            kind = MoveKind.REMOVED
        elif after.rank > before.rank:
            kind = MoveKind.FORWARD
        elif after.rank < before.rank:
            kind = MoveKind.BACK
        else:
            kind = MoveKind.UNCHANGED
        out.append(Move(unit, before, after, kind))
    return out


def check(
    changes: Iterable[Move],
    approval: Approval,
    entered_at: Mapping[UnitKey, _dt.datetime],
    window: _dt.timedelta,
    now: _dt.datetime,
) -> list[Problem]:
    """The ladder rules of DESIGN.md §2 applied to one change.

    `entered_at` holds, for each unit that moves forward, when it entered its
    current (base) state; `now` is when the step happens (the introducing
    commit's time). Going back and removing need nothing; a skip or a new unit
    above observe is an error of its own and is not also reported for approval.
    """
    problems: list[Problem] = []
    for m in changes:
        if m.kind is MoveKind.NEW and m.after is not State.OBSERVE:
            assert m.after is not None
            problems.append(Problem(
                m.unit, "new-not-observe",
                f"{m.unit} is new and starts at {m.after.value}; new units start at observe "
                f"(set state: observe, advance in later approved changes)",
            ))
        elif m.kind is MoveKind.FORWARD:
            problems.extend(_forward(m, approval, entered_at, window, now))
    return problems


def _forward(
    m: Move,
    approval: Approval,
    entered_at: Mapping[UnitKey, _dt.datetime],
    window: _dt.timedelta,
    now: _dt.datetime,
) -> list[Problem]:
    assert m.before is not None and m.after is not None
    if m.steps > 1:
        nxt = State(_ORDER[m.before.rank + 1])
        return [Problem(
            m.unit, "ladder-skip",
            f"{m.unit} moves {m.before.value} -> {m.after.value}, {m.steps} steps in one change; "
            f"move one step at a time ({m.before.value} -> {nxt.value} first)",
        )]
    out: list[Problem] = []
    if not approval.granted:
        out.append(_unapproved(f"advancing {m.unit} ({m.before.value} -> {m.after.value})", m.unit, approval))
    entered = entered_at.get(m.unit)
    if entered is not None:
        spent = now - entered
        if spent < window:
            out.append(Problem(
                m.unit, "window",
                f"{m.unit} entered {m.before.value} at {_stamp(entered)}, {_human(spent)} ago; "
                f"the observation window is {_human(window)}, {_human(window - spent)} left "
                f"(earliest {_stamp(entered + window)})",
            ))
    return out


_ORDER = [State.OBSERVE, State.ENFORCE_READY, State.ENFORCED]


def config_changes(base: RepositoryConfig | None, head: RepositoryConfig | None) -> list[str]:
    """What changed in the settings that govern approval: reviewers, approval rule, observation window.

    An absent base configuration (the repository's first palisade.yaml) changes
    nothing: there are no previous reviewers to ask, so the first list is trusted.
    """
    if base is None:
        return []
    if head is None:
        return ["palisade.yaml was removed"]
    out: list[str] = []
    old = {(r.name, r.email, _key_material(r.key)) for r in base.reviewers}
    new = {(r.name, r.email, _key_material(r.key)) for r in head.reviewers}
    out.extend(f"reviewer {n} <{e}> added" for n, e, _ in sorted(new - old))
    out.extend(f"reviewer {n} <{e}> removed" for n, e, _ in sorted(old - new))
    # a contributor's key proves authorship, so who holds one is as much a setting as who reviews
    old_c = {(r.name, r.email, _key_material(r.key)) for r in base.contributors}
    new_c = {(r.name, r.email, _key_material(r.key)) for r in head.contributors}
    out.extend(f"contributor {n} <{e}> added" for n, e, _ in sorted(new_c - old_c))
    out.extend(f"contributor {n} <{e}> removed" for n, e, _ in sorted(old_c - new_c))
    if base.approvals_required != head.approvals_required:
        out.append(f"approvals.required {base.approvals_required} -> {head.approvals_required}")
    if base.min_observation != head.min_observation:
        out.append(f"minObservation {_human(base.min_observation)} -> {_human(head.min_observation)}")
    return out


def check_config(base: RepositoryConfig | None, head: RepositoryConfig | None, approval: Approval) -> list[Problem]:
    """`reviewers-unapproved` when approval settings change without the previous reviewers' approval."""
    changed = config_changes(base, head)
    if not changed or approval.granted:
        return []
    what = "; ".join(changed)
    if approval.pending:
        return [_unapproved(f"changing the approval settings ({what})", None, approval)]
    return [Problem(
        None, "reviewers-unapproved",
        f"changing the approval settings ({what}) needs the approval of the previous reviewers: "
        f"{approval.reason}",
    )]


def check_tightenings(found: Iterable[Tightening], approval: Approval) -> list[Problem]:
    """Enforcing units that act on more: a policy new to one is refused; any other widening needs approval."""
    problems: list[Problem] = []
    for t in found:
        for name in t.new_policies:
            problems.append(Problem(
                t.unit, "new-policy-enforcing",
                f"policy {name} is new to {t.unit}, which is at {t.state.value}; a new policy starts at observe: "
                f"put it in a pack of its own assigned at observe and advance that, or move this assignment "
                f"back to observe first",
            ))
        if t.reasons and not approval.granted:
            what = f"widening {t.unit} at {t.state.value} ({'; '.join(t.reasons)})"
            if approval.pending:
                problems.append(_unapproved(what, t.unit, approval))
            else:
                problems.append(Problem(t.unit, "unapproved-tightening",
                                        f"{what} acts on more, a forward step that needs approval: "
                                        f"{approval.reason}"))
    return problems


def _unapproved(what: str, unit: UnitKey | None, approval: Approval) -> Problem:
    if approval.pending:
        return Problem(unit, "approval-pending", f"{what} needs approval: {approval.reason}", Severity.WARNING)
    return Problem(unit, approval.code, f"{what} is not approved: {approval.reason}")


def _key_material(key: str) -> str:
    # the comment after type and base64 blob is free text; changing it changes nothing
    return " ".join(key.split()[:2])


def _stamp(t: _dt.datetime) -> str:
    return t.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _human(d: _dt.timedelta) -> str:
    """`3d 4h`, `5h 12m`, `40s`: two units are plenty for a person."""
    secs = max(int(d.total_seconds()), 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size or (unit == "s" and not parts):
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return " ".join(parts[:2])


def describe(changes: Sequence[Move]) -> list[str]:
    """One line per unit that changed (for `palisade plan` and logs)."""
    return [str(m) for m in changes if m.kind is not MoveKind.UNCHANGED]

"""What a change to the policy repository does, as pure logic (`palisade plan`).

`diff(base, head)` compares two revisions — each its typed repository plus the
policies it renders to — and returns a `Plan`: per unit (a pack or rule at one
scope) its ladder move and the rendered TracingPolicies it adds, removes or
changes (with a unified diff), whether the change only relaxes enforcement
(relaxing.py), and the rollout stages it will travel through.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.checks import ladder
from reconciler.checks.ladder import Move, MoveKind
from reconciler.checks.relaxing import Classification, PolicyLike, RenderedLike, classify
from reconciler.repository.model import Group, PolicyRepository, Rollout, UnitKey, format_duration
from wire.bundle import stage_holding
from wire.values import Scope, State, effective

# --- the plan ----------------------------------------------------------------------------------


class Change(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"  # the TracingPolicy itself differs (its state may also have moved)
    STATE = "state"  # only the ladder state moved


@dataclass(frozen=True)
class Revision:
    """One side of a plan: a repository and the policies it renders to."""

    repository: PolicyRepository
    rendered: tuple[RenderedLike, ...]


@dataclass(frozen=True)
class PolicyChange:
    """One rendered TracingPolicy of a unit that differs between the revisions."""

    name: str
    change: Change
    before: State | None
    after: State | None
    diff: str  # unified diff of the rendered YAML; "" when the YAML is the same

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "change": self.change.value, "before": _state(self.before),
                "after": _state(self.after), "diff": self.diff}


@dataclass(frozen=True)
class UnitChange:
    """A pack or rule at one scope: its ladder move and the policies that differ."""

    move: Move
    policies: tuple[PolicyChange, ...]
    disabled: bool = False  # a rule that still exists but was switched off (`enabled: false`)
    relaxing: bool = False  # this unit's change alone only relaxes enforcement (the base with it applied)

    @property
    def unit(self) -> UnitKey:
        return self.move.unit

    def to_json(self) -> dict[str, Any]:
        m = self.move
        return {"kind": m.unit.kind, "name": m.unit.name, "scope": m.unit.scope.key,
                "move": "disabled" if self.disabled else m.kind.value,
                "before": _state(m.before), "after": _state(m.after), "relaxing": self.relaxing,
                "policies": [p.to_json() for p in self.policies]}


@dataclass(frozen=True)
class Stages:
    """The rollout a change will go through, from the head revision's staging file."""

    rollout: str | None  # None: no staging file, every sensor gets it at once
    stages: tuple[str, ...]
    bakes: tuple[str, ...]
    fast_track: bool  # the staging file allows fast-tracking relaxing changes
    fast_tracked: bool  # ... and this change qualifies

    def describe(self) -> str:
        if self.rollout is None or not self.stages:
            return "no staging file: every sensor receives it at once"
        chain = " → ".join(f"{s} (bake {b})" for s, b in zip(self.stages, self.bakes, strict=True))
        if self.fast_tracked:
            return f"fast-tracked to every stage at once ({', '.join(self.stages)}): relaxing, and " \
                   f"rollout {self.rollout} has fastTrack: true"
        return f"{chain} (rollout {self.rollout})"

    def to_json(self) -> dict[str, Any]:
        return {"rollout": self.rollout, "stages": list(self.stages), "fastTrack": self.fast_track,
                "fastTracked": self.fast_tracked, "description": self.describe()}


@dataclass(frozen=True)
class Plan:
    units: tuple[UnitChange, ...]
    notes: tuple[str, ...]  # changes outside units: packs, groups, staging, approval settings
    classification: Classification
    stages: Stages
    unchanged: int = 0  # units (pack or rule at a scope) of either side this change leaves as they are

    @property
    def changed(self) -> bool:
        return bool(self.units or self.notes)

    def counts(self) -> dict[str, int]:
        out = {c.value: 0 for c in Change}
        for u in self.units:
            for p in u.policies:
                out[p.change.value] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "units": [u.to_json() for u in self.units], "notes": list(self.notes),
                "counts": self.counts(), "classification": self.classification.to_json(),
                "rollout": self.stages.to_json(), "unchanged": self.unchanged}


def diff(base: Revision, head: Revision) -> Plan:
    """Everything `head` changes relative to `base`."""
    moves = ladder.moves(base.repository.units(), head.repository.units())
    old = _by_unit(base.rendered)
    new = _by_unit(head.rendered)
    disabled = {r.name for r in head.repository.rules if not r.enabled} & \
        {r.name for r in base.repository.rules if r.enabled}
    units: list[UnitChange] = []
    for m in moves:
        policies = _policy_changes(old.get(m.unit, {}), new.get(m.unit, {}))
        if m.kind is MoveKind.UNCHANGED and not policies:
            continue
        is_disabled = m.kind is MoveKind.REMOVED and m.unit.kind == "rule" and m.unit.name in disabled
        units.append(UnitChange(m, tuple(policies), is_disabled, _unit_relaxing(base, head, m.unit)))
    verdict = classify(base.rendered, head.rendered, before_groups=base.repository.groups,
                       after_groups=head.repository.groups)
    notes = _notes(base.repository, head.repository)
    return Plan(tuple(units), tuple(notes), verdict,
                _stages(head.repository, verdict.relaxing and bool(units or notes)), len(moves) - len(units))


def _unit_relaxing(base: Revision, head: Revision, unit: UnitKey) -> bool:
    """Whether applying only this unit's change to the base relaxes: the rest of the fleet's policies stay
    in view (a removed assignment may fall back to another scope), the groups are the head's on both sides
    (a changed group is the whole change's, judged by the overall verdict)."""
    def mine(p: RenderedLike) -> bool:
        return UnitKey(p.origin_kind, p.origin_name, p.scope) == unit

    applied = [p for p in base.rendered if not mine(p)] + [p for p in head.rendered if mine(p)]
    groups = head.repository.groups
    return classify(base.rendered, applied, before_groups=groups, after_groups=groups).relaxing


def _by_unit(rendered: Iterable[RenderedLike]) -> dict[UnitKey, dict[str, RenderedLike]]:
    out: dict[UnitKey, dict[str, RenderedLike]] = {}
    for p in rendered:
        out.setdefault(UnitKey(p.origin_kind, p.origin_name, p.scope), {})[p.name] = p
    return out


def _policy_changes(old: Mapping[str, RenderedLike], new: Mapping[str, RenderedLike]) -> list[PolicyChange]:
    out: list[PolicyChange] = []
    for name in sorted(old.keys() | new.keys()):
        b, a = old.get(name), new.get(name)
        before, after = (b.state if b else None), (a.state if a else None)
        text = unified(b.yaml if b else "", a.yaml if a else "", name)
        if b is None:
            out.append(PolicyChange(name, Change.ADDED, before, after, text))
        elif a is None:
            out.append(PolicyChange(name, Change.REMOVED, before, after, text))
        elif b.yaml != a.yaml:
            out.append(PolicyChange(name, Change.CHANGED, before, after, text))
        elif before != after:
            out.append(PolicyChange(name, Change.STATE, before, after, ""))
    return out


def unified(before: str, after: str, name: str, *, context: int = 3) -> str:
    """A unified diff of two texts, labelled a/NAME and b/NAME ("" when they are equal)."""
    if before == after:
        return ""
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 f"a/{name}" if before else "/dev/null", f"b/{name}" if after else "/dev/null",
                                 n=context)
    return "".join(x if x.endswith("\n") else x + "\n\\ No newline at end of file\n" for x in lines)


def _notes(base: PolicyRepository, head: PolicyRepository) -> list[str]:
    out: list[str] = []
    old_packs, new_packs = {p.name for p in base.packs}, {p.name for p in head.packs}
    assigned = {e.pack for e in head.enforcements if e.assignments}
    for name in sorted(new_packs - old_packs):
        out.append(f"pack {name} added" + ("" if name in assigned else
                                          " (not assigned to any scope yet: it renders to nothing)"))
    out.extend(f"pack {name} removed" for name in sorted(old_packs - new_packs))
    old_groups = {g.name: g for g in base.groups}
    new_groups = {g.name: g for g in head.groups}
    for name in sorted(old_groups.keys() | new_groups.keys()):
        og, ng = old_groups.get(name), new_groups.get(name)
        if og is None:
            out.append(f"group {name} added ({_group_text(ng)})")
        elif ng is None:
            out.append(f"group {name} removed")
        elif (og.sensors, og.match_labels) != (ng.sensors, ng.match_labels):
            out.append(f"group {name} changed: {_group_text(og)} → {_group_text(ng)}")
    if _rollout_key(base.rollouts) != _rollout_key(head.rollouts):
        out.append("staging changed: " + (_stages(head, False).describe()))
    out.extend(ladder.config_changes(base.config, head.config))
    return out


def _group_text(g: Group | None) -> str:
    if g is None:
        return "none"
    parts = [f"ids {','.join(g.sensors)}"] if g.sensors else []
    if g.match_labels:
        parts.append("labels " + ",".join(f"{k}={v}" for k, v in g.match_labels))
    return "; ".join(parts) or "empty"


def _rollout_key(rollouts: Sequence[Rollout]) -> tuple[Any, ...]:
    return tuple((r.name, r.fast_track, r.stages) for r in rollouts)


def _stages(head: PolicyRepository, relaxing: bool) -> Stages:
    if not head.rollouts:
        return Stages(None, (), (), False, False)
    ro = head.rollouts[0]  # the one the reconciler puts in the bundle
    return Stages(ro.name, tuple(s.name for s in ro.stages), tuple(format_duration(s.bake) for s in ro.stages),
                  ro.fast_track, ro.fast_track and relaxing)


def _state(s: State | None) -> str | None:
    return s.value if s is not None else None


# --- per sensor ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sensor:
    """A sensor of the fleet as the reconciler knows it: its id and labels."""

    id: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SensorPolicy:
    """How one policy changes on one sensor, after scope resolution."""

    name: str
    before: State | None
    after: State | None
    changed: bool  # the TracingPolicy it loads differs

    def describe(self) -> str:
        b = self.before.value if self.before else "absent"
        a = self.after.value if self.after else "absent"
        return f"{self.name}: {b} → {a}" if b != a else f"{self.name}: {a} (definition changed)"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "before": _state(self.before), "after": _state(self.after),
                "changed": self.changed}


@dataclass(frozen=True)
class SensorChange:
    sensor: Sensor
    stage: str | None  # the head revision's first stage that holds it
    policies: tuple[SensorPolicy, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.sensor.id, "labels": dict(self.sensor.labels), "stage": self.stage,
                "policies": [p.to_json() for p in self.policies]}


def per_sensor(base: Revision, head: Revision, sensors: Iterable[Sensor]) -> tuple[SensorChange, ...]:
    """For each sensor that the change affects, the policies it will load differently.

    Each side resolves scopes with its own groups: on a node the most specific
    scope wins, and between groups the least enforcing state (as agents select).
    """
    out: list[SensorChange] = []
    for s in sorted(sensors, key=lambda s: s.id):
        labels = dict(s.labels)
        before = _effective(base, s.id, labels)
        after = _effective(head, s.id, labels)
        changes = []
        for name in sorted(before.keys() | after.keys()):
            b, a = before.get(name), after.get(name)
            bs, as_ = (b.state if b else None), (a.state if a else None)
            changed = (b.yaml if b else None) != (a.yaml if a else None)
            if bs != as_ or changed:
                changes.append(SensorPolicy(name, bs, as_, changed))
        if changes:
            out.append(SensorChange(s, stage_of(head.repository, s.id, labels), tuple(changes)))
    return tuple(out)


def _in_scope(repo: PolicyRepository, scope: Scope, sensor_id: str, labels: Mapping[str, str]) -> bool:
    return scope.includes(sensor_id, labels, repo.group)


def _effective(side: Revision, sensor_id: str, labels: Mapping[str, str]) -> Mapping[str, PolicyLike]:
    return effective(side.rendered, lambda scope: _in_scope(side.repository, scope, sensor_id, labels))


def stage_of(repo: PolicyRepository, sensor_id: str, labels: Mapping[str, str]) -> str | None:
    """The first stage of the repository's rollout that holds the sensor (None: no staging, or none does)."""
    return stage_holding(repo.rollouts[0].stages, sensor_id, labels, repo.group) if repo.rollouts else None

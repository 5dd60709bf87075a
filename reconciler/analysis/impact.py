"""What enforcing a unit would have done, from the observations agents reported. Pure.

Agents report, per heartbeat interval, how many events each policy matched, by
binary (reconciler/state/fleet.py). An event "would have been acted on" when the
selector that matched carries an enforcing action (Sigkill, Signal, Override,
NotifyEnforcer): once the unit is `enforced`, that process is killed or that
call denied. Newer agents say which action matched; for older reports the
action is inferred from the policy when all of its selectors agree, and counted
as *unknown* otherwise — never silently as harmless.

No observations is reported as such, with the reminder that it does not mean
enforcing is safe: the policy may match nothing that was exercised, agents may
not report, or the period may be too short.
"""
from __future__ import annotations

import collections
import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.repository.model import UnitKey
from reconciler.state.fleet import ObservationRow

__all__ = ["ENFORCING_ACTIONS", "NO_DATA", "BinaryCount", "Effect", "Impact", "PolicyEffect", "SensorCount",
           "policy_effect", "preview", "row_effect", "text"]

#: Tetragon's action names (selector `matchActions[].action` and events' `action`) that enforce.
ENFORCING_ACTIONS = frozenset({"sigkill", "signal", "override", "notifyenforcer"})
NO_DATA = ("no observations: this does not mean enforcing is safe — the policy may match nothing that ran "
           "in the period, the agents in scope may not report observations, or the period may be too short")
_HOOK_SECTIONS = ("kprobes", "tracepoints", "uprobes", "lsmhooks", "usdts")


class PolicyEffect(StrEnum):
    """What a policy's selectors do when they match."""

    ACTS = "acts"  # every selector (or the only one) carries an enforcing action
    REPORTS = "reports"  # no selector enforces: events only
    MIXED = "mixed"  # some selectors enforce, some only report


class Effect(StrEnum):
    """One observation, had the unit been enforced."""

    WOULD_ACT = "would-act"
    REPORT_ONLY = "report-only"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SensorCount:
    sensor: str
    events: int
    would_act: int
    unknown: int


@dataclass(frozen=True)
class BinaryCount:
    binary: str
    count: int
    sensors: tuple[str, ...]
    workloads: tuple[str, ...]


@dataclass(frozen=True)
class Impact:
    """Observations of a unit's policies over [since, until), had it been enforced."""

    unit: UnitKey
    since: _dt.datetime
    until: _dt.datetime
    policies: tuple[str, ...]
    events: int
    would_act: int
    unknown: int
    per_sensor: tuple[SensorCount, ...]
    top_binaries: tuple[BinaryCount, ...]  # by would-act count, largest first
    unknown_binaries: tuple[BinaryCount, ...]

    @property
    def no_data(self) -> bool:
        return self.events == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": {"kind": self.unit.kind, "name": self.unit.name, "scope": self.unit.scope.to_json()},
            "since": _stamp(self.since), "until": _stamp(self.until), "policies": list(self.policies),
            "events": self.events, "wouldAct": self.would_act, "unknown": self.unknown,
            "noData": self.no_data, "note": NO_DATA if self.no_data else None,
            "perSensor": [{"sensor": s.sensor, "events": s.events, "wouldAct": s.would_act, "unknown": s.unknown}
                          for s in self.per_sensor],
            "topBinaries": [_binary_json(b) for b in self.top_binaries],
            "unknownBinaries": [_binary_json(b) for b in self.unknown_binaries],
        }


def policy_effect(document: Mapping[str, Any]) -> PolicyEffect:
    """ACTS, REPORTS or MIXED, from a TracingPolicy document's selectors."""
    spec = document.get("spec") if isinstance(document.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    seen: set[bool] = set()
    for section in _HOOK_SECTIONS:
        hooks = spec.get(section)
        for hook in hooks if isinstance(hooks, list) else ():
            selectors = hook.get("selectors") if isinstance(hook, Mapping) else None
            if not isinstance(selectors, list) or not selectors:
                seen.add(False)  # no selector: every call is an event
                continue
            for sel in selectors:
                actions = sel.get("matchActions") if isinstance(sel, Mapping) else None
                names = {str(a.get("action", "")).lower() for a in actions or () if isinstance(a, Mapping)}
                seen.add(bool(names & ENFORCING_ACTIONS))
    if seen == {True}:
        return PolicyEffect.ACTS
    return PolicyEffect.MIXED if True in seen else PolicyEffect.REPORTS


def row_effect(row: ObservationRow, effects: Mapping[str, PolicyEffect]) -> Effect:
    """Whether the events of `row` would have been acted on: the reported action when the agent gave one,
    else what the policy's selectors say."""
    if row.action is not None:
        name = row.action.upper().removeprefix("KPROBE_ACTION_").lower()
        return Effect.WOULD_ACT if name in ENFORCING_ACTIONS else Effect.REPORT_ONLY
    effect = effects.get(row.policy)
    if effect is PolicyEffect.ACTS:
        return Effect.WOULD_ACT
    if effect is PolicyEffect.REPORTS:
        return Effect.REPORT_ONLY
    return Effect.UNKNOWN


def preview(unit: UnitKey, effects: Mapping[str, PolicyEffect], rows: Iterable[ObservationRow], *,
            since: _dt.datetime, until: _dt.datetime, sensors: Sequence[str] | None = None,
            top: int = 10) -> Impact:
    """The impact of enforcing `unit` (whose policies and their effects are `effects`) from `rows`.

    Rows of other policies, of sensors outside `sensors` (when given: the unit's scope) or outside
    [since, until) are ignored, so callers may pass a broader query's result.
    """
    wanted = set(sensors) if sensors is not None else None
    events = would = unknown = 0
    per_sensor: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    by_binary: dict[tuple[Effect, str], list[Any]] = {}
    for r in rows:
        if r.policy not in effects or (wanted is not None and r.sensor not in wanted):
            continue
        if r.last < since or r.first >= until:
            continue
        eff = row_effect(r, effects)
        events += r.count
        per_sensor[r.sensor][0] += r.count
        if eff is Effect.REPORT_ONLY:
            continue
        if eff is Effect.WOULD_ACT:
            would += r.count
            per_sensor[r.sensor][1] += r.count
        else:
            unknown += r.count
            per_sensor[r.sensor][2] += r.count
        entry = by_binary.setdefault((eff, r.binary), [0, set(), set()])
        entry[0] += r.count
        entry[1].add(r.sensor)
        if r.workload:
            entry[2].add(r.workload)

    def ranked(effect: Effect) -> tuple[BinaryCount, ...]:
        items = [BinaryCount(b, v[0], tuple(sorted(v[1])), tuple(sorted(v[2])))
                 for (e, b), v in by_binary.items() if e is effect]
        return tuple(sorted(items, key=lambda x: (-x.count, x.binary))[:top])

    return Impact(
        unit=unit, since=since, until=until, policies=tuple(sorted(effects)),
        events=events, would_act=would, unknown=unknown,
        per_sensor=tuple(SensorCount(s, *v) for s, v in sorted(per_sensor.items())),
        top_binaries=ranked(Effect.WOULD_ACT), unknown_binaries=ranked(Effect.UNKNOWN),
    )


def text(impact: Impact) -> str:
    """The human report."""
    u = impact.unit
    lines = [f"{u.kind} {u.name} at {u.scope.key}: {_stamp(impact.since)} .. {_stamp(impact.until)}",
             f"  policies: {', '.join(impact.policies) or '(none)'}"]
    if impact.no_data:
        lines.append(f"  NO DATA — {NO_DATA}")
        return "\n".join(lines)
    lines.append(f"  {impact.events} event(s) observed; {impact.would_act} would have been acted on if enforced"
                 + (f"; {impact.unknown} unknown (the agent did not say which selector matched)"
                    if impact.unknown else ""))
    lines.append("  per sensor:")
    for s in impact.per_sensor:
        lines.append(f"    {s.sensor:<24} {s.events:>8} event(s) {s.would_act:>8} would act"
                     + (f" {s.unknown:>6} unknown" if s.unknown else ""))
    if impact.top_binaries:
        lines.append("  top binaries that would have been acted on:")
        for b in impact.top_binaries:
            where = ", ".join(b.sensors) + (f" (workload {', '.join(b.workloads)})" if b.workloads else "")
            lines.append(f"    {b.count:>8}  {b.binary}  on {where}")
    else:
        lines.append("  nothing observed would have been acted on")
    if impact.unknown_binaries:
        lines.append("  binaries whose outcome is unknown:")
        lines.extend(f"    {b.count:>8}  {b.binary}" for b in impact.unknown_binaries)
    return "\n".join(lines)


def _binary_json(b: BinaryCount) -> dict[str, Any]:
    return {"binary": b.binary, "count": b.count, "sensors": list(b.sensors), "workloads": list(b.workloads)}


def _stamp(t: _dt.datetime) -> str:
    return t.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

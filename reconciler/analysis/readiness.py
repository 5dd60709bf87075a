"""Is a unit ready for its next ladder step at a scope? Pure.

The answer is a class, as a reviewer reads it before signing an advance:

    CandidateForEnforceReady   in observe, nothing blocks the step to enforce_ready
    CandidateForEnforced       in enforce_ready, nothing blocks the step to enforced
    NotReady                   at least one blocking condition
    Enforced                   already at the top of the ladder

with conditions, each `blocking`, `caution` or `ok`:

    ObservationWindow  time in the current state (from git history) vs the repository's minObservation
    Capability         a pack not marked enforcementCapable never leaves observe
    Agents             agents in scope that report it loaded (none: blocking)
    Refused            an agent in scope refused to load it (blocking, with the reasons)
    Drift              unhealed drift on its policies (blocking); elsewhere on those nodes (caution)
    Observations       none since it entered its state (caution: no observations does not mean safe);
                       matches that would have been acted on (caution, with the top binaries)

The window and the approvals are what `palisade validate` enforces on the merge;
everything else is evidence from the fleet that a reviewer should weigh.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.analysis import impact as _impact
from reconciler.repository.model import Group, PolicyRepository, UnitKey, format_duration
from reconciler.state.fleet import AgentRecord, ObservationRow
from wire.heartbeat import LoadStatus, PolicyReport
from wire.values import Scope, State

__all__ = ["Condition", "Readiness", "Report", "Severity", "assess", "in_scope", "text", "unit_policies"]


class Readiness(StrEnum):
    CANDIDATE_FOR_ENFORCE_READY = "CandidateForEnforceReady"
    CANDIDATE_FOR_ENFORCED = "CandidateForEnforced"
    NOT_READY = "NotReady"
    ENFORCED = "Enforced"


class Severity(StrEnum):
    BLOCKING = "blocking"
    CAUTION = "caution"
    OK = "ok"


@dataclass(frozen=True)
class Condition:
    type: str
    severity: Severity
    message: str
    details: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "severity": str(self.severity), "message": self.message,
                "details": list(self.details)}


@dataclass(frozen=True)
class Report:
    unit: UnitKey
    state: State
    next_state: State | None
    readiness: Readiness
    entered: _dt.datetime
    ready_at: _dt.datetime
    agents_in_scope: tuple[str, ...]
    loaded_on: tuple[str, ...]
    conditions: tuple[Condition, ...]

    @property
    def blocking(self) -> tuple[Condition, ...]:
        return tuple(c for c in self.conditions if c.severity is Severity.BLOCKING)

    @property
    def cautions(self) -> tuple[Condition, ...]:
        return tuple(c for c in self.conditions if c.severity is Severity.CAUTION)

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": {"kind": self.unit.kind, "name": self.unit.name, "scope": self.unit.scope.to_json()},
            "state": str(self.state), "nextState": None if self.next_state is None else str(self.next_state),
            "readiness": str(self.readiness), "entered": _stamp(self.entered), "readyAt": _stamp(self.ready_at),
            "agentsInScope": list(self.agents_in_scope), "loadedOn": list(self.loaded_on),
            "conditions": [c.to_json() for c in self.conditions],
        }


def unit_policies(repo: PolicyRepository, unit: UnitKey, today: _dt.date) -> dict[str, Mapping[str, Any]]:
    """The TracingPolicy documents of a unit, by name: a pack's policies, or the policy a rule renders to."""
    from reconciler.repository.render import rule_document  # the renderer pulls in the template library

    if unit.kind == "pack":
        pack = repo.pack(unit.name)
        return {p.name: p.document for p in pack.policies} if pack is not None else {}
    rule = next((r for r in repo.rules if r.name == unit.name), None)
    return {rule.name: rule_document(rule, today)} if rule is not None else {}


def in_scope(scope: Scope, agent: AgentRecord, groups: Sequence[Group]) -> bool:
    """Whether an agent (by id and reported labels) is in `scope`."""
    return scope.includes(agent.id, agent.labels, lambda name: next((g for g in groups if g.name == name), None))


def assess(
    unit: UnitKey,
    state: State,
    *,
    entered: _dt.datetime,
    min_observation: _dt.timedelta,
    now: _dt.datetime,
    policies: Mapping[str, Mapping[str, Any]],
    agents: Sequence[AgentRecord],
    groups: Sequence[Group],
    observations: Sequence[ObservationRow],
    enforcement_capable: bool = True,
) -> Report:
    """The readiness of `unit` (at `state` since `entered`) for its next step, from the fleet's evidence.

    `policies` are the unit's TracingPolicy documents by name; `observations` may be a broader
    query's result (rows of other policies, other sensors or before `entered` are ignored).
    """
    ready_at = entered + min_observation
    next_state = {State.OBSERVE: State.ENFORCE_READY, State.ENFORCE_READY: State.ENFORCED}.get(state)
    scoped = [a for a in agents if in_scope(unit.scope, a, groups)]
    ids = tuple(a.id for a in scoped)
    conditions: list[Condition] = []

    waited = now - entered
    if waited >= min_observation:
        conditions.append(Condition("ObservationWindow", Severity.OK,
                                    f"in {state} for {format_duration(_whole(waited))} since {_stamp(entered)} "
                                    f"(the repository requires {format_duration(min_observation)})"))
    else:
        conditions.append(Condition("ObservationWindow", Severity.BLOCKING,
                                    f"in {state} for only {format_duration(_whole(waited))} since {_stamp(entered)}; "
                                    f"the repository requires {format_duration(min_observation)}: "
                                    f"ready at {_stamp(ready_at)} at the earliest"))
    if unit.kind == "pack" and not enforcement_capable and next_state is not None:
        conditions.append(Condition("Capability", Severity.BLOCKING,
                                    f"pack {unit.name} is not marked enforcementCapable: it stays in observe"))

    loaded, refused, inactive, silent = _load_states(unit, policies, scoped)
    conditions.append(_agents_condition(unit, ids, len(agents), loaded, inactive, silent))
    if refused:
        conditions.append(Condition("Refused", Severity.BLOCKING,
                                    f"{len({s for s, _, _ in refused})} agent(s) in scope refused to load it",
                                    tuple(f"{s}: {p}: {why}" for s, p, why in refused)))
    else:
        conditions.append(Condition("Refused", Severity.OK, "no agent in scope refused it"))
    conditions.append(_drift_condition(policies, scoped))
    conditions.extend(_observation_conditions(unit, state, entered, now, policies, ids, observations))

    if next_state is None:
        readiness = Readiness.ENFORCED
    elif any(c.severity is Severity.BLOCKING for c in conditions):
        readiness = Readiness.NOT_READY
    elif next_state is State.ENFORCE_READY:
        readiness = Readiness.CANDIDATE_FOR_ENFORCE_READY
    else:
        readiness = Readiness.CANDIDATE_FOR_ENFORCED
    return Report(unit, state, next_state, readiness, entered, ready_at, ids, tuple(loaded), tuple(conditions))


def _load_states(unit: UnitKey, policies: Mapping[str, Mapping[str, Any]], scoped: Sequence[AgentRecord]
                 ) -> tuple[list[str], list[tuple[str, str, str]], list[str], list[str]]:
    """Agents with the unit loaded; refusals (sensor, policy, reason); agents where it is inactive; agents
    that do not report it at all."""
    loaded: list[str] = []
    refused: list[tuple[str, str, str]] = []
    inactive: list[str] = []
    silent: list[str] = []
    for a in scoped:
        mine = [p for p in a.policies if _belongs(p, unit, policies)]
        statuses = {p.status for p in mine}
        for p in mine:
            if p.refused:
                refused.append((a.id, p.name, p.reason or "no reason given"))
        if LoadStatus.LOADED in statuses:
            loaded.append(a.id)
        elif statuses == {LoadStatus.INACTIVE}:
            inactive.append(a.id)
        elif not mine:
            silent.append(a.id)
    return loaded, refused, inactive, silent


def _belongs(p: PolicyReport, unit: UnitKey, policies: Mapping[str, Mapping[str, Any]]) -> bool:
    if p.origin is not None:
        return p.origin.kind == unit.kind and p.origin.name == unit.name and p.name in policies
    return p.name in policies


def _agents_condition(unit: UnitKey, ids: tuple[str, ...], fleet_size: int, loaded: list[str],
                      inactive: list[str], silent: list[str]) -> Condition:
    if not ids:
        return Condition("Agents", Severity.BLOCKING,
                         f"no agent in scope {unit.scope.key} has reported (the fleet view has {fleet_size} agent(s))")
    if not loaded:
        details = tuple(f"{s}: inactive (no workload on the node matches)" for s in inactive) + \
            tuple(f"{s}: does not report it (an older bundle, or not yet applied)" for s in silent)
        return Condition("Agents", Severity.BLOCKING,
                         f"none of the {len(ids)} agent(s) in scope has loaded it", details)
    rest = [*(f"{s}: inactive (no workload on the node matches)" for s in inactive),
            *(f"{s}: does not report it (an older bundle, or not yet applied)" for s in silent)]
    msg = f"loaded on {len(loaded)} of {len(ids)} agent(s) in scope: {', '.join(loaded)}"
    return Condition("Agents", Severity.CAUTION if silent else Severity.OK, msg, tuple(rest))


def _drift_condition(policies: Mapping[str, Mapping[str, Any]], scoped: Sequence[AgentRecord]) -> Condition:
    mine: list[str] = []
    other: list[str] = []
    for a in scoped:
        findings = a.drift.findings
        for f in findings:
            line = f"{a.id}: {f.kind} {f.policy}: {f.detail}".rstrip(": ")
            (mine if f.policy in policies else other).append(line)
        if a.drift.unhealed and not findings:
            other.append(f"{a.id}: {a.drift.unhealed} unhealed drift finding(s)")
    if mine:
        return Condition("Drift", Severity.BLOCKING, f"unhealed drift on its policies on "
                         f"{len({m.split(':')[0] for m in mine})} agent(s)", tuple(mine + other))
    if other:
        return Condition("Drift", Severity.CAUTION, "unhealed drift on other policies of agents in scope",
                         tuple(other))
    return Condition("Drift", Severity.OK, "no unhealed drift on agents in scope")


def _observation_conditions(unit: UnitKey, state: State, entered: _dt.datetime, now: _dt.datetime,
                            policies: Mapping[str, Mapping[str, Any]], ids: tuple[str, ...],
                            observations: Sequence[ObservationRow]) -> list[Condition]:
    effects = {name: _impact.policy_effect(doc) for name, doc in policies.items()}
    imp = _impact.preview(unit, effects, observations, since=entered, until=now + _dt.timedelta(seconds=1),
                          sensors=ids)
    if imp.no_data:
        return [Condition("Observations", Severity.CAUTION,
                          f"no observations of its policies from agents in scope since it entered {state} "
                          f"({_stamp(entered)}): no observations does not mean safe",
                          (_impact.NO_DATA,))]
    out = [Condition("Observations", Severity.OK,
                     f"{imp.events} event(s) observed from {len(imp.per_sensor)} agent(s) since {_stamp(entered)}")]
    if imp.would_act or imp.unknown:
        top = tuple(f"{b.count} x {b.binary} on {', '.join(b.sensors)}" for b in imp.top_binaries)
        unknown = f"; {imp.unknown} more of unknown outcome" if imp.unknown else ""
        out.append(Condition("WouldAct", Severity.CAUTION,
                             f"{imp.would_act} event(s) would have been acted on if enforced{unknown}; "
                             f"check them with `palisade impact`", top))
    else:
        out.append(Condition("WouldAct", Severity.OK, "nothing observed would have been acted on"))
    return out


def text(report: Report) -> str:
    """The human report: the class first, blocking conditions, then cautions, then the rest."""
    u = report.unit
    step = f" -> {report.next_state}" if report.next_state is not None else ""
    lines = [f"{u.kind} {u.name} at {u.scope.key}: {report.state}{step}: {report.readiness}"]
    marks = {Severity.BLOCKING: "BLOCKING", Severity.CAUTION: "caution ", Severity.OK: "ok      "}
    order = {Severity.BLOCKING: 0, Severity.CAUTION: 1, Severity.OK: 2}
    for c in sorted(report.conditions, key=lambda c: order[c.severity]):
        lines.append(f"  {marks[c.severity]} {c.type}: {c.message}")
        lines.extend(f"             {d}" for d in c.details)
    return "\n".join(lines)


def _whole(d: _dt.timedelta) -> _dt.timedelta:
    return _dt.timedelta(seconds=max(0, int(d.total_seconds())) // 60 * 60) if d >= _dt.timedelta(minutes=1) \
        else _dt.timedelta(seconds=max(0, int(d.total_seconds())))


def _stamp(t: _dt.datetime) -> str:
    return t.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

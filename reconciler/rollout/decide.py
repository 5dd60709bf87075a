"""Progressive rollout, the decisions (DESIGN.md §4). Pure: no clock, no disk, no network.

A rollout carries one bundle version (the *target*) through the stages of its
staging plan, in order. The index pins a version per stage; every stage that
does not run the target runs the *stable* version, the last one that completed
a rollout. The stage that received the target last is the *current* stage:

- it is **promoted** (the next stage is pinned to the target) when the share of
  its agents that report is at least `minReportingRatio`, every reporting agent
  runs the target, its bake time has passed since it was pinned, and the gates
  hold; promoting the last stage completes the rollout (the target becomes stable);
- it **holds** while any of that is not yet true, and says why;
- a failed gate on any stage running the target **halts** the rollout: every stage
  running the target (the failing one and the ones before it) is pinned back to
  stable. Missing reports never halt; they only hold (an agent that cannot report
  cannot be judged, as in Flagger, where the analysis waits for metrics).

A new bundle during a rollout starts again at the first stage. A change that only
relaxes enforcement goes to every stage at once when the plan allows fast-track.
The very first version has nothing to protect and nowhere to roll back to, so it
goes everywhere at once.

The "default" pin (sensors no stage holds) follows the last stage.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from wire.bundle import DEFAULT_STAGE, Bundle, BundleStage, Staging, format_time

__all__ = [
    "Action",
    "AgentReport",
    "Decision",
    "GateValue",
    "Progress",
    "StageView",
    "evaluate",
    "operate",
    "start",
]


class Action(StrEnum):
    IDLE = "idle"  # nothing is being rolled out
    HOLD = "hold"
    PROMOTE = "promote"
    DONE = "done"  # the last stage was promoted: the target is stable
    HALT = "halt"


@dataclass(frozen=True)
class AgentReport:
    """What the fleet knows of one agent, as far as the rollout cares.

    `errors` and `enforcement_actions` count what happened since the agent began
    running `version`; `refused` and `unhealed_drift` are the agent's current state.
    """

    sensor: str
    labels: tuple[tuple[str, str], ...] = ()
    version: int | None = None
    last_seen: _dt.datetime | None = None
    errors: int = 0
    refused: int = 0
    unhealed_drift: int = 0
    enforcement_actions: int = 0


@dataclass(frozen=True)
class Progress:
    """The rollout state the controller persists between ticks."""

    target: int | None = None  # the version being rolled out (or the last one that was)
    stable: int | None = None  # the last version that completed a rollout
    stage: int = -1  # index of the stage that received the target last; -1: none
    since: _dt.datetime | None = None  # when that stage was pinned to the target
    started: _dt.datetime | None = None  # when the rollout of the target began
    paused: bool = False
    halted: str | None = None  # why the rollout halted (the target is no longer rolled out)
    aborted: str | None = None  # why an operator aborted it
    fast_tracked: bool = False

    @property
    def active(self) -> bool:
        """A target is being rolled out (possibly paused)."""
        return self.target is not None and self.target != self.stable and not self.halted and not self.aborted

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "stable": self.stable,
            "stage": self.stage,
            "since": format_time(self.since) if self.since else None,
            "started": format_time(self.started) if self.started else None,
            "paused": self.paused,
            "halted": self.halted,
            "aborted": self.aborted,
            "fastTracked": self.fast_tracked,
        }


@dataclass(frozen=True)
class GateValue:
    """One gate of one stage: the measured value against its limit."""

    name: str  # the staging file's key, e.g. "maxEnforcementActionsPerNode"
    value: float
    limit: float
    ok: bool
    detail: str = ""  # e.g. which agent is over the limit

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.name, "value": self.value, "limit": self.limit, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class StageView:
    """What `rollout status` shows for one stage."""

    name: str
    pinned: int | None
    agents: int  # known agents of the stage
    reporting: int
    at_pinned: int  # reporting agents that run the pinned version
    gates: tuple[GateValue, ...] = ()
    bake_left: float | None = None  # seconds; None: the stage is not baking
    state: str = ""  # "stable", "baking", "promoted", "waiting", "halted"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pinned": self.pinned,
            "agents": self.agents,
            "reporting": self.reporting,
            "atPinned": self.at_pinned,
            "gates": [g.to_json() for g in self.gates],
            "bakeLeftSeconds": None if self.bake_left is None else round(self.bake_left),
            "state": self.state,
        }


@dataclass(frozen=True)
class Decision:
    """What to do now: the pins to write (empty: none), the new progress, and why."""

    action: Action
    progress: Progress
    pins: Mapping[str, int] = field(default_factory=dict)
    stage: str | None = None  # the stage promoted, halted or held
    reason: str = ""
    gate: str | None = None  # the failing gate of a halt
    stages: tuple[StageView, ...] = ()


# ---------------------------------------------------------------------------
# Starting a rollout


def start(plan: Staging | None, progress: Progress, pins: Mapping[str, int], version: int, *,
          relaxing: bool, now: _dt.datetime) -> tuple[Progress, dict[str, int]]:
    """The progress and the index pins for a newly published `version`.

    `pins` are the current ones (empty before the first publish); `relaxing`
    says whether the change only relaxes enforcement compared with every version
    a stage runs now. A rollout in progress is abandoned: its stages go back to
    stable, and the new version starts at the first stage.
    """
    stable = progress.stable
    if stable is None and pins:
        # No completed rollout on record (state from before the controller): the last stage is the reference.
        stable = _last_pin(plan, pins)
    if plan is None or not plan.stages:
        return (Progress(target=version, stable=version, started=now, since=now),
                {DEFAULT_STAGE: version})
    names = [s.name for s in plan.stages]
    everywhere = stable is None or (plan.fast_track and relaxing)
    if everywhere:
        new = Progress(target=version, stable=version, stage=len(names) - 1, since=now, started=now,
                       fast_tracked=stable is not None)
        return new, {**dict.fromkeys(names, version), DEFAULT_STAGE: version}
    assert stable is not None
    out = {**dict.fromkeys(names, stable), DEFAULT_STAGE: stable}
    out[names[0]] = version
    if len(names) == 1:
        out[DEFAULT_STAGE] = version
    new = Progress(target=version, stable=stable, stage=0, since=now, started=now)
    return new, out


def _last_pin(plan: Staging | None, pins: Mapping[str, int]) -> int:
    if plan is not None and plan.stages and plan.stages[-1].name in pins:
        return pins[plan.stages[-1].name]
    if DEFAULT_STAGE in pins:
        return pins[DEFAULT_STAGE]
    return min(pins.values())


# ---------------------------------------------------------------------------
# Operator actions


def operate(progress: Progress, plan: Staging | None, pins: Mapping[str, int], verb: str, reason: str, *,
            now: _dt.datetime) -> tuple[Progress, dict[str, int], str]:
    """Apply pause, resume or abort: the new progress, the pins to write (empty: none), and what happened.

    Resuming a halted or aborted rollout retries it from the first stage (Argo
    Rollouts' retry); resuming a paused one continues where it was.
    """
    if verb == "pause":
        if not progress.active:
            raise ValueError("no rollout is in progress")
        if progress.paused:
            return progress, {}, "already paused"
        return replace(progress, paused=True), {}, f"paused at stage {_stage_name(plan, progress.stage)}"
    if verb == "resume":
        if progress.target is None or progress.target == progress.stable:
            raise ValueError("no rollout to resume")
        if progress.halted or progress.aborted:
            assert progress.stable is not None and progress.target is not None
            new, out = start(plan, replace(progress, halted=None, aborted=None), pins, progress.target,
                             relaxing=False, now=now)
            return replace(new, started=progress.started or now), out, \
                f"retrying v{progress.target} from the first stage"
        if not progress.paused:
            return progress, {}, "not paused"
        return replace(progress, paused=False), {}, "resumed"
    if verb == "abort":
        if not progress.active:
            raise ValueError("no rollout is in progress")
        return replace(progress, aborted=reason, paused=False), _rolled_back(plan, pins, progress), \
            f"aborted; stages running v{progress.target} go back to v{progress.stable}"
    raise ValueError(f"unknown rollout operation {verb!r}")


def _stage_name(plan: Staging | None, k: int) -> str:
    if plan is None or not 0 <= k < len(plan.stages):
        return "-"
    return plan.stages[k].name


def _rolled_back(plan: Staging | None, pins: Mapping[str, int], progress: Progress) -> dict[str, int]:
    """Every pin on the target, back to stable."""
    assert progress.stable is not None
    out = {k: (progress.stable if v == progress.target else v) for k, v in pins.items()}
    if plan is not None:
        for s in plan.stages:
            out.setdefault(s.name, progress.stable)
    out.setdefault(DEFAULT_STAGE, progress.stable)
    return out


# ---------------------------------------------------------------------------
# The tick


def evaluate(target: Bundle | None, progress: Progress, pins: Mapping[str, int], agents: Sequence[AgentReport], *,
             now: _dt.datetime, stale_after: _dt.timedelta) -> Decision:
    """The next step of the rollout of `target` (the bundle of `progress.target`; its plan and groups decide
    which agents belong to which stage). Agents not seen within `stale_after` are not reporting."""
    plan = target.staging if target is not None else None
    if plan is None or target is None or not plan.stages:
        return Decision(Action.IDLE, progress, reason="no staging plan")
    members = _members(target, agents)
    views = [_view(s, pins.get(s.name), members.get(s.name, []), progress, i, now, stale_after)
             for i, s in enumerate(plan.stages)]
    if not progress.active:
        reason = _idle_reason(progress)
        return Decision(Action.IDLE, progress, reason=reason, stages=tuple(views))

    # A failed gate anywhere the target runs halts the rollout, even while paused.
    for i, s in enumerate(plan.stages[: progress.stage + 1]):
        failed = next((g for g in views[i].gates if not g.ok and g.name != "minReportingRatio"), None)
        if failed is not None:
            reason = f"stage {s.name}: {_gate_text(failed)}"
            new = replace(progress, halted=reason, paused=False)
            out = _rolled_back(plan, pins, progress)
            return Decision(Action.HALT, new, out, s.name, reason, failed.name,
                            tuple(_mark(v, "halted" if v.name == s.name else v.state) for v in views))

    k = progress.stage
    cur = plan.stages[k]
    view = views[k]
    if progress.paused:
        return Decision(Action.HOLD, progress, stage=cur.name, reason="paused by an operator", stages=tuple(views))
    why = _hold_reason(cur, view, progress, now)
    if why:
        return Decision(Action.HOLD, progress, stage=cur.name, reason=why, stages=tuple(views))
    assert progress.target is not None
    if k + 1 < len(plan.stages):
        nxt = plan.stages[k + 1]
        out = dict(pins)
        out[nxt.name] = progress.target
        if k + 2 == len(plan.stages):
            out[DEFAULT_STAGE] = progress.target
        new = replace(progress, stage=k + 1, since=now)
        return Decision(Action.PROMOTE, new, out, nxt.name,
                        f"stage {cur.name} baked {_span(cur.bake_seconds)} with gates holding; "
                        f"promoting v{progress.target} to {nxt.name}", stages=tuple(views))
    new = replace(progress, stable=progress.target)
    out = {**dict(pins), DEFAULT_STAGE: progress.target}
    return Decision(Action.DONE, new, out, cur.name,
                    f"stage {cur.name} baked with gates holding; v{progress.target} completed the rollout",
                    stages=tuple(views))


def _idle_reason(p: Progress) -> str:
    if p.halted:
        return f"halted: {p.halted}"
    if p.aborted:
        return f"aborted: {p.aborted}"
    if p.stable is not None:
        return f"v{p.stable} runs on every stage"
    return "nothing published yet"


def _members(target: Bundle, agents: Sequence[AgentReport]) -> dict[str, list[AgentReport]]:
    out: dict[str, list[AgentReport]] = {}
    for a in agents:
        stage = target.stage_for(a.sensor, dict(a.labels))
        if stage is not None:
            out.setdefault(stage, []).append(a)
    return out


def _view(stage: BundleStage, pinned: int | None, agents: list[AgentReport], progress: Progress, i: int,
          now: _dt.datetime, stale_after: _dt.timedelta) -> StageView:
    reporting = [a for a in agents if a.last_seen is not None and now - a.last_seen <= stale_after]
    at = [a for a in reporting if pinned is not None and a.version == pinned]
    running_target = progress.active and i <= progress.stage
    gates = _gates(stage, agents, reporting, at) if running_target else ()
    bake_left = None
    if running_target and i == progress.stage and progress.since is not None:
        bake_left = max(0.0, stage.bake_seconds - (now - progress.since).total_seconds())
    if not progress.active:
        state = "stable" if pinned == progress.stable else "waiting"
    elif i < progress.stage:
        state = "promoted"
    elif i == progress.stage:
        state = "baking"
    else:
        state = "waiting"
    return StageView(stage.name, pinned, len(agents), len(reporting), len(at), gates, bake_left, state)


def _gates(stage: BundleStage, agents: list[AgentReport], reporting: list[AgentReport],
           at: list[AgentReport]) -> tuple[GateValue, ...]:
    g = stage.gates
    out: list[GateValue] = []
    if g.min_reporting_ratio is not None:
        ratio = len(reporting) / len(agents) if agents else 1.0
        silent = sorted(a.sensor for a in agents if a not in reporting)
        detail = f"{len(reporting)} of {len(agents)} agents reporting"
        if silent:
            detail += f"; not reporting: {', '.join(silent[:5])}{' …' if len(silent) > 5 else ''}"
        out.append(GateValue("minReportingRatio", round(ratio, 4), g.min_reporting_ratio,
                             ratio >= g.min_reporting_ratio, detail))
    # Health is judged on the agents that run the version under test: an agent still on the old one says
    # nothing about the new one (it holds promotion through the "all agents run it" rule instead).
    if g.max_agent_errors is not None:
        bad = sorted(a.sensor for a in at if a.errors > 0)
        out.append(GateValue("maxAgentErrors", len(bad), g.max_agent_errors, len(bad) <= g.max_agent_errors,
                             f"agents with errors: {', '.join(bad)}" if bad else ""))
    if g.max_policies_refused is not None:
        n = sum(a.refused for a in at)
        who = sorted(a.sensor for a in at if a.refused)
        out.append(GateValue("maxPoliciesRefused", n, g.max_policies_refused, n <= g.max_policies_refused,
                             f"refused on {', '.join(who)}" if who else ""))
    if g.max_unhealed_drift is not None:
        n = sum(a.unhealed_drift for a in at)
        who = sorted(a.sensor for a in at if a.unhealed_drift)
        out.append(GateValue("maxUnhealedDrift", n, g.max_unhealed_drift, n <= g.max_unhealed_drift,
                             f"unhealed drift on {', '.join(who)}" if who else ""))
    if g.max_enforcement_actions_per_node is not None:
        worst = max(at, key=lambda a: (a.enforcement_actions, a.sensor), default=None)
        n = worst.enforcement_actions if worst else 0
        out.append(GateValue("maxEnforcementActionsPerNode", n, g.max_enforcement_actions_per_node,
                             n <= g.max_enforcement_actions_per_node,
                             f"{worst.sensor}: {n} enforcement actions" if worst and n else ""))
    return tuple(out)


_GATE_WORDS = {
    "maxAgentErrors": "agents with errors",
    "maxPoliciesRefused": "policies refused",
    "maxUnhealedDrift": "unhealed drift",
    "maxEnforcementActionsPerNode": "enforcement actions per node",
    "minReportingRatio": "reporting share",
}


def _gate_text(g: GateValue) -> str:
    words = _GATE_WORDS.get(g.name, g.name)
    op = "<" if g.name.startswith("min") else ">"
    value = f"{g.value:.2f}" if g.name.startswith("min") else f"{g.value:g}"
    limit = f"{g.limit:.2f}" if g.name.startswith("min") else f"{g.limit:g}"
    text = f"{words} {value} {op} {limit} ({g.name})"
    return f"{text}: {g.detail}" if g.detail else text


def _hold_reason(stage: BundleStage, view: StageView, progress: Progress, now: _dt.datetime) -> str:
    reasons = []
    ratio = next((g for g in view.gates if g.name == "minReportingRatio"), None)
    if ratio is not None and not ratio.ok:
        reasons.append(_gate_text(ratio))
    if view.at_pinned < view.reporting:
        reasons.append(f"{view.at_pinned} of {view.reporting} reporting agents run v{progress.target}")
    if view.bake_left:
        reasons.append(f"baking, {_span(view.bake_left)} left")
    return "; ".join(reasons)


def _mark(v: StageView, state: str) -> StageView:
    return replace(v, state=state)


def _span(secs: float) -> str:
    s = int(secs + 0.999)  # round up: "0s left" while still baking would be a lie
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{(s + 59) // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"

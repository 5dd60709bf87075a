"""Heartbeats turned into the reports the rollout decisions read (`AgentReport`): counters measured from the
start of each sensor's bake.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from reconciler.rollout.db import SensorVersion
from reconciler.rollout.decide import AgentReport

if TYPE_CHECKING:
    from reconciler.state.fleet import AgentRecord


def actions_of(counters: Mapping[str, Any]) -> int:
    # The false-positive alarm counts what was done and what would have been done (enforce_ready dry runs).
    return int(counters.get("enforced", 0) or 0) + int(counters.get("wouldHaveEnforced", 0) or 0)


def errors_of(counters: Mapping[str, Any]) -> int:
    return int(counters.get("errors", 0) or 0) + int(counters.get("refusals", 0) or 0)


def report_of(agent: AgentRecord, interval: SensorVersion | None) -> AgentReport:
    actions, errors = actions_of(agent.counters), errors_of(agent.counters)
    if interval is not None and interval.version == agent.version:
        actions = actions - interval.base_actions if actions >= interval.base_actions else actions
        errors = errors - interval.base_errors if errors >= interval.base_errors else errors
    refused = sum(1 for p in agent.policies if p.get("status") == "refused")
    drift = agent.drift.get("unhealed", 0) if isinstance(agent.drift, Mapping) else 0
    return AgentReport(agent.id, tuple(sorted(agent.labels.items())), agent.version, agent.last_seen,
                       errors=max(errors, 0), refused=refused,
                       unhealed_drift=drift if isinstance(drift, int) else 0, enforcement_actions=max(actions, 0))

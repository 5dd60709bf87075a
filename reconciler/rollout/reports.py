"""Heartbeats turned into the reports the rollout decisions read (`AgentReport`): counters measured from the
start of each sensor's bake.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.rollout.db import SensorVersion
from reconciler.rollout.decide import AgentReport
from wire.heartbeat import Counters

if TYPE_CHECKING:
    from reconciler.state.fleet import AgentRecord


def actions_of(counters: Counters) -> int:
    # The false-positive alarm counts what was done and what would have been done (enforce_ready dry runs).
    return counters.actions


def errors_of(counters: Counters) -> int:
    return counters.errors


def report_of(agent: AgentRecord, interval: SensorVersion | None) -> AgentReport:
    actions, errors = actions_of(agent.counters), errors_of(agent.counters)
    if interval is not None and interval.version == agent.version:
        actions = actions - interval.base_actions if actions >= interval.base_actions else actions
        errors = errors - interval.base_errors if errors >= interval.base_errors else errors
    return AgentReport(agent.id, tuple(sorted(agent.labels.items())), agent.version, agent.last_seen,
                       errors=max(errors, 0), refused=agent.refused, unhealed_drift=agent.drift.unhealed,
                       enforcement_actions=max(actions, 0))

"""The heartbeat: what this node reports to the reconciler every interval.

`build()` is pure and gives the typed `wire.heartbeat.Heartbeat` (`document()` its JSON): the
sensor's identity, the bundle version it enforces and its stage, every selected policy with
its status (loaded / refused with the reason / inactive) and mode, drift, cumulative counters, and the observations of
the last interval — per policy and binary, how many events matched — which the
reconciler sums for impact previews ("what would enforcing this have killed?").
"""
from __future__ import annotations

import collections
import datetime as _dt
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from bpf.events import POLICY_EVENT_KINDS
from wire.bundle import Origin
from wire.heartbeat import (
    Counters,
    Drift,
    DriftFinding,
    DriftKind,
    Health,
    HealthState,
    Heartbeat,
    LoadStatus,
    Observation,
    PolicyReport,
    Problem,
    ProblemKind,
    encode,
    encode_observation,
)
from wire.strict import parse_time
from wire.values import State

from .config import Workload
from .workloads import WorkloadIndex

__all__ = ["Observations", "build", "document"]


class Observations:
    """Matches per (policy, binary, workload, parent, action, acted) since the last heartbeat.

    The workload is the event's `process.pod.workload` (else the pod name), else the configured
    workload whose cgroup is the event's `palisade.cgroup_id`; the parent is `parent.binary`; a
    member that the event does not carry is left out of the report."""

    def __init__(self, workloads: Sequence[Workload] = ()) -> None:
        self._counts: collections.Counter[tuple[str, str, str | None, str | None, str | None, bool | None]] = \
            collections.Counter()
        self._index = WorkloadIndex(workloads)
        self._lock = threading.Lock()  # added to on the engine thread, drained on the event loop

    def _workload_of(self, cgroup_id: Any) -> str | None:
        w = self._index.of(cgroup_id)
        return w.name if w is not None else None

    def add(self, event: Mapping[str, Any]) -> None:
        for kind in POLICY_EVENT_KINDS:
            body = event.get(kind)
            if isinstance(body, Mapping):
                proc = _member(body, "process")
                pod = _member(proc, "pod")
                workload = pod.get("workload") or pod.get("name") or \
                    self._workload_of(_member(event, "palisade").get("cgroup_id"))
                parent = _member(body, "parent").get("binary")
                action = body.get("action")
                acted = _member(event, "palisade").get("acted")
                if not proc.get("binary"):
                    continue  # an exit whose process is gone: nothing to allow or refuse
                with self._lock:
                    self._counts[(str(body.get("policy_name", "")), str(proc.get("binary", "")),
                                  workload if isinstance(workload, str) else None,
                                  parent if isinstance(parent, str) else None,
                                  action if isinstance(action, str) else None,
                                  acted if isinstance(acted, bool) else None)] += 1

    def take(self) -> tuple[Observation, ...]:
        """The interval's observations, and a fresh interval."""
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
        return tuple(Observation(p, b, c, workload, parent, action, acted)
                     for (p, b, workload, parent, action, acted), c in sorted(counts.items(),
                                                                                key=lambda kv: repr(kv[0])))

    def drain(self) -> list[dict[str, Any]]:
        """`take()` as the heartbeat's JSON members."""
        return [encode_observation(o) for o in self.take()]


def _member(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = d.get(key)
    return v if isinstance(v, Mapping) else {}


def build(status: Mapping[str, Any], *, drift: Mapping[str, Any], counters: Mapping[str, int],
          observations: Sequence[Observation], now: _dt.datetime,
          health: Mapping[str, Any] | None = None) -> Heartbeat:
    """The heartbeat from the agent's status (Agent.status()) and the interval's figures.

    `health` (agent.health.Health.to_json()) says whether the node is degraded and why: a disk it cannot
    write, a transfer that stalls, an expired index; the reconciler's fleet view shows the node degraded."""
    return Heartbeat(
        sensor=status["sensor"],
        labels=dict(status["labels"]),
        version=status["version"],
        stage=status["stage"],
        commit=status["commit"],
        policies=tuple(PolicyReport(p["name"], LoadStatus(p["status"]), State(p["mode"]), p["reason"],
                                    _origin(p["origin"]), p["version"]) for p in status["policies"]),
        drift=Drift(drift["detected"], drift["healed"], drift["unhealed"],
                    tuple(DriftFinding(DriftKind(f["kind"]), f["policy"], f["detail"]) for f in drift["findings"])),
        counters=Counters.of(counters),
        observations=tuple(observations),
        health=None if health is None else Health(HealthState(health["state"]), tuple(
            Problem(ProblemKind(p["kind"]), p["reason"][:64], p["detail"][:2000], parse_time(p["since"]))
            for p in health["problems"][:100])),
        time=now,
    )


def document(status: Mapping[str, Any], *, drift: Mapping[str, Any], counters: Mapping[str, int],
             observations: Sequence[Observation], now: _dt.datetime,
             health: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`build()`'s heartbeat as the JSON sent to the reconciler."""
    return encode(build(status, drift=drift, counters=counters, observations=observations, now=now, health=health))


def _origin(v: Mapping[str, str]) -> Origin:
    return Origin(v["kind"], v["name"])

"""The heartbeat: what this node reports to the reconciler every interval.

`document()` is pure: the sensor's identity, the bundle version it enforces and
its stage, every selected policy with its status (loaded / refused with the
reason / inactive) and mode, drift, cumulative counters, and the observations of
the last interval — per policy and binary, how many events matched — which the
reconciler sums for impact previews ("what would enforcing this have killed?").
"""
from __future__ import annotations

import collections
import datetime as _dt
from collections.abc import Mapping
from typing import Any

__all__ = ["Observations", "document"]


class Observations:
    """Matches per (policy, binary) since the last heartbeat."""

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, event: Mapping[str, Any]) -> None:
        for kind in ("process_tracepoint", "process_kprobe"):
            body = event.get(kind)
            if isinstance(body, Mapping):
                proc = body.get("process") if isinstance(body.get("process"), Mapping) else {}
                assert isinstance(proc, Mapping)
                self._counts[(str(body.get("policy_name", "")), str(proc.get("binary", "")))] += 1

    def drain(self) -> list[dict[str, Any]]:
        out = [{"policy": p, "binary": b, "count": c} for (p, b), c in sorted(self._counts.items())]
        self._counts.clear()
        return out


def document(status: Mapping[str, Any], *, drift: Mapping[str, Any], counters: Mapping[str, int],
             observations: list[dict[str, Any]], now: _dt.datetime) -> dict[str, Any]:
    """The heartbeat body from the agent's status (Agent.status()) and the interval's figures."""
    return {
        "sensor": status["sensor"],
        "labels": dict(status["labels"]),
        "version": status["version"],
        "stage": status["stage"],
        "commit": status["commit"],
        "policies": [{"name": p["name"], "status": p["status"], "mode": p["mode"], "reason": p["reason"],
                      "origin": p["origin"], "version": p["version"]} for p in status["policies"]],
        "drift": dict(drift),
        "counters": dict(counters),
        "observations": observations,
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }

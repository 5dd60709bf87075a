"""What keeps this node from being fully up to date right now, and the last thing it refused.

A *problem* is a condition that holds until something clears it: the state
directory cannot be written (`disk`), a transfer to the server keeps failing
or stalling past its deadline (`transfer`), the index the agent holds has
expired on the clock (`index_expired`). While any problem holds the agent is
`degraded`: it keeps enforcing what it verified last, and says so in
`palisade-agent status`, the metrics and the heartbeat.

Pure bookkeeping with a lock (problems are raised from the engine thread and
the event loop alike); the callers log, count and write.
"""
from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass, replace
from typing import Any

from wire.heartbeat import ProblemKind  # the heartbeat carries the problems: the kinds are the wire's

__all__ = ["Health", "Problem", "ProblemKind", "Refusal"]

_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Problem:
    key: str  # unique per condition, e.g. "transfer:index", "disk:state"
    kind: ProblemKind
    reason: str  # a short label: ENOSPC, stalled, unreachable, expired, ...
    detail: str
    since: _dt.datetime
    last: _dt.datetime
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "key": self.key, "reason": self.reason, "detail": self.detail,
                "since": self.since.strftime(_TIME), "last": self.last.strftime(_TIME), "count": self.count}


@dataclass(frozen=True)
class Refusal:
    what: str  # index | bundle | lkg
    reason: str
    detail: str
    time: _dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "reason": self.reason, "detail": self.detail, "time": self.time.strftime(_TIME)}


class Health:
    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}
        self.last_refusal: Refusal | None = None
        self._lock = threading.Lock()

    def report(self, key: str, kind: ProblemKind, reason: str, detail: str, now: _dt.datetime) -> bool:
        """Raise (or refresh) a problem; True when it is new."""
        with self._lock:
            cur = self._problems.get(key)
            if cur is None:
                self._problems[key] = Problem(key, kind, reason, detail, now, now)
                return True
            self._problems[key] = replace(cur, reason=reason, detail=detail, last=now, count=cur.count + 1)
            return False

    def clear(self, key: str) -> Problem | None:
        """Drop a problem; the one that held, if any."""
        with self._lock:
            return self._problems.pop(key, None)

    def get(self, key: str) -> Problem | None:
        with self._lock:
            return self._problems.get(key)

    def problems(self, kind: ProblemKind | None = None) -> tuple[Problem, ...]:
        with self._lock:
            return tuple(p for _, p in sorted(self._problems.items()) if kind is None or p.kind == kind)

    def refused(self, what: str, reason: str, detail: str, now: _dt.datetime) -> None:
        self.last_refusal = Refusal(what, reason, detail, now)

    @property
    def degraded(self) -> bool:
        with self._lock:
            return bool(self._problems)

    def to_json(self) -> dict[str, Any]:
        return {"state": "degraded" if self.degraded else "ok",
                "problems": [p.to_json() for p in self.problems()],
                "lastRefusal": None if self.last_refusal is None else self.last_refusal.to_json()}

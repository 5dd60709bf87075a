"""The values both sides of the wire read: the enforcement ladder, scopes, and which policy a node runs."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar


class State(StrEnum):
    """The enforcement ladder, in order."""

    OBSERVE = "observe"
    ENFORCE_READY = "enforce_ready"
    ENFORCED = "enforced"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {State.OBSERVE: 0, State.ENFORCE_READY: 1, State.ENFORCED: 2}


@dataclass(frozen=True)
class Scope:
    """`{sensor: ID}`, `{group: NAME}` or `{}` (the whole fleet)."""

    sensor: str | None = None
    group: str | None = None

    def __lt__(self, other: Scope) -> bool:
        return self.key < other.key

    def includes(self, sensor_id: str, labels: Mapping[str, str], group: Callable[[str], Selector | None]) -> bool:
        """Whether a sensor (id and labels) is inside this scope; `group` looks a group up by name
        (from a repository revision or a bundle). An unknown group holds nobody."""
        if self.sensor is not None:
            return self.sensor == sensor_id
        if self.group is not None:
            g = group(self.group)
            return g is not None and g.selects(sensor_id, labels)
        return True

    @property
    def specificity(self) -> int:
        """2 for a sensor, 1 for a group, 0 for the fleet: the most specific scope wins on a node."""
        return 2 if self.sensor is not None else 1 if self.group is not None else 0

    @property
    def key(self) -> str:
        if self.sensor is not None:
            return f"sensor:{self.sensor}"
        if self.group is not None:
            return f"group:{self.group}"
        return "fleet"

    @classmethod
    def parse(cls, text: str) -> Scope:
        """`fleet`, `group:NAME` or `sensor:ID` (the command-line form)."""
        if text in ("fleet", "", "{}"):
            return cls()
        kind, _, value = text.partition(":")
        if kind == "group" and value:
            return cls(group=value)
        if kind == "sensor" and value:
            return cls(sensor=value)
        raise ValueError(f"scope {text!r}: use fleet, group:NAME or sensor:ID")

    def to_json(self) -> dict[str, str]:
        if self.sensor is not None:
            return {"sensor": self.sensor}
        if self.group is not None:
            return {"group": self.group}
        return {}

    def __str__(self) -> str:
        return self.key


class Selector(Protocol):
    """A named set of sensors: a repository's group, or a bundle's."""

    def selects(self, sensor_id: str, labels: Mapping[str, str]) -> bool: ...


class Placed(Protocol):
    """Anything assigned at a scope and state: rendered policies, bundle policies."""

    @property
    def name(self) -> str: ...
    @property
    def scope(self) -> Scope: ...
    @property
    def state(self) -> State: ...


_P = TypeVar("_P", bound=Placed)


def effective(policies: Iterable[_P], includes: Callable[[Scope], bool]) -> dict[str, _P]:
    """The policy that applies on one node, per name: the one rule agents, `plan` and rollouts share.

    Of the assignments whose scope includes the node (`includes`), the most specific
    scope wins (sensor > group > fleet); between scopes equally specific (two groups)
    the least enforcing state wins — a node in a group that observes and in one that
    enforces has not been approved for enforcing by both. Ties break by scope key, so
    the answer never depends on the order of the input.
    """
    chosen: dict[str, _P] = {}
    for p in policies:
        if not includes(p.scope):
            continue
        cur = chosen.get(p.name)
        if cur is None or _wins(p, cur):
            chosen[p.name] = p
    return chosen


def _wins(new: Placed, cur: Placed) -> bool:
    if new.scope.specificity != cur.scope.specificity:
        return new.scope.specificity > cur.scope.specificity
    if new.state.rank != cur.state.rank:
        return new.state.rank < cur.state.rank
    return new.scope.key < cur.scope.key

"""The policy repository as typed values (DESIGN.md §2).

`parse.py` builds these from validated documents; everything after parsing works
on these values only.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Stage membership, gates and group selection are the wire contract's (a bundle carries them): one
# definition for the repository and the agents.
from wire.bundle import BundleGroup
from wire.bundle import BundleStage as Stage
from wire.bundle import StageGates as Gates

# The ladder, scopes and `effective` are part of the wire contract; re-exported for the reconciler's modules.
from wire.values import Placed, Scope, State, effective

__all__ = [
    "Assignment", "Enforcement", "Gates", "Group", "Location", "Pack", "Placed", "PolicyRepository", "PolicySource",
    "RepositoryConfig", "Reviewer", "Rollout", "Rule", "RuleException", "Scope", "Stage", "State", "UnitKey",
    "effective", "format_duration", "parse_duration",
]


@dataclass(frozen=True)
class Location:
    """Where a value was written: repository path and 1-based line/column (0 = unknown)."""

    path: str
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class Reviewer:
    """A person with an SSH key: a reviewer, or a contributor (whose signatures prove authorship only)."""

    name: str
    email: str
    key: str  # an OpenSSH public key line


@dataclass(frozen=True)
class RepositoryConfig:
    name: str
    reviewers: tuple[Reviewer, ...]
    approvals_required: int = 1
    min_observation: _dt.timedelta = _dt.timedelta(hours=72)
    bundle_expiry: _dt.timedelta = _dt.timedelta(hours=24)
    contributors: tuple[Reviewer, ...] = ()

    @property
    def people(self) -> tuple[Reviewer, ...]:
        """Everyone whose signature proves who wrote a commit: reviewers first, then contributors."""
        return self.reviewers + self.contributors


@dataclass(frozen=True)
class Group(BundleGroup):
    """A group of the repository: the bundle's group (who it selects) and what the repository says of it."""

    description: str = ""


@dataclass(frozen=True)
class PolicySource:
    """A TracingPolicy document as written in a pack (or rendered from a rule)."""

    name: str
    kind: str  # TracingPolicy | TracingPolicyNamespaced
    path: str
    index: int
    document: Mapping[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Pack:
    name: str
    path: str  # packs/<name>
    description: str
    owners: tuple[str, ...]
    enforcement_capable: bool
    policies: tuple[PolicySource, ...]


@dataclass(frozen=True)
class RuleException:
    """An exception to a rule: who may do it anyway, why, and until when."""

    reason: str
    binary: str | None = None
    parent_binary: str | None = None
    expires: _dt.date | None = None

    def active(self, today: _dt.date) -> bool:
        return self.expires is None or today <= self.expires


@dataclass(frozen=True)
class Rule:
    name: str
    path: str
    template: str
    scope: Scope
    state: State
    enabled: bool = True
    params: Mapping[str, Any] = field(default_factory=dict, compare=False)
    exceptions: tuple[RuleException, ...] = ()
    policy: Mapping[str, Any] | None = field(default=None, compare=False)  # template: custom
    where: Location = field(default=Location(""), compare=False)  # the `state` node


@dataclass(frozen=True)
class Assignment:
    scope: Scope
    state: State
    where: Location = field(default=Location(""), compare=False)  # the `state` node


@dataclass(frozen=True)
class Enforcement:
    name: str
    path: str
    pack: str
    assignments: tuple[Assignment, ...]


@dataclass(frozen=True)
class Rollout:
    """A staging plan of the repository: its stages are the bundle's (`wire.bundle.BundleStage`)."""

    name: str
    path: str
    stages: tuple[Stage, ...]
    fast_track: bool = False


@dataclass(frozen=True)
class PolicyRepository:
    """Everything a revision of the policy repository says, as typed values."""

    config: RepositoryConfig | None
    groups: tuple[Group, ...] = ()
    packs: tuple[Pack, ...] = ()
    rules: tuple[Rule, ...] = ()
    enforcements: tuple[Enforcement, ...] = ()
    rollouts: tuple[Rollout, ...] = ()

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)

    def pack(self, name: str) -> Pack | None:
        return next((p for p in self.packs if p.name == name), None)

    def units(self) -> dict[UnitKey, State]:
        """Every (unit, scope) on the ladder and its state; disabled rules are off the ladder."""
        out: dict[UnitKey, State] = {}
        for e in self.enforcements:
            for a in e.assignments:
                out[UnitKey("pack", e.pack, a.scope)] = a.state
        for r in self.rules:
            if r.enabled:
                out[UnitKey("rule", r.name, r.scope)] = r.state
        return out


@dataclass(frozen=True, order=True)
class UnitKey:
    """A unit on the ladder: a pack or a rule, at one scope."""

    kind: str  # "pack" | "rule"
    name: str
    scope: Scope

    def __str__(self) -> str:
        return f"{self.kind} {self.name} @ {self.scope.key}"


def format_duration(d: _dt.timedelta) -> str:
    """The short form people write in the repository: `72h`, `30m`, `1h30m`, `0s`."""
    secs = int(d.total_seconds())
    if secs == 0:
        return "0s"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if unit == "d" and secs % 86400:
            continue  # 36h reads better than 1d12h
        n, secs = divmod(secs, size)
        if n:
            out += f"{n}{unit}"
    return out


def parse_duration(text: str) -> _dt.timedelta:
    """`90s`, `30m`, `72h`, `7d`, `1h30m`; ValueError with the reason otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    total, num = 0.0, ""
    for ch in s:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in units and num:
            total += float(num) * units[ch]
            num = ""
        else:
            raise ValueError(f"duration {text!r}: use a number and a unit (s, m, h, d, w), e.g. 72h")
    if num:
        raise ValueError(f"duration {text!r}: the number {num} has no unit (s, m, h, d, w)")
    return _dt.timedelta(seconds=total)

"""Apply a selection through an enforcer: one transaction per policy.

    plan(loaded, desired)  → steps (pure)
    apply(enforcer, steps) → one PolicyStatus per desired policy

- a new policy is loaded;
- a changed policy (other digest) is replaced: the new one is loaded *before*
  the old one is unloaded, so enforcement has no gap; if the new one fails to
  load, the old one stays and the failure is reported;
- a state change alone is a mode switch of the loaded programs;
- a policy no longer selected is unloaded;
- duplicates (two loads of one name, left by an agent killed between the load
  and the unload of a replacement) are reduced to the one wanted.

A policy that fails is reported with its reason; the others still apply.

Two enforcers implement the `Enforcer` protocol: `EngineEnforcer` (agent/engine.py)
over the eBPF engine, and `NullEnforcer` here, which keeps the set in memory and
touches no kernel — for fleet simulations and for tests of everything above the
engine. It still parses every policy, so a policy the engine could not even
read is refused by both.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from bpf.errors import BpfError, PolicyRefusal, RefusalKind
from bpf.policy import TracingPolicy, fill_placeholders
from bpf.policy import parse as parse_policy
from wire.heartbeat import LoadStatus
from wire.values import State

from .objects import Offer
from .select import Desired

if TYPE_CHECKING:
    from .drift import Finding  # which imports Loaded from here

__all__ = [
    "Enforcer",
    "Inactive",
    "Loaded",
    "NullEnforcer",
    "PolicyStatus",
    "Refused",
    "Step",
    "StepKind",
    "apply",
    "invalid",
    "plan",
    "read_policy",
]


#: libyaml's safe loader when PyYAML was built with it (about ten times faster), else the Python one.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Refused(Exception):
    """The enforcer did not load a policy; nothing of it was left behind. `refusal` says why (the engine's
    value, carried as it is to the policy's status)."""

    def __init__(self, refusal: PolicyRefusal) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal


class Inactive(Refused):
    """The policy applies to no workload on this node (e.g. its podSelector matches none): nothing to load."""

    def __init__(self, why: str) -> None:
        super().__init__(PolicyRefusal(RefusalKind.INACTIVE, (why,)))


def invalid(text: str) -> Refused:
    """A policy the engine cannot even read (YAML, schema, placeholders)."""
    return Refused(PolicyRefusal(RefusalKind.INVALID, (text,)))


@dataclass(frozen=True)
class Loaded:
    """One policy load as the enforcer holds it.

    `digest` is the sha256 of the policy text, or a prefix of it (at least 12
    hex digits) where the enforcer can only keep that much.
    """

    handle: str
    name: str
    digest: str
    state: State

    def is_of(self, d: Desired) -> bool:
        return self.name == d.name and d.sha256.startswith(self.digest)


class Enforcer(Protocol):
    #: True when calls may take long (kernel loads): the agent then makes them on a thread of their own.
    blocking: bool
    #: True when the enforcer loads CO-RE objects: the agent then fetches a bundle's objects and offers them.
    wants_objects: bool

    def offer_objects(self, offer: Offer) -> None:
        """A verified bundle's objects (by source digest), handed over before its policies are applied."""

    def loaded(self) -> Sequence[Loaded]:
        """What is in force now, including what a previous agent process left pinned."""

    def load(self, policy: Desired) -> Loaded:
        """Load and attach `policy` in its state; raises Refused(reason) leaving nothing behind."""

    def unload(self, handle: str) -> None: ...

    def set_mode(self, handle: str, state: State) -> Loaded: ...

    def counters(self) -> dict[str, int]:
        """Cumulative events, enforced, wouldHaveEnforced over every loaded policy."""

    def poll_events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Events (Tetragon export shape) since the last call."""

    def drift(self) -> list[Finding]:
        """Damage to the loads seen in the kernel."""

    def repair(self, handle: str) -> Loaded:
        """Replace a damaged load by a fresh copy (the fresh one first); returns the new load."""


class StepKind(enum.StrEnum):
    LOAD = "load"
    REPLACE = "replace"
    MODE = "mode"
    KEEP = "keep"
    UNLOAD = "unload"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    name: str
    desired: Desired | None = None
    handle: str | None = None  # the load kept, or switched (KEEP, MODE)
    remove: tuple[str, ...] = ()  # loads to unload once the step's load is in place


@dataclass(frozen=True)
class PolicyStatus:
    """How one selected policy stands on this node after an apply."""

    name: str
    status: LoadStatus  # crosses the wire in the heartbeat
    state: State  # the mode in force (for a refused replacement: the old one's)
    desired: Desired
    refusal: PolicyRefusal | None = None  # why it is not loaded (refused, inactive); None when loaded
    digest: str | None = None  # what is loaded, None if nothing
    changed: bool = False

    @property
    def reason(self) -> str | None:
        """The refusal's text, as status and heartbeats show it."""
        return None if self.refusal is None else self.refusal.text

    def to_json(self) -> dict[str, object]:
        return {**self.desired.to_json(), "status": str(self.status), "mode": str(self.state),
                "reason": self.reason, "loadedDigest": self.digest}


def plan(loaded: Sequence[Loaded], desired: Sequence[Desired]) -> tuple[Step, ...]:
    """The steps from `loaded` to `desired` (pure). Loads and switches first, unloads last."""
    by_name: dict[str, list[Loaded]] = {}
    for item in loaded:
        by_name.setdefault(item.name, []).append(item)
    steps: list[Step] = []
    wanted = set()
    for d in desired:
        wanted.add(d.name)
        have = by_name.get(d.name, [])
        match = next((x for x in have if x.is_of(d)), None)
        others = tuple(x.handle for x in have if x is not match)
        if match is None:
            steps.append(Step(StepKind.REPLACE if have else StepKind.LOAD, d.name, d, remove=others))
        elif match.state != d.state:
            steps.append(Step(StepKind.MODE, d.name, d, handle=match.handle, remove=others))
        else:
            steps.append(Step(StepKind.KEEP, d.name, d, handle=match.handle, remove=others))
    for name in sorted(by_name.keys() - wanted):
        steps.extend(Step(StepKind.UNLOAD, name, handle=x.handle) for x in by_name[name])
    return tuple(steps)


@dataclass
class ApplyReport:
    policies: list[PolicyStatus] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # unloads that failed

    @property
    def changed(self) -> bool:
        return bool(self.unloaded) or any(p.changed for p in self.policies)


def apply(enforcer: Enforcer, steps: Sequence[Step]) -> ApplyReport:
    report = ApplyReport()
    current = {x.handle: x for x in enforcer.loaded()}
    for step in steps:
        if step.kind is StepKind.UNLOAD:
            assert step.handle is not None
            _unload(enforcer, step.handle, report)
            continue
        d = step.desired
        assert d is not None
        if step.kind in (StepKind.LOAD, StepKind.REPLACE):
            try:
                new = enforcer.load(d)
            except Inactive as e:
                for h in step.remove:
                    _unload(enforcer, h, report)
                report.policies.append(PolicyStatus(d.name, LoadStatus.INACTIVE, d.state, d, e.refusal, None,
                                                    changed=True))
                continue
            except Refused as e:
                old = [current[h] for h in step.remove if h in current]
                # the previous load keeps enforcing: a bad update never opens a gap
                kept = old[0] if old else None
                report.policies.append(PolicyStatus(
                    d.name, LoadStatus.REFUSED, kept.state if kept else d.state, d, e.refusal,
                    kept.digest if kept else None))
                continue
            for h in step.remove:
                _unload(enforcer, h, report)
            report.policies.append(PolicyStatus(d.name, LoadStatus.LOADED, new.state, d, None, new.digest,
                                                changed=True))
            continue
        assert step.handle is not None
        for h in step.remove:
            _unload(enforcer, h, report)
        if step.kind is StepKind.MODE:
            try:
                now = enforcer.set_mode(step.handle, d.state)
            except Exception as e:
                held = current[step.handle]
                why = PolicyRefusal(RefusalKind.MODE_SWITCH, (f"mode switch to {d.state} failed: {e}",))
                report.policies.append(PolicyStatus(d.name, LoadStatus.REFUSED, held.state, d, why, held.digest))
                continue
            report.policies.append(PolicyStatus(d.name, LoadStatus.LOADED, now.state, d, None, now.digest,
                                                changed=True))
        else:
            held = current[step.handle]
            report.policies.append(PolicyStatus(d.name, LoadStatus.LOADED, held.state, d, None, held.digest))
    return report


def _unload(enforcer: Enforcer, handle: str, report: ApplyReport) -> None:
    try:
        enforcer.unload(handle)
        report.unloaded.append(handle)
    except Exception as e:
        report.errors.append(f"unload {handle} failed: {e}")


def read_policy(d: Desired, placeholders: Mapping[str, Sequence[str]] | None = None) -> TracingPolicy:
    """The typed policy of `d`: the one place where a bundle policy's YAML text is read (once per load), its
    `${NAME}` values filled from this node's `placeholders` when given (the engine's; the NullEnforcer gives
    none and leaves them as written). Refused (invalid) if it is not a policy the engine can read."""
    try:
        doc = yaml.load(d.yaml, Loader=SAFE_LOADER)
        return parse_policy(doc if placeholders is None else fill_placeholders(doc, placeholders))
    except yaml.YAMLError as e:
        raise invalid(f"policy {d.name} is not valid YAML: {e}") from None
    except BpfError as e:
        raise invalid(f"policy {d.name}: {e}") from None


class NullEnforcer:
    """The engine switched off: policies are checked and held in memory; nothing reaches a kernel.

    Used by the fleet simulation (a thousand agents in one process) and by tests
    of pulling, verifying, selecting and applying. Never a stand-in for the
    kernel in tests of enforcement.
    """

    blocking = False

    def __init__(self, *, wants_objects: bool = False) -> None:
        self._held: dict[str, Loaded] = {}
        self._seq = 0
        # off by default: a thousand simulated agents need not fetch objects they cannot load
        self.wants_objects = wants_objects
        self.offered: dict[str, bytes] = {}

    def offer_objects(self, offer: Offer) -> None:
        self.offered.update(offer.data)

    def loaded(self) -> Sequence[Loaded]:
        return tuple(self._held.values())

    def load(self, policy: Desired) -> Loaded:
        read_policy(policy)
        self._seq += 1
        item = Loaded(f"{policy.name}#{self._seq}", policy.name, policy.sha256, policy.state)
        self._held[item.handle] = item
        return item

    def unload(self, handle: str) -> None:
        del self._held[handle]

    def set_mode(self, handle: str, state: State) -> Loaded:
        old = self._held[handle]
        new = Loaded(old.handle, old.name, old.digest, state)
        self._held[handle] = new
        return new

    def counters(self) -> dict[str, int]:
        return {"events": 0, "enforced": 0, "wouldHaveEnforced": 0}

    def poll_events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        return []

    def drift(self) -> list[Finding]:
        return []

    def repair(self, handle: str) -> Loaded:
        return self._held[handle]

"""Drift: what the kernel really runs against what the agent applied; reported, counted, healed.

Two sources of findings:
- the enforcer's own check of its loads against the kernel inventory
  (`Enforcer.drift()`): a detached or unloaded program, a changed entry in a
  policy map, a foreign program on a managed cgroup hook;
- `compare()` (pure) of what is loaded with the selection of the pinned
  version: a policy missing, one that should not be there, or one at another
  version (digest) than the pin.

Healing re-applies: a damaged load is replaced by a fresh one (loaded before the
damaged one is removed), then the selection is applied again, which loads what is
missing and unloads what is extra. A foreign program is reported and left alone:
it is not ours to remove, and cgroup hooks run every attached program, so it
cannot switch ours off.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from wire.heartbeat import DriftKind  # the heartbeat carries the findings: the kinds are the wire's

from .apply import Loaded
from .select import Desired

__all__ = ["HEALABLE", "DriftKind", "DriftReport", "Finding", "compare"]

log = logging.getLogger("palisade.agent.drift")


#: Kinds a re-apply or a repair can fix (a foreign program is not ours to remove).
HEALABLE = frozenset(DriftKind) - {DriftKind.FOREIGN}


@dataclass(frozen=True)
class Finding:
    kind: DriftKind
    policy: str
    detail: str
    handle: str | None = None  # the damaged load, for enforcer findings

    def to_json(self) -> dict[str, str | None]:
        return {"kind": str(self.kind), "policy": self.policy, "detail": self.detail}


@dataclass(frozen=True)
class DriftReport:
    found: tuple[Finding, ...]
    healed: tuple[Finding, ...]
    unhealed: tuple[Finding, ...]


def compare(loaded: Sequence[Loaded], desired: Sequence[Desired], refused: frozenset[str] = frozenset()
            ) -> list[Finding]:
    """Differences between the loads and the selection (policies refused by the engine are not drift)."""
    out: list[Finding] = []
    want = {d.name: d for d in desired}
    have: dict[str, list[Loaded]] = {}
    for x in loaded:
        have.setdefault(x.name, []).append(x)
    for name, d in want.items():
        if name in refused:
            continue
        items = have.get(name, [])
        if not items:
            out.append(Finding(DriftKind.MISSING, name, f"{name} v{d.version} is not loaded"))
        elif not any(x.is_of(d) for x in items):
            out.append(Finding(DriftKind.VERSION, name, f"{name} is loaded at {items[0].digest[:12]}, "
                                                f"the pin (v{d.version}) is {d.sha256[:12]}"))
        elif any(x.is_of(d) and x.state != d.state for x in items):
            out.append(Finding(DriftKind.VERSION, name, f"{name} runs in another mode than {d.state}"))
    for name in sorted(have.keys() - want.keys()):
        out.append(Finding(DriftKind.EXTRA, name, f"{name} is loaded but not selected for this node"))
    return out

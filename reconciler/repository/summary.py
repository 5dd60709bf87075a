"""A readable account of what a revision enforces: which packs and rules apply where, at which state."""
from __future__ import annotations

from dataclasses import dataclass

from reconciler.repository.model import PolicyRepository, UnitKey, format_duration
from reconciler.repository.render import RenderedPolicy
from wire.values import State


@dataclass(frozen=True)
class UnitRow:
    unit: UnitKey
    state: State
    policies: tuple[str, ...]
    sensors: str  # who the scope covers, in words


def rows(repo: PolicyRepository, rendered: tuple[RenderedPolicy, ...]) -> list[UnitRow]:
    out = []
    for unit, state in sorted(repo.units().items()):
        names = tuple(sorted({p.name for p in rendered
                              if p.origin_kind == unit.kind and p.origin_name == unit.name
                              and p.scope == unit.scope}))
        out.append(UnitRow(unit, state, names, _covers(repo, unit)))
    return out


def _covers(repo: PolicyRepository, unit: UnitKey) -> str:
    s = unit.scope
    if s.sensor is not None:
        return f"sensor {s.sensor}"
    if s.group is not None:
        g = repo.group(s.group)
        if g is None:
            return f"group {s.group} (undefined)"
        parts = [f"ids {','.join(g.sensors)}"] if g.sensors else []
        parts += [",".join(f"{k}={v}" for k, v in g.match_labels)] if g.match_labels else []
        return f"group {g.name} ({'; '.join(parts) or 'empty'})"
    return "every sensor"


def text(repo: PolicyRepository, rendered: tuple[RenderedPolicy, ...]) -> str:
    lines = []
    c = repo.config
    if c is not None:
        lines.append(f"Repository {c.name}: {len(c.reviewers)} reviewer(s), {c.approvals_required} signed "
                     f"approval(s) per forward step, minimum observation {format_duration(c.min_observation)}")
    lines.append(f"{len(repo.packs)} pack(s), {len(repo.rules)} rule(s), {len(repo.groups)} group(s), "
                 f"{len(rendered)} rendered policy assignment(s)")
    table = [("UNIT", "KIND", "SCOPE", "STATE", "APPLIES TO", "POLICIES")]
    for r in rows(repo, rendered):
        table.append((r.unit.name, r.unit.kind, r.unit.scope.key, str(r.state), r.sensors,
                      ", ".join(r.policies)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    for ro in repo.rollouts:
        stages = " → ".join(f"{s.name} (bake {format_duration(s.bake)})" for s in ro.stages)
        lines.append(f"Rollout {ro.name}: {stages}; fast-track {'on' if ro.fast_track else 'off'}")
    return "\n".join(lines)


def to_json(repo: PolicyRepository, rendered: tuple[RenderedPolicy, ...]) -> list[dict[str, object]]:
    return [
        {"kind": r.unit.kind, "name": r.unit.name, "scope": r.unit.scope.to_json(), "state": str(r.state),
         "appliesTo": r.sensors, "policies": list(r.policies)}
        for r in rows(repo, rendered)
    ]

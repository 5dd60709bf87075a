"""What makes a unit that already enforces act on more (README, "Governance rules").

A unit at `enforce_ready` or `enforced` acts on whatever its policies match. A
change that keeps the unit's state but widens what it acts on (a policy changed
so it may match more, a new selector or action, an exception removed, a group
that now holds other sensors) is a forward step as much as a state change: it
needs the same approval. It needs no observation window, since the unit's state
does not change.

A policy *new* to such a pack has never been observed anywhere. It is refused
(`new-policy-enforcing`): a new policy starts at `observe`, in a pack of its own
(or in this pack once the assignment is back at observe). The alternative, a
per-policy state inside a pack, would make a pack no longer one unit on the
ladder, and its state would no longer be written in the repository.

Pure logic: the rendered policies of both revisions come in, verdicts go out.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.checks.relaxing import GroupLike, RenderedLike, relaxes, widened_groups
from reconciler.repository.model import Rule, UnitKey
from wire.values import State


@dataclass(frozen=True)
class Tightening:
    """An enforcing unit that acts on more after the change, and why."""

    unit: UnitKey
    state: State
    reasons: tuple[str, ...] = ()
    new_policies: tuple[str, ...] = ()


def tightenings(
    base_units: Mapping[UnitKey, State],
    head_units: Mapping[UnitKey, State],
    base_rendered: Iterable[RenderedLike],
    head_rendered: Iterable[RenderedLike],
    *,
    base_groups: Sequence[GroupLike] = (),
    head_groups: Sequence[GroupLike] = (),
    base_rules: Sequence[Rule] = (),
    head_rules: Sequence[Rule] = (),
) -> list[Tightening]:
    """Units enforcing at `base` (enforce_ready or enforced) that stay enforcing and act on more at `head`.

    A unit moving back is relaxed, whatever else changes; a unit moving forward is
    judged by the ladder, but a policy new to it is still reported here.
    """
    before, after = _by_unit(base_rendered), _by_unit(head_rendered)
    rules_before = {UnitKey("rule", r.name, r.scope): r for r in base_rules if r.enabled}
    rules_after = {UnitKey("rule", r.name, r.scope): r for r in head_rules if r.enabled}
    out: list[Tightening] = []
    for unit in sorted(base_units.keys() & head_units.keys()):
        old_state, new_state = base_units[unit], head_units[unit]
        if old_state is State.OBSERVE or new_state.rank < old_state.rank:
            continue
        old, new = before.get(unit, {}), after.get(unit, {})
        added = tuple(sorted(new.keys() - old.keys()))
        reasons = [f"{name}: policy definition changed (it may match more)"
                   for name in sorted(old.keys() & new.keys())
                   if old[name].yaml != new[name].yaml and relaxes(old[name].yaml, new[name].yaml) is None]
        if unit.scope.group is not None:
            reasons += widened_groups(base_groups, head_groups, {unit.scope.group})
        if unit in rules_before and unit in rules_after:
            reasons += shortened_exceptions(rules_before[unit], rules_after[unit])
        if added or reasons:
            out.append(Tightening(unit, old_state, tuple(reasons), added))
    return out


def _by_unit(rendered: Iterable[RenderedLike]) -> dict[UnitKey, dict[str, RenderedLike]]:
    out: dict[UnitKey, dict[str, RenderedLike]] = {}
    for p in rendered:
        out.setdefault(UnitKey(p.origin_kind, p.origin_name, p.scope), {})[p.name] = p
    return out


def shortened_exceptions(before: Rule, after: Rule) -> list[str]:
    """Exceptions of `before` that `after` ends sooner (an earlier `expires`, or one set where there was none).

    Rendering today cannot see it, as the exception still applies today; from its new
    expiry on, the rule acts on more without anyone having approved that.
    """
    later = {(e.binary, e.parent_binary): e.expires for e in after.exceptions}
    out: list[str] = []
    for e in before.exceptions:
        key = (e.binary, e.parent_binary)
        if key not in later:
            continue  # removed: the rendered policy shows it
        new = later[key]
        if new is not None and (e.expires is None or new < e.expires):
            who = e.binary or f"children of {e.parent_binary}"
            out.append(f"the exception for {who} now ends {new.isoformat()} "
                       f"(was {e.expires.isoformat() if e.expires else 'never'})")
    return out

"""Whether a change only relaxes enforcement (`classify`), judged on rendered policies alone.

`classify(before, after)` works on anything with `name`, `scope`, `state` and `yaml`, so `palisade plan`
and the rollout controller (deciding whether to fast-track a bundle) apply the same judgement.

Decisions worth knowing:

- **Relaxing** means every difference can only reduce what nodes act on: a
  policy moved back on the ladder, removed (a rule disabled renders to a
  removed policy), or changed only by exceptions. Anything else — a new policy
  even at `observe`, a forward step, any other edit — is tightening. When in
  doubt the answer is tightening: a wrong "relaxing" would skip the canary.
- **Exceptions** are recognised in the rendered TracingPolicy, not in the rule:
  a selector whose only action is `NoPost` added (or widened) anywhere, or the
  last enforcing selector of a hook narrowed (a value added to a `Not*` list
  such as an exec allowlist, a value removed from a positive list, an extra
  condition). Only the last one may narrow: Tetragon applies the first
  selector that matches, so narrowing an earlier one hands its events to the
  selectors after it.
- **Fallback**: on a node the most specific scope wins (sensor > group > fleet;
  between groups the least enforcing state). Removing an assignment is therefore
  tightening when the same policy stays assigned at another scope in a more
  enforcing state: the nodes of the removed scope may fall back to it.
- **Groups** decide which sensors a scope holds; a changed group that a policy
  uses is tightening (sensors may join it).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml

from wire.values import Placed, Scope, State


class PolicyLike(Placed, Protocol):
    """A rendered policy: `render.RenderedPolicy` and `bundle.BundlePolicy` both are."""

    @property
    def yaml(self) -> str: ...


class GroupLike(Protocol):
    """A named set of sensors: `model.Group` and `bundle.BundleGroup` both are."""

    @property
    def name(self) -> str: ...
    @property
    def sensors(self) -> tuple[str, ...]: ...
    @property
    def match_labels(self) -> tuple[tuple[str, str], ...]: ...


class RenderedLike(PolicyLike, Protocol):
    """A rendered policy that knows the pack or rule it comes from."""

    @property
    def origin_kind(self) -> str: ...
    @property
    def origin_name(self) -> str: ...


# --- classification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Classification:
    """Whether a change only relaxes enforcement, and why (the reasons behind the verdict)."""

    relaxing: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "relaxing" if self.relaxing else "tightening"

    def to_json(self) -> dict[str, Any]:
        return {"relaxing": self.relaxing, "kind": self.label, "reasons": list(self.reasons)}


def classify(
    before: Sequence[PolicyLike],
    after: Sequence[PolicyLike],
    *,
    before_groups: Sequence[GroupLike] = (),
    after_groups: Sequence[GroupLike] = (),
) -> Classification:
    """Relaxing (only back moves, removals, exceptions) or tightening, with the reasons.

    No difference at all is relaxing (nothing gets stricter), with the reason
    "no policy changes". Pass the groups of both sides when they may differ.
    """
    old = {(p.name, p.scope): p for p in before}
    new = {(p.name, p.scope): p for p in after}
    relaxing: list[str] = []
    tightening: list[str] = []
    for key in sorted(old.keys() | new.keys(), key=lambda k: (k[0], k[1].key)):
        name, scope = key
        b, a = old.get(key), new.get(key)
        where = f"{name} @ {scope.key}"
        if b is None:
            assert a is not None
            tightening.append(f"{where} added ({a.state.value})")
            continue
        if a is None:
            fallback = _fallback(name, scope, b.state, after)
            if fallback is None:
                relaxing.append(f"{where} removed")
            else:
                tightening.append(f"{where} removed; its nodes may fall back to {name} @ {fallback.scope.key} "
                                  f"({fallback.state.value})")
            continue
        if a.state.rank > b.state.rank:
            tightening.append(f"{where}: {b.state.value} → {a.state.value}")
        elif a.state.rank < b.state.rank:
            relaxing.append(f"{where}: {b.state.value} → {a.state.value}")
        if a.yaml != b.yaml:
            verdict = relaxes(b.yaml, a.yaml)
            if verdict is None:
                tightening.append(f"{where}: policy definition changed")
            else:
                relaxing.append(f"{where}: {verdict}")
    used = {p.scope.group for p in after if p.scope.group is not None}
    tightening += widened_groups(before_groups, after_groups, used)
    if tightening:
        return Classification(False, tightening)
    return Classification(True, relaxing or ["no policy changes"])


def widened_groups(before: Sequence[GroupLike], after: Sequence[GroupLike], used: set[str]) -> list[str]:
    """Why policies scoped to the groups `used` may apply to other sensors after the change."""
    out: list[str] = []
    old_groups = {g.name: (tuple(sorted(g.sensors)), tuple(sorted(g.match_labels))) for g in before}
    for g in sorted(after, key=lambda g: g.name):
        if g.name not in used:
            continue
        if g.name not in old_groups:
            # a scope naming an undefined group held nobody; now it holds sensors
            out.append(f"group {g.name} defined: policies scoped to it now apply to its sensors")
        elif old_groups[g.name] != (tuple(sorted(g.sensors)), tuple(sorted(g.match_labels))):
            out.append(f"group {g.name} changed: the sensors its policies apply to may change")
    return out


def _fallback(name: str, scope: Scope, state: State, after: Sequence[PolicyLike]) -> PolicyLike | None:
    """The same policy at another scope, more enforcing than `state`, that nodes of `scope` may fall back to."""
    worse = [p for p in after if p.name == name and p.scope != scope and p.state.rank > state.rank]
    return max(worse, key=lambda p: p.state.rank, default=None)


#: Operators whose values name what is *not* matched: more values, fewer matches.
def _negative(op: str) -> bool:
    return op.startswith("Not")


#: Operators whose values name what is matched: fewer values, fewer matches.
_POSITIVE = frozenset({"In", "Equal", "Prefix", "Postfix", "DAddr", "SAddr", "DPort", "SPort", "Family",
                       "State", "Protocol", "SockFamily"})


@functools.lru_cache(maxsize=256)
def _document(text: str) -> Any:
    """A rendered policy's YAML, parsed once per text (raises yaml.YAMLError).

    The rollout controller compares a new bundle with every version a stage still runs, so the
    same policy text comes up once per pinned version; rendered text is immutable, the parsed
    document is only read (never changed) here, so caching keeps `classify` pure. 256 texts hold
    a few bundles' worth of changed policies (only changed ones are parsed).
    """
    return yaml.safe_load(text)


def relaxes(before: str, after: str) -> str | None:
    """What makes `after` match no more than `before` ("exception added", ...), or None if it may match more."""
    try:
        b, a = _document(before), _document(after)
    except yaml.YAMLError:
        return None
    if not isinstance(b, dict) or not isinstance(a, dict):
        return None
    bs, as_ = b.get("spec"), a.get("spec")
    if not isinstance(bs, dict) or not isinstance(as_, dict):
        return None
    if {k: v for k, v in b.items() if k != "spec"} != {k: v for k, v in a.items() if k != "spec"}:
        return None
    if bs.keys() != as_.keys():
        return None
    found: set[str] = set()
    for key in bs:
        bh, ah = bs[key], as_[key]
        if not isinstance(bh, list) or not isinstance(ah, list):
            if bh != ah:
                return None
            continue
        if len(bh) != len(ah):
            return None
        for x, y in zip(bh, ah, strict=True):
            if not isinstance(x, dict) or not isinstance(y, dict):
                if x != y:
                    return None
                continue
            if {k: v for k, v in x.items() if k != "selectors"} != {k: v for k, v in y.items() if k != "selectors"}:
                return None
            what = _selectors_narrow(x.get("selectors") or [], y.get("selectors") or [])
            if what is None:
                return None
            found |= what
    return " and ".join(sorted(found)) or "policy reformatted (same meaning)"


def _is_exemption(sel: Any) -> bool:
    if not isinstance(sel, dict):
        return False
    actions = sel.get("matchActions")
    return isinstance(actions, list) and bool(actions) and not sel.get("matchReturnActions") \
        and all(isinstance(x, dict) and x.get("action") == "NoPost" for x in actions)


def _selectors_narrow(before: list[Any], after: list[Any]) -> set[str] | None:
    b_ex = [s for s in before if _is_exemption(s)]
    a_ex = [s for s in after if _is_exemption(s)]
    b_act = [s for s in before if not _is_exemption(s)]
    a_act = [s for s in after if not _is_exemption(s)]
    if len(b_act) != len(a_act):
        return None
    found: set[str] = set()
    for i, (x, y) in enumerate(zip(b_act, a_act, strict=True)):
        if x == y:
            continue
        # events a narrowed selector no longer matches fall through to the selectors after it
        if i != len(b_act) - 1 or not _narrower(y, x):
            return None
        found.add("enforcing selector narrowed (e.g. allowlist widened)")
    for old in b_ex:
        if not any(old == new or _narrower(old, new) for new in a_ex):
            return None  # an exception went away or shrank
    if len(a_ex) > len(b_ex) or any(not any(new == old for old in b_ex) for new in a_ex):
        found.add("exception added")
    return found


def _narrower(x: Any, y: Any) -> bool:
    """Whether selector `x` matches no more than selector `y` (same actions, stricter conditions)."""
    if not isinstance(x, dict) or not isinstance(y, dict):
        return False
    actions = {k for k in x.keys() | y.keys() if k.endswith("Actions")}
    if any(x.get(k) != y.get(k) for k in actions):
        return False
    for key, conds in y.items():
        if key in actions:
            continue
        mine = x.get(key)
        if not isinstance(conds, list) or not isinstance(mine, list) or len(mine) < len(conds):
            return False
        # x may add conditions (they are ANDed): compare the ones y has, in order
        if not all(_cond_narrower(c, d) for c, d in zip(mine, conds, strict=False)):
            return False
    return True


def _cond_narrower(c: Any, d: Any) -> bool:
    if c == d:
        return True
    if not isinstance(c, dict) or not isinstance(d, dict):
        return False
    if {k: v for k, v in c.items() if k != "values"} != {k: v for k, v in d.items() if k != "values"}:
        return False
    op = str(c.get("operator", ""))
    cv, dv = {str(v) for v in c.get("values") or []}, {str(v) for v in d.get("values") or []}
    if _negative(op):
        return cv >= dv
    if op in _POSITIVE:
        return cv <= dv
    return False

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
- **Typed**: both sides are compared as `bpf.policy.TracingPolicy` values (what
  the engine runs, wherever it is written in the YAML). A policy the parser
  refuses, or one holding parts the typed value keeps by name only (`spec.enforcers`,
  an unknown selector key, ...), whose change it could not see, is tightening.
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
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Protocol

import yaml

from bpf.errors import PolicyError
from bpf.policy import (
    ArgFilter,
    BinariesFilter,
    CapabilitiesFilter,
    NamespaceChangesFilter,
    NamespacesFilter,
    PidsFilter,
    Selector,
    TracingPolicy,
)
from bpf.policy import parse as parse_policy
from wire.values import Placed, Scope, State

# libyaml's loader where present (rendered policies are plain YAML)
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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

#: A selector's filters (ANDed): what a narrowed selector may add to or restrict.
_FILTERS = ("match_args", "match_binaries", "match_parent_binaries", "match_pids", "match_namespaces",
            "match_return_args", "match_capabilities", "match_capability_changes", "match_namespace_changes")

_Filter = ArgFilter | BinariesFilter | PidsFilter | NamespacesFilter | CapabilitiesFilter | NamespaceChangesFilter

#: Action fields whose values the typed Action holds (any other field it keeps by name only).
_TYPED_ACTION_FIELDS = frozenset({"argSock", "argUrl", "argFqdn", "imaHash"})


@functools.lru_cache(maxsize=256)
def _policy(text: str) -> TracingPolicy:
    """A rendered policy's typed TracingPolicy, parsed once per text (raises yaml.YAMLError, PolicyError).

    The rollout controller compares a new bundle with every version a stage still runs, so the
    same policy text comes up once per pinned version; rendered text is immutable and the typed
    value frozen, so caching keeps `classify` pure. 256 texts hold a few bundles' worth of
    changed policies (only changed ones are parsed).
    """
    return parse_policy(yaml.load(text, Loader=_LOADER))


def relaxes(before: str, after: str) -> str | None:
    """What makes `after` match no more than `before` ("exception added", ...), or None if it may match more.

    A policy the typed parser refuses (or that is not YAML) may match anything: None.
    """
    try:
        b, a = _policy(before), _policy(after)
    except (yaml.YAMLError, PolicyError):
        return None
    if _untyped(b) or _untyped(a):
        return None
    if _content(b, skip=("hooks",)) != _content(a, skip=("hooks",)) or len(b.hooks) != len(a.hooks):
        return None
    found: set[str] = set()
    for x, y in zip(b.hooks, a.hooks, strict=True):
        if _content(x, skip=("selectors",)) != _content(y, skip=("selectors",)):
            return None
        what = _selectors_narrow(x.selectors, y.selectors)
        if what is None:
            return None
        found |= what
    return " and ".join(sorted(found)) or "policy reformatted (same meaning)"


def _untyped(p: TracingPolicy) -> bool:
    """Whether `p` has parts the typed value names but does not hold (their change would go unseen)."""
    return bool(p.unsupported) or any(
        h.unsupported or any(s.unsupported or any(set(act.extra) - _TYPED_ACTION_FIELDS for act in s.match_actions)
                             for s in h.selectors)
        for h in p.hooks)


def _content(v: object, skip: tuple[str, ...] = ()) -> object:
    """What a typed value says, without where it was written (its JSON path) and its source document.

    Two selectors are the same selector wherever they sit in the hook's list; `skip` leaves out fields
    compared on their own.
    """
    if is_dataclass(v) and not isinstance(v, type):
        return (type(v).__name__, *(
            _content(getattr(v, f.name)) for f in fields(v)
            if f.name not in skip and f.name != "document"
            and not (f.name == "path" and isinstance(getattr(v, f.name), tuple))))
    if isinstance(v, tuple):
        return tuple(_content(x) for x in v)
    return v


def _is_exemption(sel: Selector) -> bool:
    # matchReturnActions is not typed: a selector carrying it is `unsupported`, and `relaxes` declines those
    return bool(sel.match_actions) and all(act.action == "NoPost" for act in sel.match_actions)


def _selectors_narrow(before: Sequence[Selector], after: Sequence[Selector]) -> set[str] | None:
    b_ex = [s for s in before if _is_exemption(s)]
    a_ex = [s for s in after if _is_exemption(s)]
    b_act = [s for s in before if not _is_exemption(s)]
    a_act = [s for s in after if not _is_exemption(s)]
    if len(b_act) != len(a_act):
        return None
    found: set[str] = set()
    for i, (x, y) in enumerate(zip(b_act, a_act, strict=True)):
        if _content(x) == _content(y):
            continue
        # events a narrowed selector no longer matches fall through to the selectors after it
        if i != len(b_act) - 1 or not _narrower(y, x):
            return None
        found.add("enforcing selector narrowed (e.g. allowlist widened)")
    b_said, a_said = [_content(s) for s in b_ex], [_content(s) for s in a_ex]
    for old, said in zip(b_ex, b_said, strict=True):
        if not any(said == new_said or _narrower(old, new) for new, new_said in zip(a_ex, a_said, strict=True)):
            return None  # an exception went away or shrank
    if len(a_ex) > len(b_ex) or any(new_said not in b_said for new_said in a_said):
        found.add("exception added")
    return found


def _narrower(x: Selector, y: Selector) -> bool:
    """Whether selector `x` matches no more than selector `y` (same actions, stricter conditions)."""
    if _content(x.match_actions) != _content(y.match_actions):
        return False
    for name in _FILTERS:
        mine: tuple[_Filter, ...] = getattr(x, name)
        theirs: tuple[_Filter, ...] = getattr(y, name)
        # x may add conditions (they are ANDed): compare the ones y has, in order
        if len(mine) < len(theirs) or not all(_cond_narrower(c, d) for c, d in zip(mine, theirs, strict=False)):
            return False
    return True


def _cond_narrower(c: _Filter, d: _Filter) -> bool:
    """Whether filter `c` matches no more than `d`: the same filter but for its values."""
    if _content(c) == _content(d):
        return True
    if _content(c, skip=("values",)) != _content(d, skip=("values",)):
        return False
    cv, dv = set(c.values), set(d.values)
    if _negative(c.operator):
        return cv >= dv
    if c.operator in _POSITIVE:
        return cv <= dv
    return False

"""Packs and rules → concrete TracingPolicies, each with its scope and ladder state.

Pure: the same repository and date always render the same bytes, so a bundle's
digest changes only when what nodes enforce changes.
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from bpf import templates
from reconciler.repository.model import PolicyRepository, Rule
from wire.values import Scope, State


@dataclass(frozen=True)
class RenderedPolicy:
    """One TracingPolicy as nodes will load it, at one scope and one ladder state."""

    name: str
    origin_kind: str  # "pack" | "rule"
    origin_name: str
    scope: Scope
    state: State
    yaml: str
    sha256: str
    document: Mapping[str, Any] = field(compare=False, repr=False)


def dump(document: Mapping[str, Any]) -> str:
    """Deterministic YAML for a TracingPolicy document (memoised: a commit changes few policies)."""
    key = json.dumps(document, sort_keys=False, separators=(",", ":"), default=str)
    text = _DUMPED.get(key)
    if text is None:
        text = yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True)
        if len(_DUMPED) > 20_000:
            _DUMPED.clear()
        _DUMPED[key] = text
    return text


_DUMPED: dict[str, str] = {}


# libyaml's emitter: the pure-Python one dominated reconcile time on large repositories
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _rendered(doc: Mapping[str, Any], origin_kind: str, origin_name: str, scope: Scope,
              state: State) -> RenderedPolicy:
    text = dump(doc)
    return RenderedPolicy(
        name=str(doc["metadata"]["name"]),
        origin_kind=origin_kind,
        origin_name=origin_name,
        scope=scope,
        state=state,
        yaml=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        document=doc,
    )


def rule_document(rule: Rule, today: _dt.date) -> dict[str, Any]:
    """The TracingPolicy a rule renders to; exceptions that expired before `today` no longer apply."""
    active = [
        templates.TemplateException(e.binary, e.parent_binary) for e in rule.exceptions if e.active(today)
    ]
    if rule.template == templates.CUSTOM:
        inline = copy.deepcopy(dict(rule.policy or {}))
        spec = dict(inline.get("spec") or {})
        if active:
            spec = templates.apply_exceptions(spec, active)
        return {
            "apiVersion": "cilium.io/v1alpha1",
            "kind": inline.get("kind", "TracingPolicy"),
            "metadata": {"name": rule.name, "annotations": {"palisade.dev/template": templates.CUSTOM}},
            "spec": spec,
        }
    return templates.render(rule.template, rule.name, rule.params, active)


def render(repo: PolicyRepository, today: _dt.date | None = None) -> tuple[RenderedPolicy, ...]:
    """Every policy of every enforcement assignment and enabled rule, in a stable order.

    Raises ValueError for a rule that cannot render; validation reports those first.
    """
    today = today or _dt.datetime.now(_dt.UTC).date()
    out: list[RenderedPolicy] = []
    for e in sorted(repo.enforcements, key=lambda e: e.name):
        pack = repo.pack(e.pack)
        if pack is None:
            continue
        for a in e.assignments:
            for p in pack.policies:
                out.append(_rendered(p.document, "pack", pack.name, a.scope, a.state))
    for r in sorted(repo.rules, key=lambda r: r.name):
        if r.enabled:
            out.append(_rendered(rule_document(r, today), "rule", r.name, r.scope, r.state))
    return tuple(sorted(out, key=lambda p: (p.name, p.scope, p.origin_kind, p.origin_name)))

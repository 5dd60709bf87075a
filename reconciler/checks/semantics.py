"""Semantic checks of one revision: names, references, templates, exceptions, staging.

Pure: works on the typed model, using the documents only to point findings at
the node that causes them.
"""
from __future__ import annotations

import datetime as _dt
import re
from collections import Counter
from collections.abc import Sequence

from bpf import templates
from reconciler.findings import Finding, error
from reconciler.repository.loader import POLICY_KINDS
from reconciler.repository.model import PolicyRepository
from reconciler.repository.source import Document, JsonPath
from wire.values import State

#: Warn this long before an exception expires.
EXPIRY_NOTICE = _dt.timedelta(days=14)
_SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com)"
                      r" [A-Za-z0-9+/=]{20,}( .*)?$")


class _Docs:
    """Finds the document and node behind a model value, to locate findings."""

    def __init__(self, documents: Sequence[Document]) -> None:
        self._by: dict[tuple[str, str], Document] = {}
        for d in documents:
            if d.kind and d.name is not None:
                self._by.setdefault((d.kind, d.name), d)

    def error(self, kind: str, name: str, path: JsonPath, code: str, message: str) -> Finding:
        d = self._by.get((kind, name))
        if d is None:
            return error("", 0, 0, code, message)
        return d.error(path, code, message)

    def warning(self, kind: str, name: str, path: JsonPath, code: str, message: str) -> Finding:
        d = self._by.get((kind, name))
        if d is None:
            return error("", 0, 0, code, message)
        return d.warning(path, code, message)


def check(repo: PolicyRepository, documents: Sequence[Document], today: _dt.date) -> list[Finding]:
    docs = _Docs(documents)
    findings: list[Finding] = []
    findings += _unique_names(documents)
    if repo.config is None and not any(d.kind == "Repository" for d in documents):
        findings.append(error("palisade.yaml", 0, 0, "no-repository",
                              "palisade.yaml (kind: Repository) is missing; every policy repository needs one"))
    if repo.config is not None:
        keys: dict[str, str] = {}
        for field, people in (("reviewers", repo.config.reviewers), ("contributors", repo.config.contributors)):
            for i, person in enumerate(people):
                where = ("spec", field, i, "key")
                if not _SSH_KEY.match(person.key):
                    findings.append(docs.error("Repository", repo.config.name, where,
                                               "reviewer-key", f"{field[:-1]} {person.name}: key is not an OpenSSH "
                                               "public key line (e.g. 'ssh-ed25519 AAAA... user@host')"))
                    continue
                material = " ".join(person.key.split()[:2])
                if material in keys:
                    # one key, two people: its signatures could not tell who wrote a commit
                    findings.append(docs.error("Repository", repo.config.name, where, "shared-key",
                                               f"{field[:-1]} {person.name} uses the key of {keys[material]}; "
                                               "each person needs a key of their own"))
                keys.setdefault(material, person.name)
    groups = {g.name for g in repo.groups}

    def scope_ok(kind: str, name: str, path: JsonPath, group: str | None) -> None:
        if group is not None and group not in groups:
            findings.append(docs.error(kind, name, path, "unknown-group",
                                       f"group {group!r} is not defined in scopes/ (groups: "
                                       f"{', '.join(sorted(groups)) or 'none'})"))

    packs = {p.name: p for p in repo.packs}
    enforced_packs: Counter[str] = Counter(e.pack for e in repo.enforcements)
    for e in repo.enforcements:
        pack = packs.get(e.pack)
        if pack is None:
            findings.append(docs.error("Enforcement", e.name, ("spec", "pack"), "unknown-pack",
                                       f"pack {e.pack!r} does not exist under packs/ (packs: "
                                       f"{', '.join(sorted(packs)) or 'none'})"))
        if enforced_packs[e.pack] > 1:
            findings.append(docs.error("Enforcement", e.name, ("spec", "pack"), "duplicate-enforcement",
                                       f"pack {e.pack!r} has more than one Enforcement file; keep one"))
        seen: set[str] = set()
        for i, a in enumerate(e.assignments):
            path: JsonPath = ("spec", "assignments", i, "scope")
            if a.scope.key in seen:
                findings.append(docs.error("Enforcement", e.name, path, "duplicate-scope",
                                           f"scope {a.scope.key} is assigned twice; keep one assignment"))
            seen.add(a.scope.key)
            scope_ok("Enforcement", e.name, path, a.scope.group)
            if pack is not None and not pack.enforcement_capable and a.state is not State.OBSERVE:
                findings.append(docs.error("Enforcement", e.name, ("spec", "assignments", i, "state"),
                                           "not-enforcement-capable",
                                           f"pack {pack.name} is not enforcementCapable, so it can only be "
                                           f"at observe (not {a.state})"))
    written = Counter(d.path.split("/")[1] for d in documents if d.kind in POLICY_KINDS and d.path.count("/") >= 2)
    for p in repo.packs:
        if not written[p.name]:
            findings.append(docs.warning("Pack", p.name, (), "empty-pack",
                                         f"pack {p.name} holds no TracingPolicy; add one or remove the pack"))
    for r in repo.rules:
        scope_ok("Rule", r.name, ("spec", "scope"), r.scope.group)
        if r.template != templates.CUSTOM and r.template not in templates.TEMPLATES:
            for msg in templates.check_params(r.template, {}):
                findings.append(docs.error("Rule", r.name, ("spec", "template"), "template", msg))
        else:
            for key, value in r.params.items():
                for msg in templates.check_params(r.template, {key: value}):
                    findings.append(docs.error("Rule", r.name, ("spec", "params", key), "template", msg))
        if r.template == templates.CUSTOM and not r.policy:
            findings.append(docs.error("Rule", r.name, ("spec",), "template",
                                       "template custom needs spec.policy with an inline TracingPolicy"))
        for i, ex in enumerate(r.exceptions):
            path = ("spec", "exceptions", i, "expires")
            if ex.expires is None:
                continue
            if ex.expires < today:
                findings.append(docs.warning("Rule", r.name, path, "exception-expired",
                                             f"exception for {ex.binary or ex.parent_binary} expired on "
                                             f"{ex.expires}; it no longer applies — renew it or remove it"))
            elif ex.expires - today <= EXPIRY_NOTICE:
                findings.append(docs.warning("Rule", r.name, path, "exception-expiring",
                                             f"exception for {ex.binary or ex.parent_binary} expires on "
                                             f"{ex.expires} ({(ex.expires - today).days} days)"))
        active = [templates.TemplateException(e.binary, e.parent_binary) for e in r.exceptions if e.active(today)]
        if len(templates.exception_selectors(active)) >= templates.MAX_SELECTORS:
            findings.append(docs.error("Rule", r.name, ("spec", "exceptions"), "too-many-exceptions",
                                       "the exceptions need more selectors than Tetragon allows per hook "
                                       f"({templates.MAX_SELECTORS}); group binaries that share a parent"))
    for ro in repo.rollouts:
        names: Counter[str] = Counter(s.name for s in ro.stages)
        for i, s in enumerate(ro.stages):
            if names[s.name] > 1:
                findings.append(docs.error("Rollout", ro.name, ("spec", "stages", i, "name"), "duplicate-stage",
                                           f"stage {s.name!r} appears more than once"))
            for j, g in enumerate(s.groups):
                scope_ok("Rollout", ro.name, ("spec", "stages", i, "sensors", "groups", j), g)
            if s.rest and i != len(ro.stages) - 1:
                findings.append(docs.error("Rollout", ro.name, ("spec", "stages", i, "sensors", "rest"),
                                           "rest-not-last", "only the last stage may take 'everything else'"))
            if not (s.rest or s.sensors or s.groups or s.match_labels):
                findings.append(docs.error("Rollout", ro.name, ("spec", "stages", i, "sensors"), "empty-stage",
                                           f"stage {s.name!r} names no sensors: give ids, groups, "
                                           "matchLabels or rest: true"))
    if len(repo.rollouts) > 1:
        for ro in repo.rollouts[1:]:
            findings.append(docs.error("Rollout", ro.name, ("metadata", "name"), "duplicate-rollout",
                                       "more than one Rollout in staging/; the fleet follows one staging plan"))
    return findings


def _unique_names(documents: Sequence[Document]) -> list[Finding]:
    """Names unique per kind; TracingPolicy names unique across packs and rules (nodes load them by name)."""
    findings: list[Finding] = []
    seen: dict[tuple[str, str], Document] = {}
    for d in documents:
        if d.kind is None or d.name is None:
            continue
        kind = "TracingPolicy" if d.kind in (*POLICY_KINDS, "Rule") else d.kind
        first = seen.get((kind, d.name))
        if first is None:
            seen[(kind, d.name)] = d
            continue
        line, _ = first.locate(("metadata", "name"))
        findings.append(d.error(("metadata", "name"), "duplicate-name",
                                f"{d.kind} name {d.name!r} is already used at {first.path}:{line}; "
                                "names must be unique (policies and rules share one namespace)"))
    return findings

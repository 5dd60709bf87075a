"""Documents → the typed repository model, checking where each kind of file belongs.

Runs after the schema check: documents that failed it are left out here (their
findings are already reported), so parsing reads fields the schema guarantees.
Anything it still cannot read becomes a finding, never an exception.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.findings import Finding, error, has_errors
from reconciler.repository import source
from reconciler.repository.model import (
    Assignment,
    Enforcement,
    Gates,
    Group,
    Location,
    Pack,
    PolicyRepository,
    PolicySource,
    RepositoryConfig,
    Reviewer,
    Rollout,
    Rule,
    RuleException,
    Stage,
    parse_duration,
)
from reconciler.repository.source import Document
from wire.values import Scope, State

PALISADE_API = "palisade.dev/v1"
TETRAGON_API = "cilium.io/v1alpha1"
POLICY_KINDS = ("TracingPolicy", "TracingPolicyNamespaced")

#: Which kind belongs in which folder (DESIGN.md §2).
_FOLDER_KIND = {"scopes": "Group", "rules": "Rule", "enforcement": "Enforcement", "staging": "Rollout"}


@dataclass(frozen=True)
class Loaded:
    """A revision of the repository: its typed model, documents and the findings made while loading."""

    repository: PolicyRepository
    documents: tuple[Document, ...]
    valid: tuple[Document, ...]  # the documents that passed the schema check
    findings: tuple[Finding, ...]


def expected_kinds(path: str) -> tuple[str, ...]:
    """The kinds a file at `path` may hold."""
    if path == source.ROOT_FILE:
        return ("Repository",)
    parts = path.split("/")
    if parts[0] == "packs":
        if len(parts) < 3:
            return ()
        return ("Pack",) if parts[-1] in ("pack.yaml", "pack.yml") and len(parts) == 3 else POLICY_KINDS
    kind = _FOLDER_KIND.get(parts[0])
    return (kind,) if kind else ()


def placement(doc: Document) -> list[Finding]:
    """A finding when a document's kind does not belong in its folder."""
    allowed = expected_kinds(doc.path)
    if doc.kind is None or doc.kind in allowed:
        return []
    if not allowed:
        return [doc.error((), "wrong-folder",
                          f"{doc.path}: files here are not part of the repository format; packs "
                          "live in packs/<pack>/ with a pack.yaml")]
    return [doc.error(("kind",), "wrong-folder",
                      f"kind {doc.kind} does not belong in {doc.path.rsplit('/', 1)[0] or '.'}/ "
                      f"(expected {' or '.join(allowed)}); move it to the folder for its kind")]


def build(documents: Sequence[Document], today: _dt.date | None = None) -> tuple[PolicyRepository, list[Finding]]:
    """The typed model of schema-valid documents, and findings for what cannot be read."""
    findings: list[Finding] = []
    configs: list[RepositoryConfig] = []
    groups: list[Group] = []
    rules: list[Rule] = []
    enforcements: list[Enforcement] = []
    rollouts: list[Rollout] = []
    pack_docs: dict[str, Document] = {}
    policies: dict[str, list[PolicySource]] = {}
    for doc in documents:
        misplaced = placement(doc)
        if misplaced:
            findings.extend(misplaced)
            continue
        try:
            spec = doc.plain.get("spec") or {}
            kind = doc.kind
            if kind == "Repository":
                configs.append(_config(doc, spec))
            elif kind == "Group":
                groups.append(_group(doc, spec))
            elif kind == "Rule":
                rules.append(_rule(doc, spec))
            elif kind == "Enforcement":
                enforcements.append(_enforcement(doc, spec))
            elif kind == "Rollout":
                rollouts.append(_rollout(doc, spec))
            elif kind == "Pack":
                pack_docs[doc.path.split("/")[1]] = doc
            elif kind in POLICY_KINDS:
                folder = doc.path.split("/")[1]
                policies.setdefault(folder, []).append(
                    PolicySource(doc.name or "", kind, doc.path, doc.index, doc.plain)
                )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            findings.append(doc.error(("spec",), "invalid", f"cannot read {doc.kind} {doc.name!r}: {e}"))
    packs: list[Pack] = []
    for folder in sorted(set(pack_docs) | set(policies)):
        pdoc = pack_docs.get(folder)
        if pdoc is None:
            first = policies[folder][0]
            findings.append(error(first.path, 0, 0, "pack-missing",
                                  f"packs/{folder}/ has policies but no pack.yaml; add one (kind: Pack)"))
            continue
        spec = pdoc.plain.get("spec") or {}
        if pdoc.name != folder:
            findings.append(pdoc.error(("metadata", "name"), "pack-name",
                                       f"pack name {pdoc.name!r} differs from its folder packs/{folder}/; "
                                       "a pack is its folder, rename one of them"))
        packs.append(Pack(
            name=folder,
            path=f"packs/{folder}",
            description=str(spec.get("description", "")),
            owners=tuple(spec.get("owners", ())),
            enforcement_capable=bool(spec.get("enforcementCapable", False)),
            policies=tuple(policies.get(folder, ())),
        ))
    config = configs[0] if configs else None
    repo = PolicyRepository(config, tuple(groups), tuple(packs), tuple(rules), tuple(enforcements),
                            tuple(rollouts))
    return repo, findings


def _loc(doc: Document, path: tuple[str | int, ...]) -> Location:
    line, col = doc.locate(path)
    return Location(doc.path, line, col)


def _scope(d: Any) -> Scope:
    d = d or {}
    return Scope(sensor=d.get("sensor"), group=d.get("group"))


def _config(doc: Document, spec: dict[str, Any]) -> RepositoryConfig:
    def people(field: str) -> tuple[Reviewer, ...]:
        return tuple(Reviewer(r["name"], r["email"], r["key"].strip()) for r in spec.get(field, ()))

    reviewers = people("reviewers")
    return RepositoryConfig(
        name=doc.name or "",
        reviewers=reviewers,
        approvals_required=int((spec.get("approvals") or {}).get("required", 1)),
        min_observation=parse_duration(spec.get("minObservation", "72h")),
        bundle_expiry=parse_duration(spec.get("bundleExpiry", "24h")),
        contributors=people("contributors"),
    )


def _group(doc: Document, spec: dict[str, Any]) -> Group:
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    return Group(
        name=doc.name or "",
        sensors=tuple(spec.get("sensors", ())),
        match_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        description=str(spec.get("description", "")),
    )


def _rule(doc: Document, spec: dict[str, Any]) -> Rule:
    exceptions = tuple(
        RuleException(
            reason=e["reason"],
            binary=e.get("binary"),
            parent_binary=e.get("parentBinary"),
            expires=_dt.date.fromisoformat(e["expires"]) if e.get("expires") else None,
        )
        for e in spec.get("exceptions", ())
    )
    return Rule(
        name=doc.name or "",
        path=doc.path,
        template=spec["template"],
        scope=_scope(spec.get("scope")),
        state=State(spec.get("state", "observe")),
        enabled=bool(spec.get("enabled", True)),
        params=dict(spec.get("params") or {}),
        exceptions=exceptions,
        policy=spec.get("policy"),
        where=_loc(doc, ("spec", "state")),
    )


def _enforcement(doc: Document, spec: dict[str, Any]) -> Enforcement:
    assignments = tuple(
        Assignment(_scope(a.get("scope")), State(a["state"]), _loc(doc, ("spec", "assignments", i, "state")))
        for i, a in enumerate(spec.get("assignments", ()))
    )
    return Enforcement(doc.name or "", doc.path, spec["pack"], assignments)


def _rollout(doc: Document, spec: dict[str, Any]) -> Rollout:
    stages = []
    for s in spec.get("stages", ()):
        sensors = s.get("sensors") or {}
        g = s.get("gates") or {}
        stages.append(Stage(
            name=s["name"],
            sensors=tuple(sensors.get("ids", ())),
            groups=tuple(sensors.get("groups", ())),
            match_labels=tuple(sorted((sensors.get("matchLabels") or {}).items())),
            rest=bool(sensors.get("rest", False)),
            bake_seconds=round(parse_duration(s.get("bake", "0s")).total_seconds()),
            gates=Gates(
                max_agent_errors=g.get("maxAgentErrors"),
                max_policies_refused=g.get("maxPoliciesRefused"),
                max_unhealed_drift=g.get("maxUnhealedDrift"),
                max_enforcement_actions_per_node=g.get("maxEnforcementActionsPerNode"),
                min_reporting_ratio=g.get("minReportingRatio"),
            ),
        ))
    return Rollout(doc.name or "", doc.path, tuple(stages), bool(spec.get("fastTrack", False)))


def _schema_check() -> Callable[[Document], list[Finding]]:
    from reconciler.repository.schema import check_document

    return check_document


class _FileCache:
    """Parsed, schema-checked files by path and content: a new commit re-reads only what it changed.

    Documents are treated as read-only everywhere after parsing, so sharing them
    between revisions is safe. Bounded; oldest entries go first.
    """

    def __init__(self, size: int = 20_000) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, bytes], tuple[list[Document], list[Finding], list[bool]]] = \
            OrderedDict()

    def get(self, f: source.SourceFile) -> tuple[list[Document], list[Finding], list[bool]]:
        if f.data is None:
            return self._parse(f)
        key = (f.path, hashlib.sha1(f.data).digest())
        hit = self._entries.get(key)
        if hit is None:
            hit = self._entries[key] = self._parse(f)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return hit

    @staticmethod
    def _parse(f: source.SourceFile) -> tuple[list[Document], list[Finding], list[bool]]:
        docs, findings = source.parse_file(f)
        check = _schema_check()
        ok: list[bool] = []
        for doc in docs:
            fs = check(doc)
            findings.extend(fs)
            ok.append(not has_errors(fs))
        return docs, findings, ok


_FILES = _FileCache()


def load(snapshot: source.Snapshot, today: _dt.date | None = None) -> Loaded:
    """Parse, schema-check and build one revision; documents with schema errors are left out of the model."""
    docs: list[Document] = []
    findings: list[Finding] = []
    valid: list[Document] = []
    for f in snapshot.files:
        file_docs, file_findings, ok = _FILES.get(f)
        docs.extend(file_docs)
        findings.extend(file_findings)
        valid.extend(d for d, good in zip(file_docs, ok, strict=True) if good)
    repo, more = build(valid, today)
    findings.extend(more)
    return Loaded(repo, tuple(docs), tuple(valid), tuple(findings))


def load_revision(repo: Path, rev: str) -> tuple[PolicyRepository, list[Finding]]:
    """The typed model of a git revision and the findings made while loading it."""
    loaded = load(source.from_git(repo, rev))
    return loaded.repository, list(loaded.findings)

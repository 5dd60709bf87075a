"""`palisade validate`: every check of a revision, in order — schema, semantics, history.

History checks (ladder, approvals, observation window) run when a base revision
is known: `--base`, or the first parent of `--rev`.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.checks import semantics
from reconciler.findings import Finding, error, has_errors
from reconciler.repository import loader, render, source
from reconciler.repository.model import PolicyRepository
from reconciler.repository.source import Document

if TYPE_CHECKING:
    from reconciler.repository.acceptances import Acceptances


@dataclass(frozen=True)
class Report:
    """The outcome of validating one revision."""

    findings: tuple[Finding, ...]
    repository: PolicyRepository
    revision: str | None = None  # None: the work tree
    base: str | None = None
    rendered: tuple[render.RenderedPolicy, ...] | None = None  # None when there were errors

    @property
    def ok(self) -> bool:
        return not has_errors(self.findings)


def validate_snapshot(snapshot: source.Snapshot, today: _dt.date | None = None) -> Report:
    """Schema and semantic checks of one revision (no history)."""
    from reconciler.checks.tpcheck import check_policy

    today = today or _dt.datetime.now(_dt.UTC).date()
    loaded = loader.load(snapshot, today)
    findings = list(loaded.findings)
    findings += semantics.check(loaded.repository, loaded.documents, today)
    for doc in loaded.valid:
        if doc.kind in loader.POLICY_KINDS:
            found = check_policy(doc)
            findings += found if has_errors(found) else found + engine_support(doc)
        elif doc.kind == "Rule" and isinstance((doc.plain.get("spec") or {}).get("policy"), dict):
            findings += _check_inline(doc)
    rendered = None
    if not has_errors(findings):
        try:
            rendered = render.render(loaded.repository, today)
        except (ValueError, KeyError, TypeError) as e:
            findings.append(error("", 0, 0, "render", f"cannot render: {e}"))
    return Report(tuple(sorted(set(findings))), loaded.repository, snapshot.revision, rendered=rendered)


def engine_support(doc: Document) -> list[Finding]:
    """A warning when no Palisade agent can load a policy, whatever its kernel (a real Tetragon may).

    Compiled against a kernel with every feature the engine knows (kprobes, BPF LSM
    included), so what remains is outside the engine's subset, not a node's limits;
    agents would report the policy refused with these reasons.
    """
    from bpf import compile as _compile
    from bpf import policy as _policy
    from bpf.errors import PolicyError
    from bpf.tpformat import builtin_formats

    try:
        reasons = _compile.check(_policy.parse(doc.plain), _ANY_KERNEL, builtin_formats)
    except PolicyError as e:
        return [doc.warning(tuple(e.path), "engine-unsupported",
                            f"Palisade agents cannot load this policy: {e.message}")]
    if not reasons:
        return []
    return [doc.warning(("spec",), "engine-unsupported",
                        "Palisade agents will refuse this policy on any kernel: " + "; ".join(reasons))]


def _any_kernel() -> Any:
    from bpf.compile import Features

    return Features(kprobes=True, lsm=True)


_ANY_KERNEL = _any_kernel()


def _check_inline(rule: Document) -> list[Finding]:
    """Schema and Tetragon checks of a custom rule's inline policy, located inside the rule's file."""
    from reconciler.checks.tpcheck import check_policy
    from reconciler.repository.schema import check_document

    node = rule.node["spec"]["policy"]
    plain = dict(rule.plain["spec"]["policy"])
    plain.setdefault("apiVersion", loader.TETRAGON_API)
    plain.setdefault("kind", "TracingPolicy")
    plain.setdefault("metadata", {"name": rule.name})
    inline = Document(rule.path, rule.index, node, plain)
    found = check_document(inline)
    if has_errors(found):
        return found
    found += check_policy(inline)
    return found if has_errors(found) else found + engine_support(inline)


def validate(repo: Path, rev: str | None = None, base: str | None = None, *,
             pending_approvals: bool = False, today: _dt.date | None = None, history: bool = True,
             load: Callable[[str], PolicyRepository] | None = None,
             accepted: Acceptances | None = None, now: _dt.datetime | None = None) -> Report:
    """Validate the work tree (rev None, no base) or a git revision, with history when a base is known.

    `history=False` skips history checks (the first commit a reconciler accepts has
    nothing to be compared with); `load` lets a caller share a cache of loaded revisions;
    `accepted` (the reconciler's ledger) makes observation time run from acceptance, on
    the clock `now`.
    """
    if base is not None and rev is None:
        rev = "HEAD"
    snapshot = source.from_worktree(repo) if rev is None else source.from_git(repo, rev)
    report = validate_snapshot(snapshot, today)
    if snapshot.revision is None or not history:
        return report
    if base is None:
        parent = source.parent(repo, snapshot.revision)
        if parent is None:
            return report  # the first commit: nothing to compare with
        base = parent
    else:
        base = source.resolve(repo, base)
    from reconciler.checks import history as _history

    findings = list(report.findings)
    findings += _history.check(repo, base, snapshot.revision,
                               load=load or (lambda r: loader.load_revision(repo, r)[0]),
                               pending_approvals=pending_approvals, accepted=accepted, now=now)
    return Report(tuple(sorted(set(findings))), report.repository, snapshot.revision, base, report.rendered)

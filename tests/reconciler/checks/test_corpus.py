"""Tetragon's own example policies pass Palisade's TracingPolicy schema and load-time checks.

The corpus (../shared/tetragon-corpus/examples) mixes TracingPolicies with other
files (Pods, EventChecker specs, Tetragon configuration); only documents of kind
TracingPolicy or TracingPolicyNamespaced count, and its index
(examples_index.tsv) says how many there are, so a parser that silently skips
files cannot make this test pass.
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from reconciler.checks import tpcheck
from reconciler.findings import Severity
from reconciler.repository import schema, source
from reconciler.repository.source import Document

POLICY_KINDS = ("TracingPolicy", "TracingPolicyNamespaced")


def _policies(corpus: Path) -> list[Document]:
    docs: list[Document] = []
    for f in sorted((corpus / "examples").rglob("*")):
        if f.suffix not in (".yaml", ".yml") or not f.is_file():
            continue
        rel = f.relative_to(corpus).as_posix()
        parsed, _ = source.parse_file(source.SourceFile(rel, f.read_bytes()))
        docs += [d for d in parsed if d.kind in POLICY_KINDS]
    return docs


def _indexed(corpus: Path) -> Counter[str]:
    """How many policy documents the corpus index lists per file (under examples/ only)."""
    with (corpus / "examples_index.tsv").open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return Counter(r["path"] for r in rows if r["kind"] in POLICY_KINDS and r["path"].startswith("examples/"))


def test_every_indexed_policy_is_parsed(corpus: Path) -> None:
    found = Counter(d.path for d in _policies(corpus))
    expected = _indexed(corpus)
    assert sum(expected.values()) >= 80
    missing = {p: n for p, n in expected.items() if found[p] < n}
    assert missing == {}, f"policies the parser did not return: {missing}"


def test_every_corpus_policy_passes_the_schema(corpus: Path) -> None:
    failures = [f.text() for d in _policies(corpus) for f in schema.check_document(d)]
    assert failures == [], "\n".join(failures)


def test_corpus_policies_pass_the_tetragon_checks(corpus: Path) -> None:
    """No errors; warnings (duplicate hooks, ignored return selectors) are advice, listed on failure."""
    findings = [f for d in _policies(corpus) for f in tpcheck.check_policy(d)]
    errors = [f.text() for f in findings if f.severity is Severity.ERROR]
    assert errors == [], "\n".join(errors)


def test_corpus_covers_every_hook_kind_the_checks_handle(corpus: Path) -> None:
    """The corpus exercises kprobes, tracepoints, lsmhooks, uprobes and usdts, so passing it means something."""
    kinds = {k for d in _policies(corpus) for k in (d.plain.get("spec") or {}) if k in tpcheck.HOOK_KINDS}
    assert {"kprobes", "tracepoints", "lsmhooks", "uprobes", "usdts"} <= kinds

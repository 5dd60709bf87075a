"""Semantic checks: references, names, templates, exceptions, staging — each pointing at its line."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from reconciler.checks import semantics
from reconciler.repository import loader, source

TODAY = dt.date(2026, 11, 21)


def _check(root: Path, today: dt.date = TODAY) -> list[tuple[str, int, str, str]]:
    docs, findings = source.parse(source.from_worktree(root))
    repo, more = loader.build(docs)
    out = findings + more + semantics.check(repo, docs, today)
    return [(f.file, f.line, f.code, str(f.severity)) for f in out]


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_example_is_clean(example_copy: Path) -> None:
    assert _check(example_copy) == []


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        ("enforcement/web-lockdown.yaml", "pack: web-lockdown", "pack: web-lockdwn",
         ("enforcement/web-lockdown.yaml", 6, "unknown-pack", "error")),
        ("enforcement/web-lockdown.yaml", "{group: canary}", "{group: canaries}",
         ("enforcement/web-lockdown.yaml", 8, "unknown-group", "error")),
        ("rules/kernel-hardening.yaml", "scope: {group: web}", "scope: {group: webz}",
         ("rules/kernel-hardening.yaml", 21, "unknown-group", "error")),
        ("enforcement/baseline-observe.yaml", "state: observe", "state: enforced",
         ("enforcement/baseline-observe.yaml", 9, "not-enforcement-capable", "error")),
        ("rules/kernel-hardening.yaml", "template: block-kmod-load", "template: block-kmod",
         ("rules/kernel-hardening.yaml", 7, "template", "error")),
        ("rules/kernel-hardening.yaml", "directories: [/tmp, /var/tmp, /dev/shm]", "directories: [tmp]",
         ("rules/kernel-hardening.yaml", 37, "template", "error")),
        ("enforcement/web-lockdown.yaml", "{group: web}", "{group: canary}",
         ("enforcement/web-lockdown.yaml", 10, "duplicate-scope", "error")),
        ("staging/default.yaml", "groups: [canary]", "rest: true",
         ("staging/default.yaml", 10, "rest-not-last", "error")),
        ("palisade.yaml", "key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIP0",
         "key: not-a-key AAAAC3NzaC1lZDI1NTE5AAAAIIP0",
         ("palisade.yaml", 13, "reviewer-key", "error")),
        ("rules/kernel-hardening.yaml", "name: no-exec-from-tmp", "name: web-exec-allowlist",
         ("rules/kernel-hardening.yaml", 31, "duplicate-name", "error")),
    ],
)
def test_semantic_errors_point_at_the_node(example_copy: Path, file: str, old: str, new: str,
                                           expected: tuple[str, int, str, str]) -> None:
    _edit(example_copy / file, old, new)
    assert _check(example_copy) == [expected]


def test_exception_expiry_warns_ahead_and_after(example_copy: Path) -> None:
    ahead = _check(example_copy, dt.date(2027, 3, 25))
    assert ahead == [("rules/kernel-hardening.yaml", 26, "exception-expiring", "warning")]
    after = _check(example_copy, dt.date(2027, 4, 1))
    assert after == [("rules/kernel-hardening.yaml", 26, "exception-expired", "warning")]

"""Packs and rules render to concrete, deterministic TracingPolicies."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from reconciler.repository import loader, render, source
from wire.values import Scope, State


def _repo(root: Path):
    docs, _ = source.parse(source.from_worktree(root))
    return loader.build(docs)[0]


def test_every_assignment_and_rule_renders(example_copy: Path) -> None:
    rendered = render.render(_repo(example_copy), dt.date(2026, 11, 21))
    keys = {(p.name, p.scope.key, str(p.state)) for p in rendered}
    assert ("web-exec-allowlist", "group:canary", "enforced") in keys
    assert ("web-exec-allowlist", "group:web", "enforce_ready") in keys
    assert ("no-exec-from-tmp", "group:web", "observe") in keys
    assert len(rendered) == 10


def test_rendering_is_deterministic(example_copy: Path) -> None:
    a = render.render(_repo(example_copy), dt.date(2026, 11, 21))
    b = render.render(_repo(example_copy), dt.date(2026, 11, 21))
    assert [(p.name, p.sha256) for p in a] == [(p.name, p.sha256) for p in b]


def test_exceptions_apply_until_they_expire(example_copy: Path) -> None:
    repo = _repo(example_copy)

    def ptrace_doc(day: dt.date) -> dict:
        p = next(p for p in render.render(repo, day) if p.name == "no-ptrace-attach")
        return yaml.safe_load(p.yaml)

    before = ptrace_doc(dt.date(2027, 3, 31))["spec"]["tracepoints"][0]["selectors"]
    assert before[0] == {"matchBinaries": [{"operator": "In", "values": ["/usr/bin/gdb"]}],
                         "matchActions": [{"action": "NoPost"}]}
    after = ptrace_doc(dt.date(2027, 4, 1))["spec"]["tracepoints"][0]["selectors"]
    assert len(after) == 1 and after[0]["matchActions"] == [{"action": "Sigkill"}]


def test_rendered_yaml_is_a_tracing_policy(example_copy: Path) -> None:
    for p in render.render(_repo(example_copy)):
        doc = yaml.safe_load(p.yaml)
        assert doc["apiVersion"] == "cilium.io/v1alpha1"
        assert doc["metadata"]["name"] == p.name
        assert isinstance(p.scope, Scope) and isinstance(p.state, State)

"""Documents → typed model, and where each kind of file belongs."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from reconciler.repository import loader, source
from reconciler.repository.model import UnitKey
from wire.values import Scope, State


def _build(root: Path):
    docs, findings = source.parse(source.from_worktree(root))
    repo, more = loader.build(docs)
    return repo, findings + more


def test_example_repository_model(example_copy: Path) -> None:
    repo, findings = _build(example_copy)
    assert findings == []
    assert repo.config is not None and [r.email for r in repo.config.reviewers] == [
        "alice@example.com", "bob@example.com"]
    assert repo.config.min_observation == dt.timedelta(hours=72)
    assert {p.name for p in repo.packs} == {"baseline-observe", "web-lockdown", "egress-guard"}
    units = repo.units()
    assert units[UnitKey("pack", "web-lockdown", Scope(group="canary"))] is State.ENFORCED
    assert units[UnitKey("rule", "no-exec-from-tmp", Scope(group="web"))] is State.OBSERVE
    rule = next(r for r in repo.rules if r.name == "no-ptrace-attach")
    assert rule.exceptions[0].expires == dt.date(2027, 3, 31)
    assert (rule.where.path, rule.where.line) == ("rules/kernel-hardening.yaml", 22)


def test_wrong_kind_in_folder(example_copy: Path) -> None:
    (example_copy / "rules" / "group.yaml").write_text(
        "apiVersion: palisade.dev/v1\nkind: Group\nmetadata:\n  name: stray\nspec: {}\n")
    _, findings = _build(example_copy)
    assert [(f.file, f.line, f.code) for f in findings] == [("rules/group.yaml", 2, "wrong-folder")]
    assert "expected Rule" in findings[0].message


def test_pack_folder_without_pack_yaml(example_copy: Path) -> None:
    (example_copy / "packs" / "web-lockdown" / "pack.yaml").unlink()
    repo, findings = _build(example_copy)
    assert [f.code for f in findings] == ["pack-missing"]
    assert "web-lockdown" not in {p.name for p in repo.packs}


def test_pack_name_must_match_folder(example_copy: Path) -> None:
    p = example_copy / "packs" / "egress-guard" / "pack.yaml"
    p.write_text(p.read_text().replace("name: egress-guard", "name: egress"))
    _, findings = _build(example_copy)
    assert [(f.code, f.line) for f in findings] == [("pack-name", 4)]

"""Reading repositories from a work tree and from git, with bad input turned into findings."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import SourceError
from reconciler.repository import source


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout


def test_worktree_reads_only_policy_files(example_copy: Path) -> None:
    (example_copy / "README.md").write_text("# not policy\n")
    (example_copy / "packs" / "web-lockdown" / "notes.txt").write_text("ignored\n")
    paths = {f.path for f in source.from_worktree(example_copy).files}
    assert "palisade.yaml" in paths
    assert "packs/web-lockdown/allowlist.yaml" in paths
    assert "README.md" not in paths and "packs/web-lockdown/notes.txt" not in paths


def test_git_revision_matches_worktree(example_copy: Path) -> None:
    _git(example_copy, "init", "-q", "-b", "main")
    _git(example_copy, "add", "-A")
    _git(example_copy, "commit", "-qm", "init")
    from_tree = {f.path: f.data for f in source.from_worktree(example_copy).files}
    snap = source.from_git(example_copy, "HEAD")
    assert {f.path: f.data for f in snap.files} == from_tree
    assert snap.revision == _git(example_copy, "rev-parse", "HEAD").strip()


def test_unknown_revision_is_a_source_error(example_copy: Path) -> None:
    _git(example_copy, "init", "-q", "-b", "main")
    with pytest.raises(SourceError, match="does not name a commit"):
        source.from_git(example_copy, "no-such-branch")


def test_symlink_outside_repo_is_a_finding(example_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.yaml"
    outside.write_text("kind: Rule\n")
    (example_copy / "rules" / "evil.yaml").symlink_to(outside)
    _git(example_copy, "init", "-q", "-b", "main")
    _git(example_copy, "add", "-A")
    _git(example_copy, "commit", "-qm", "init")
    for snap in (source.from_worktree(example_copy), source.from_git(example_copy, "HEAD")):
        _, findings = source.parse(snap)
        assert [(f.file, f.code) for f in findings] == [("rules/evil.yaml", "unreadable")]
        assert "outside the repository" in findings[0].message


@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (b"", "empty", 0),
        (b"# only a comment\n", "empty", 0),
        (b"\x00\x01\x02binary", "binary", 0),
        (b"\xff\xfe not utf8", "encoding", 0),
        (b"a: 1\na: 2\n", "duplicate-key", 2),
        (b"a: [1, 2\n", "yaml", 2),
        (b"key: value\n  bad indent: here\n", "yaml", 2),
    ],
)
def test_bad_files_become_findings(data: bytes, code: str, line: int) -> None:
    docs, findings = source.parse_file(source.SourceFile("rules/x.yaml", data))
    assert docs == []
    assert [(f.code, f.line) for f in findings] == [(code, line)]


def test_oversized_file_is_refused_not_parsed(example_copy: Path) -> None:
    big = example_copy / "rules" / "big.yaml"
    big.write_bytes(b"# " + b"x" * (10 * 1024 * 1024) + b"\n")
    snap = source.from_worktree(example_copy)
    _, findings = source.parse(snap)
    assert [(f.file, f.code) for f in findings] == [("rules/big.yaml", "unreadable")]
    assert "limit" in findings[0].message


def test_locate_points_at_nodes() -> None:
    text = (b"apiVersion: palisade.dev/v1\nkind: Rule\nmetadata:\n  name: r\nspec:\n"
            b"  state: enforced\n  list:\n    - a\n    - b\n")
    (doc,), _ = source.parse_file(source.SourceFile("rules/r.yaml", text))
    assert doc.locate(("spec", "state")) == (6, 10)
    assert doc.locate(("spec", "list", 1)) == (9, 7)
    assert doc.locate(("spec", "missing", "deeper")) == (5, 1)
    assert doc.kind == "Rule" and doc.name == "r"

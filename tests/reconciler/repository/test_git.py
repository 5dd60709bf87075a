"""The one git wrapper (reconciler/repository/git.py): each failure kind is its class, told by what git did.

Real git throughout: a real repository, a real missing revision, a real plain directory, a PATH
without git, a real stale lock that makes git wait.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.errors import SourceError
from reconciler.repository import signatures, source
from reconciler.repository.git import (
    Git,
    GitError,
    GitFailed,
    GitMissing,
    GitTimeout,
    NotARepository,
    UnknownRevision,
)
from support.gitrepo import GitRepo

PALISADE = str(Path(__file__).resolve().parents[3] / ".venv" / "bin" / "palisade")


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo.init(tmp_path / "r")
    r.write("palisade.yaml", "kind: Repository\n")
    r.commit("first")
    return r


def test_every_kind_is_a_source_error_with_exit_2() -> None:
    for kind in (GitMissing, NotARepository, UnknownRevision, GitTimeout, GitFailed):
        assert issubclass(kind, GitError) and issubclass(kind, SourceError)
        assert kind.exit_code == 2


def test_revisions_resolve_and_a_missing_one_is_unknown(repo: GitRepo) -> None:
    git = Git(repo.path)
    head = repo.git("rev-parse", "HEAD")
    assert git.commit("HEAD") == head and git.find_commit("main") == head
    assert git.find_commit("no-such-branch") is None
    with pytest.raises(UnknownRevision, match="does not name a commit") as e:
        git.commit("no-such-branch")
    assert e.value.rev == "no-such-branch" and str(repo.path) in str(e.value)
    # every reader says the same
    with pytest.raises(UnknownRevision):
        source.from_git(repo.path, "no-such-branch")
    with pytest.raises(UnknownRevision):
        signatures.verify(repo.path, "no-such-branch", [])
    with pytest.raises(UnknownRevision):
        git.is_ancestor("no-such-branch", head)
    assert git.is_ancestor(head, head) and git.merge_base(head, head) == head


def test_an_empty_repository_has_no_revisions(tmp_path: Path) -> None:
    empty = GitRepo.init(tmp_path / "empty")
    with pytest.raises(UnknownRevision):
        Git(empty.path).commit("HEAD")


def test_trees_and_objects(repo: GitRepo, tmp_path: Path) -> None:
    repo.write("rules/r.yaml", "kind: Rule\n")
    repo.commit("second")
    git = Git(repo.path)
    rows = {e.path: e for e in git.ls_tree("HEAD")}
    assert set(rows) == {"palisade.yaml", "rules/r.yaml"} and rows["rules/r.yaml"].size == len("kind: Rule\n")
    assert [e.path for e in git.ls_tree("HEAD", "rules")] == ["rules/r.yaml"]
    blobs = git.cat_blobs([rows["rules/r.yaml"].sha, rows["palisade.yaml"].sha, rows["rules/r.yaml"].sha])
    assert blobs == {rows["rules/r.yaml"].sha: b"kind: Rule\n", rows["palisade.yaml"].sha: b"kind: Repository\n"}
    with pytest.raises(GitFailed, match=f"object {'0' * 40} is missing"):
        git.cat_blobs(["0" * 40])
    # histories that share nothing have no merge base
    other = GitRepo.init(tmp_path / "other")
    other.commit("unrelated", allow_empty=True)
    repo.git("fetch", "-q", str(other.path), "main:unrelated")
    assert git.merge_base("main", "unrelated") is None and not git.is_ancestor("main", "unrelated")


def test_a_plain_directory_is_not_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for call in (lambda g: g.commit("HEAD"), lambda g: g.text("log"), lambda g: g.ls_tree("HEAD")):
        with pytest.raises(NotARepository, match="not a git repository") as e:
            call(Git(plain))
        assert e.value.repo == plain and str(plain) in str(e.value)
    with pytest.raises(NotARepository, match="no such directory"):
        Git(tmp_path / "missing").commit("HEAD")
    # a failure of any kind is None for the callers that only ask
    assert Git(plain).try_text("rev-parse", "HEAD") is None
    assert Git(plain).find_blob("HEAD", "palisade.yaml") is None


def test_another_failure_carries_gits_own_words(repo: GitRepo) -> None:
    with pytest.raises(GitFailed) as e:
        Git(repo.path).text("log", "no-such-branch")
    assert e.value.returncode == 128 and "unknown revision" in e.value.stderr
    assert str(e.value).startswith(f"{repo.path}: git log failed: ")
    with pytest.raises(GitFailed, match=r"cannot read missing\.yaml at HEAD: git cat-file failed"):
        Git(repo.path).blob("HEAD", "missing.yaml")
    assert Git(repo.path).blob("HEAD", "palisade.yaml") == b"kind: Repository\n"
    # the repository is fine: no second guess says otherwise
    assert not isinstance(e.value, NotARepository)


def test_git_absent_from_path(repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(GitMissing, match="git is not installed or not on PATH") as e:
        Git(repo.path).commit("HEAD")
    assert str(empty) in str(e.value)
    with pytest.raises(GitMissing):  # the callers that only ask still say git is missing
        Git(repo.path).try_text("rev-parse", "HEAD")
    # the CLI prints it and exits 2
    r = subprocess.run([PALISADE, "validate", "--repo", str(repo.path), "--rev", "HEAD"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PATH": str(empty)})
    assert r.returncode == 2 and "git is not installed" in r.stderr and "Traceback" not in r.stderr


def test_a_hung_git_is_stopped(repo: GitRepo) -> None:
    # a stale lock: git retries for a minute, the wrapper stops it after half a second
    lock = repo.path / ".git" / "refs" / "heads" / "waiting.lock"
    lock.write_text("")
    head = repo.git("rev-parse", "HEAD")
    t0 = time.monotonic()
    with pytest.raises(GitTimeout, match=r"git update-ref did not finish within 0\.5 s") as e:
        Git(repo.path, timeout=0.5).run("-c", "core.filesRefLockTimeout=60000", "update-ref",
                                        "refs/heads/waiting", head)
    assert time.monotonic() - t0 < 10 and str(repo.path) in str(e.value)
    lock.unlink()
    assert Git(repo.path).find_commit("refs/heads/waiting") is None


def test_the_environment_is_hardened(repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = GitRepo.init(tmp_path / "other")
    other.commit("other", allow_empty=True)
    # a hook's environment points git elsewhere; the wrapper still reads the repository it was given
    monkeypatch.setenv("GIT_DIR", str(other.path / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other.path))
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("GIT_PAGER", "less")
    git = Git(repo.path)
    assert git.commit("HEAD") == repo.git("rev-parse", "HEAD") != other.git("rev-parse", "HEAD")
    assert git.text("var", "GIT_PAGER").strip() == "cat"
    env = dict(line.split("=", 1) for line in git.text("-c", "alias.env=!env", "env").splitlines() if "=" in line)
    assert env["LC_ALL"] == "C" and env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_TERMINAL_PROMPT"] == "0"
    # objects directories are the caller's to add (palisade plan writes its snapshot to a scratch one)
    monkeypatch.setenv("GIT_ALTERNATE_OBJECT_DIRECTORIES", str(other.path / ".git" / "objects"))
    env = dict(line.split("=", 1) for line in git.text("-c", "alias.env=!env", "env").splitlines() if "=" in line)
    assert env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] == str(other.path / ".git" / "objects")

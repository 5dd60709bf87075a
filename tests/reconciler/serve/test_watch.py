"""Change detection on real git repositories (inotify through watchfiles)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.serve.watch import Changes, RefWatcher, local_git_dir
from support.gitrepo import GitRepo


@pytest.fixture()
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo.init(tmp_path / "repo")
    r.write("a.txt", "1\n")
    r.commit("first")
    return r


def _settle(changes: Changes) -> None:
    """Let the watcher start and swallow anything already reported."""
    time.sleep(0.5)
    changes.wait(0)


def test_a_commit_wakes_the_loop(repo: GitRepo) -> None:
    changes = Changes()
    git_dir = local_git_dir(str(repo.path))
    assert git_dir == repo.path / ".git"
    with RefWatcher(git_dir, changes):
        _settle(changes)
        assert not changes.wait(0.3), "woken without a change"
        repo.write("a.txt", "2\n")
        t0 = time.monotonic()
        repo.commit("second")
        assert changes.wait(3)
        assert time.monotonic() - t0 < 1.0


def test_a_branch_that_lives_only_in_packed_refs_is_watched(repo: GitRepo) -> None:
    changes = Changes()
    git_dir = repo.path / ".git"
    with RefWatcher(git_dir, changes):
        _settle(changes)
        repo.git("pack-refs", "--all", "--prune")
        assert not (git_dir / "refs" / "heads" / "main").exists()
        assert changes.wait(3)
        _settle(changes)
        # A push that rewrites only packed-refs (what some servers and `git gc` leave) must be seen too.
        head = repo.head()
        text = (git_dir / "packed-refs").read_text()
        (git_dir / "packed-refs.lock").write_text(text.replace(head, "0" * 40))
        (git_dir / "packed-refs.lock").rename(git_dir / "packed-refs")
        assert changes.wait(3)


def test_objects_and_lock_files_alone_do_not_wake(repo: GitRepo) -> None:
    changes = Changes()
    git_dir = repo.path / ".git"
    with RefWatcher(git_dir, changes):
        _settle(changes)
        repo.git("hash-object", "-w", "--stdin", input="loose object\n")
        (git_dir / "refs" / "heads" / "main.lock").write_text("x\n")
        (git_dir / "refs" / "heads" / "main.lock").unlink()
        assert not changes.wait(0.8)


def test_local_git_dir_kinds(repo: GitRepo, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    repo.git("clone", "-q", "--bare", str(repo.path), str(bare))
    assert local_git_dir(str(bare)) == bare
    linked = tmp_path / "linked"
    repo.git("worktree", "add", "-q", str(linked), "-b", "side")
    assert local_git_dir(str(linked)) == repo.path / ".git"  # branches live in the common directory
    assert local_git_dir(f"file://{repo.path}") is None  # a URL is polled, not watched
    assert local_git_dir("https://example.com/policy.git") is None
    assert local_git_dir(str(tmp_path / "missing")) is None
    (tmp_path / "plain").mkdir()
    assert local_git_dir(str(tmp_path / "plain")) is None

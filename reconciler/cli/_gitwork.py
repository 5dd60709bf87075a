"""Git plumbing for `palisade plan` and `palisade advance`: commits made without touching the work tree.

Both commands leave the user's checkout exactly as it was: `advance` writes a
blob, a tree and a commit through a private index file and points a new branch
at it; `plan` snapshots uncommitted changes as a commit whose objects go to a
temporary object directory (the repository's own objects stay readable as an
alternate), so not even `.git/objects` changes.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from reconciler.errors import SourceError, UsageError
from reconciler.repository.git import Git
from reconciler.repository.source import FOLDERS, ROOT_FILE

#: The branches a pull request usually targets, in order of preference.
TARGETS = ("origin/main", "main", "origin/master", "master")

_FALLBACK_IDENT = {"GIT_AUTHOR_NAME": "palisade", "GIT_AUTHOR_EMAIL": "palisade@localhost",
                   "GIT_COMMITTER_NAME": "palisade", "GIT_COMMITTER_EMAIL": "palisade@localhost"}


def git(repo: Path, *args: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None) -> str:
    """stdout of a git command that must succeed, stripped (one line answers: ids, names)."""
    return Git(Path(repo)).text(*args, env=env, stdin=stdin).strip()


def try_git(repo: Path, *args: str) -> str | None:
    """stdout of a git command, stripped, or None when git reports failure."""
    out = Git(Path(repo)).try_text(*args)
    return out.strip() if out is not None else None


def require_repo(repo: Path) -> None:
    if not Path(repo).is_dir():
        raise SourceError(f"{repo}: not a directory; pass --repo with the policy repository's path")
    git(repo, "rev-parse", "--git-dir")


def identity(repo: Path) -> dict[str, str]:
    """Extra environment for commits: nothing when git knows who the user is, else a placeholder identity."""
    if try_git(repo, "var", "GIT_AUTHOR_IDENT") is not None and try_git(repo, "var", "GIT_COMMITTER_IDENT"):
        return {}
    return dict(_FALLBACK_IDENT)


def target_branch(repo: Path) -> str | None:
    """The first of origin/main, main, origin/master, master that exists."""
    return next((t for t in TARGETS if try_git(repo, "rev-parse", "--verify", "--quiet", f"{t}^{{commit}}")), None)


@contextlib.contextmanager
def scratch_objects(repo: Path) -> Iterator[None]:
    """Within the block, git (this process and its children) writes new objects to a temporary
    directory and still reads the repository's own; the repository is left untouched."""
    objects = git(repo, "rev-parse", "--path-format=absolute", "--git-path", "objects")
    saved = {k: os.environ.get(k) for k in ("GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES")}
    with tempfile.TemporaryDirectory(prefix="palisade-objects-") as tmp:
        alternates = [objects, *filter(None, [saved["GIT_OBJECT_DIRECTORY"]])]
        os.environ["GIT_OBJECT_DIRECTORY"] = tmp
        os.environ["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = os.pathsep.join(alternates)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def snapshot_worktree(repo: Path, message: str) -> tuple[str, bool]:
    """A commit of the policy files as they are in the work tree, on top of HEAD: (commit id, dirty).

    When nothing differs from HEAD it is HEAD itself (dirty False). Call inside
    `scratch_objects`, so the commit and its blobs are never written into the repository.
    """
    head = git(repo, "rev-parse", "--verify", "HEAD^{commit}")
    with tempfile.TemporaryDirectory(prefix="palisade-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(repo, "read-tree", head, env=env)
        tracked = set(git(repo, "ls-tree", "--name-only", head).splitlines())
        paths = [p for p in (ROOT_FILE, *FOLDERS) if (Path(repo) / p).exists() or p in tracked]
        if paths:
            git(repo, "add", "-A", "--", *paths, env=env)
        tree = git(repo, "write-tree", env=env)
    if tree == git(repo, "rev-parse", f"{head}^{{tree}}"):
        return head, False
    commit = git(repo, "commit-tree", tree, "-p", head, "-m", message, env=identity(repo))
    return commit, True


def commit_files(repo: Path, parent: str, files: Mapping[str, bytes], message: str) -> str:
    """A new commit on `parent` whose tree is `parent`'s with `files` (path → content) replaced or added."""
    with tempfile.TemporaryDirectory(prefix="palisade-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(repo, "read-tree", parent, env=env)
        for path, data in files.items():
            blob = git(repo, "hash-object", "-w", "--stdin", stdin=data)
            mode = _mode(repo, parent, path)
            git(repo, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)
        tree = git(repo, "write-tree", env=env)
    # signed like `git commit` would sign it: who wrote an advance is proven by its signature
    sign = ["-S"] if try_git(repo, "config", "--bool", "commit.gpgSign") == "true" else []
    return git(repo, "commit-tree", *sign, tree, "-p", parent, "-F", "-", env=identity(repo),
               stdin=message.encode())


def _mode(repo: Path, rev: str, path: str) -> str:
    out = try_git(repo, "ls-tree", rev, "--", path)
    mode = out.split()[0] if out else "100644"
    if mode == "120000":
        raise UsageError(f"{path} is a symbolic link; edit the file it points to")
    return mode if mode in ("100644", "100755") else "100644"


def create_branch(repo: Path, name: str, commit: str) -> None:
    """Create branch `name` at `commit`; refuse (exit 2) when it exists or is not a valid name."""
    if try_git(repo, "check-ref-format", "--branch", name) is None:
        raise UsageError(f"{name!r} is not a valid branch name")
    if try_git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}") is not None:
        raise UsageError(f"branch {name} already exists; delete it (git branch -D {name}) or pass --branch")
    # the empty old value makes git refuse if the branch appeared meanwhile
    git(repo, "update-ref", f"refs/heads/{name}", commit, "")


def changed_paths(repo: Path, paths: Sequence[str]) -> list[str]:
    """Those of `paths` with uncommitted changes in the work tree or the index."""
    out = try_git(repo, "status", "--porcelain", "--", *paths) or ""
    return [line[3:] for line in out.splitlines() if line]

"""Real git repositories and real SSH keys for tests.

Everything runs the real `git` and `ssh-keygen` binaries in a temporary
directory; nothing is mocked. Typical use::

    from support.gitrepo import GitRepo, Person, make_key

    alice = Person("Alice", "alice@example.com")
    key = make_key(tmp_path / "keys", "alice")
    repo = GitRepo.init(tmp_path / "repo")
    repo.write("palisade.yaml", "...")
    base = repo.commit("initial", author=alice)
    repo.branch("feature")
    repo.write("rules/r.yaml", "...")
    repo.commit("advance", author=dev)
    repo.checkout("main")
    repo.advance(days=4)
    head = repo.merge("feature", author=alice, sign=key)   # a --no-ff merge, SSH-signed

Time is a fake clock owned by the repository: each commit is stamped with
`repo.now` (author and committer date) and the clock then ticks one minute, so
commits are strictly ordered; `advance()` jumps it forward. The clock starts a
year before the real time, so commit times are in the past (code under test may
cap commit times at the wall clock).

The helper isolates git from the machine's configuration (no global or system
config, no hooks, no signing unless asked), so tests behave the same everywhere.
"""
from __future__ import annotations

import datetime as _dt
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GitRepo", "Key", "Person", "make_key"]


@dataclass(frozen=True)
class Person:
    """Who authors or commits: a git identity."""

    name: str
    email: str


@dataclass(frozen=True)
class Key:
    """An SSH key pair made by ssh-keygen: `path` is the private key, `public` the `.pub` line."""

    path: Path
    public: str

    @property
    def public_path(self) -> Path:
        return self.path.with_name(self.path.name + ".pub")

    @property
    def fingerprint(self) -> str:
        """`SHA256:...`, as ssh-keygen (and git's `%GF`) print it."""
        out = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(self.public_path)],
            capture_output=True, text=True, check=True,
        ).stdout
        return out.split()[1]


def make_key(directory: Path, name: str, comment: str | None = None) -> Key:
    """A fresh passphrase-less ed25519 key pair `directory/name` (+ `.pub`)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment or name, "-f", str(path)],
        check=True, capture_output=True,
    )
    return Key(path, path.with_name(name + ".pub").read_text().strip())


#: The identity used when a test does not care who commits.
SOMEONE = Person("Test Runner", "runner@example.com")


class GitRepo:
    """A real git repository in a directory, with a fake clock for commit dates."""

    def __init__(self, path: Path, now: _dt.datetime | None = None) -> None:
        self.path = Path(path)
        self.now = now or (_dt.datetime.now(_dt.UTC) - _dt.timedelta(days=365)).replace(microsecond=0)

    # --- setting up --------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path, branch: str = "main") -> GitRepo:
        """`git init` a new repository at `path` whose first branch is `branch`."""
        path.mkdir(parents=True, exist_ok=True)
        repo = cls(path)
        repo.git("init", "-q", "-b", branch)
        return repo

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment every git command of the helper runs with (isolated from the machine)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update({
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
        })
        env.update(extra or {})
        return env

    def git(self, *args: str, env: Mapping[str, str] | None = None, input: str | None = None) -> str:
        """Run git in the repository; return stdout (stripped); raise with git's stderr on failure."""
        proc = subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True, text=True, env=self.env(env), input=input, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip()

    # --- the clock ---------------------------------------------------------------------------

    def advance(self, delta: _dt.timedelta | None = None, **kwargs: float) -> _dt.datetime:
        """Move the clock forward by `delta` or by timedelta keyword arguments (`days=3`)."""
        self.now += delta if delta is not None else _dt.timedelta(**kwargs)
        return self.now

    def _dates(self, date: _dt.datetime | None) -> dict[str, str]:
        when = date or self.now
        stamp = f"{int(when.timestamp())} +0000"
        if date is None:
            self.now += _dt.timedelta(minutes=1)
        return {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}

    # --- files -------------------------------------------------------------------------------

    def write(self, relpath: str, text: str | bytes) -> Path:
        """Create or overwrite a file (parents made as needed) and stage it."""
        full = self.path / relpath
        full.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            full.write_bytes(text)
        else:
            full.write_text(text, encoding="utf-8")
        self.git("add", "--", relpath)
        return full

    def delete(self, relpath: str) -> None:
        """Remove a file or folder from the work tree and the index."""
        self.git("rm", "-r", "-q", "--", relpath)

    def read(self, relpath: str, rev: str | None = None) -> str:
        """A file's text in the work tree, or at `rev`."""
        if rev is None:
            return (self.path / relpath).read_text(encoding="utf-8")
        return self.git("show", f"{rev}:{relpath}")

    # --- commits -----------------------------------------------------------------------------

    def commit(
        self,
        message: str,
        *,
        author: Person = SOMEONE,
        committer: Person | None = None,
        sign: Key | None = None,
        date: _dt.datetime | None = None,
        allow_empty: bool = False,
    ) -> str:
        """Commit what is staged; return the new commit id.

        `sign` makes an SSH signature with that key (`gpg.format=ssh`). The date
        defaults to the repository clock (which then ticks a minute).
        """
        who = committer or author
        env = {
            "GIT_AUTHOR_NAME": author.name, "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": who.name, "GIT_COMMITTER_EMAIL": who.email,
            **self._dates(date),
        }
        args = [*_signing(sign), "commit", "-q", "--no-verify", "-m", message]
        if sign is not None:
            args.append("-S")
        if allow_empty:
            args.append("--allow-empty")
        self.git(*args, env=env)
        return self.head()

    def merge(
        self,
        branch: str,
        *,
        author: Person = SOMEONE,
        sign: Key | None = None,
        date: _dt.datetime | None = None,
        message: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        """`git merge --no-ff branch` into the current branch, by `author`, optionally SSH-signed.

        `extra` files are written into the merge commit itself (`git merge --no-commit`, edit,
        commit): an "evil merge", whose own changes no branch commit shows."""
        env = {
            "GIT_AUTHOR_NAME": author.name, "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": author.name, "GIT_COMMITTER_EMAIL": author.email,
            **self._dates(date),
        }
        signed = ["-S"] if sign is not None else []
        msg = message or f"Merge {branch}"
        if extra is None:
            self.git(*_signing(sign), "merge", "-q", "--no-ff", "--no-verify", "-m", msg, *signed, branch, env=env)
            return self.head()
        self.git("merge", "-q", "--no-ff", "--no-commit", branch, env=env)
        for path, text in extra.items():
            self.write(path, text)
        self.git(*_signing(sign), "commit", "-q", "--no-verify", "-m", msg, *signed, env=env)
        return self.head()

    def branch(self, name: str, start: str = "HEAD", *, checkout: bool = True) -> None:
        """Create branch `name` at `start` and (by default) switch to it."""
        if checkout:
            self.git("checkout", "-q", "-b", name, start)
        else:
            self.git("branch", name, start)

    def checkout(self, rev: str) -> None:
        self.git("checkout", "-q", rev)

    def tamper(self, rev: str = "HEAD", *, message: str) -> str:
        """Rewrite `rev`'s message but keep its signature header, and move HEAD's branch to it.

        The result is a commit whose signature no longer matches its content
        (git reports it as a bad signature). Returns the new commit id.
        """
        raw = self.git("cat-file", "commit", rev)
        head, _, _ = raw.partition("\n\n")
        forged = self.git("hash-object", "-t", "commit", "-w", "--stdin", input=f"{head}\n\n{message}\n")
        self.git("update-ref", "HEAD", forged)
        self.git("reset", "-q", "--hard", forged)
        return forged

    # --- reading -----------------------------------------------------------------------------

    def rev(self, rev: str) -> str:
        """The full commit id `rev` names."""
        return self.git("rev-parse", "--verify", f"{rev}^{{commit}}")

    def head(self) -> str:
        return self.rev("HEAD")

    def committed_at(self, rev: str = "HEAD") -> _dt.datetime:
        """The committer timestamp of `rev` (UTC)."""
        return _dt.datetime.fromtimestamp(int(self.git("log", "-1", "--format=%ct", rev)), _dt.UTC)


def _signing(key: Key | None) -> list[str]:
    if key is None:
        return ["-c", "commit.gpgsign=false"]
    return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key.path}"]

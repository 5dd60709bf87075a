"""Running git: the one place the reconciler starts a git process.

`Git(repo)` runs `git -C repo …` with a hardened environment (set once, here):
no system configuration (`GIT_CONFIG_NOSYSTEM`), no pager, no terminal prompt (a
server must never block on a credential question), the C locale (git's messages
stay in English whatever the operator's locale), and none of the inherited
variables that would point git at another repository or index than `repo`
(`GIT_DIR`, `GIT_WORK_TREE`, `GIT_INDEX_FILE`, … as a hook sets them). Variables
that only add object directories are kept: `palisade plan` relies on them.

Every failure is one class (all `SourceError`, exit 2), told apart by what git
did, never by its wording: git is not installed (`GitMissing`), the path is no
repository (`NotARepository`, checked with a second git call only once a command
failed), a revision does not exist (`UnknownRevision`, from the methods that
look revisions up), git did not finish in time (`GitTimeout`) and anything else
(`GitFailed`, with git's own words).
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import SourceError

__all__ = [
    "Completed", "Git", "GitError", "GitFailed", "GitMissing", "GitTimeout", "NotARepository", "TreeEntry",
    "UnknownRevision",
]

#: Local plumbing finishes in seconds; this only stops a hung git (a stale lock, a dead network mount).
TIMEOUT = 300.0

#: Set for every git process.
_HARDENED = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}
#: Inherited variables that would make `-C repo` read another repository or index (a hook's environment).
_DROPPED = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX")


class GitError(SourceError):
    """git could not do what was asked (exit 2)."""


class GitMissing(GitError):
    """The git program cannot be started."""


class NotARepository(GitError):
    """The path is not a git work tree or repository."""

    def __init__(self, repo: Path) -> None:
        missing = "" if repo.is_dir() else " (no such directory)"
        super().__init__(f"{repo}: not a git repository{missing}; pass the path of the policy repository "
                         "(a clone or a bare repository)")
        self.repo = repo


class UnknownRevision(GitError):
    """A revision names no commit of the repository."""

    def __init__(self, repo: Path, rev: str) -> None:
        super().__init__(f"{repo}: revision {rev!r} does not name a commit; check the name "
                         f"(`git -C {repo} branch -a` lists the branches)")
        self.repo, self.rev = repo, rev


class GitTimeout(GitError):
    """git ran longer than its time limit and was stopped."""


class GitFailed(GitError):
    """git exited with a status that means failure; the message carries git's own words."""

    def __init__(self, message: str, *, returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.returncode, self.stderr = returncode, stderr


@dataclass(frozen=True)
class Completed:
    """One finished git process: its exit status and output."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TreeEntry:
    """One row of `git ls-tree -r -l`: a file of a revision (size 0 for a submodule)."""

    mode: str
    type: str
    sha: str
    size: int
    path: str

    @property
    def is_symlink(self) -> bool:
        return self.mode == "120000"


@dataclass(frozen=True)
class Git:
    """git in one repository (`repo` None: no `-C`, for commands that name their own path)."""

    repo: Path | None
    timeout: float = TIMEOUT

    @classmethod
    def init_bare(cls, path: Path, *, timeout: float = TIMEOUT) -> Git:
        """Create a bare repository at `path` and return git in it."""
        cls(None, timeout).run("init", "--quiet", "--bare", str(path))
        return cls(Path(path), timeout)

    # -- running ------------------------------------------------------------------------------

    def run(self, *args: str, stdin: bytes | str | None = None, env: Mapping[str, str] | None = None,
            config: Mapping[str, str] | None = None, ok: Collection[int] | None = (0,),
            timeout: float | None = None, doing: str | None = None) -> Completed:
        """Run `git args…`; raise the failure's class unless the exit status is in `ok` (None: any).

        `env` adds variables for this call, `config` adds `-c key=value` options, `doing` says
        what the call was for in the message of a failure ("read signatures").
        """
        cmd = ["git", *(["-C", str(self.repo)] if self.repo is not None else [])]
        for key, value in (config or {}).items():
            cmd += ["-c", f"{key}={value}"]
        cmd += args
        limit = self.timeout if timeout is None else timeout
        data = stdin.encode() if isinstance(stdin, str) else stdin
        try:
            returncode, out, err = _spawn(cmd, data, _environment(env), limit)
        except FileNotFoundError:
            raise GitMissing("git is not installed or not on PATH (PATH="
                             f"{os.environ.get('PATH', '')}); install git (apt-get install git)") from None
        except PermissionError as e:
            raise GitMissing(f"git cannot be started ({e.strerror}: {e.filename}); check its installation") from None
        except subprocess.TimeoutExpired:
            raise GitTimeout(f"{self._where()}git {_sub(args)} did not finish within {limit:g} s and was stopped; "
                             "check for a stale lock file or an unreachable remote") from None
        done = Completed(tuple(args), returncode, out, err.decode("utf-8", errors="replace"))
        if ok is not None and done.returncode not in ok:
            raise self._failure(done, doing)
        return done

    def text(self, *args: str, stdin: bytes | str | None = None, env: Mapping[str, str] | None = None,
             config: Mapping[str, str] | None = None, timeout: float | None = None, doing: str | None = None) -> str:
        """stdout of a command that must succeed, as text (undecodable bytes replaced)."""
        return self.run(*args, stdin=stdin, env=env, config=config, timeout=timeout, doing=doing).text

    def try_text(self, *args: str, stdin: bytes | str | None = None, timeout: float | None = None) -> str | None:
        """stdout of a command, or None when git exits with a failure status (of any kind)."""
        done = self.run(*args, stdin=stdin, ok=None, timeout=timeout)
        return done.text if done.returncode == 0 else None

    # -- revisions ----------------------------------------------------------------------------

    def find_commit(self, rev: str) -> str | None:
        """The full id of the commit `rev` names, or None when it names none."""
        done = self.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", ok=(0, 1))
        return done.text.strip() if done.returncode == 0 else None

    def commit(self, rev: str) -> str:
        """The full id of the commit `rev` names; UnknownRevision when it names none."""
        sha = self.find_commit(rev)
        if sha is None:
            raise UnknownRevision(self._repo(), rev)
        return sha

    def is_ancestor(self, ancestor: str, commit: str) -> bool:
        """Whether `ancestor` is `commit` or one of its ancestors; UnknownRevision if either is no commit."""
        done = self.run("merge-base", "--is-ancestor", ancestor, commit, ok=None)
        if done.returncode in (0, 1):
            return done.returncode == 0
        for rev in (ancestor, commit):
            self.commit(rev)
        raise self._failure(done, None)

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of two commits, or None when they share none (or one is unknown)."""
        done = self.run("merge-base", a, b, ok=None)
        if done.returncode == 0:
            return done.text.strip() or None
        if done.returncode != 1 and all(self.find_commit(r) is not None for r in (a, b)):
            raise self._failure(done, None)
        return None

    # -- objects ------------------------------------------------------------------------------

    def ls_tree(self, rev: str, *paths: str) -> list[TreeEntry]:
        """Every file of `rev` (recursively, whole tree; only below `paths` when given)."""
        out = self.run("ls-tree", "-r", "-z", "--full-tree", "-l", rev, *(["--", *paths] if paths else [])).stdout
        entries = []
        for rec in out.split(b"\0"):
            if rec:
                meta, path = rec.split(b"\t", 1)
                mode, kind, sha, size = meta.decode().split()
                entries.append(TreeEntry(mode, kind, sha, int(size) if size != "-" else 0,
                                         path.decode("utf-8", "surrogateescape")))
        return entries

    def cat_blobs(self, shas: Iterable[str]) -> dict[str, bytes]:
        """The contents of objects by id, read with one `git cat-file --batch`."""
        unique = list(dict.fromkeys(shas))
        if not unique:
            return {}
        # on stdin, so any number of objects fits (no argument-length limit)
        out = self.run("cat-file", "--batch", stdin="".join(s + "\n" for s in unique)).stdout
        result: dict[str, bytes] = {}
        pos = 0
        for sha in unique:
            nl = out.index(b"\n", pos)
            header = out[pos:nl].split()
            if len(header) < 3:  # `<id> missing`
                raise GitFailed(f"{self._where()}object {sha} is missing from the repository; fetch it again",
                                returncode=0, stderr="")
            size = int(header[2])
            result[sha] = out[nl + 1 : nl + 1 + size]
            pos = nl + 1 + size + 1
        return result

    def blob(self, rev: str, path: str) -> bytes:
        """The file `path` of revision `rev`."""
        return self.run("cat-file", "blob", f"{rev}:{path}", doing=f"read {path} at {rev}").stdout

    def find_blob(self, rev: str, path: str) -> bytes | None:
        """The file `path` of revision `rev`, or None when it cannot be read."""
        done = self.run("cat-file", "blob", f"{rev}:{path}", ok=None)
        return done.stdout if done.returncode == 0 else None

    # -- failures -----------------------------------------------------------------------------

    def _failure(self, done: Completed, doing: str | None) -> GitError:
        # git dies with 128 on fatal errors, the missing repository among them; a second, cheap
        # question tells that case apart without reading git's message
        if done.returncode == 128 and self.repo is not None and not self._is_repository():
            return NotARepository(self.repo)
        said = done.stderr.strip() or f"exit status {done.returncode}"
        what = f"cannot {doing}: git {_sub(done.args)} failed" if doing else f"git {_sub(done.args)} failed"
        return GitFailed(f"{self._where()}{what}: {said}", returncode=done.returncode, stderr=done.stderr)

    def _is_repository(self) -> bool:
        repo = self._repo()
        if (repo / ".git").exists() or ((repo / "HEAD").is_file() and (repo / "objects").is_dir()):
            return True  # git refuses it for another reason (ownership, corruption): say git's words
        try:
            returncode, _, _ = _spawn(["git", "-C", str(repo), "rev-parse", "--git-dir"], None, _environment(None),
                                      self.timeout)
        except (OSError, subprocess.TimeoutExpired):
            return True
        return returncode == 0

    def _repo(self) -> Path:
        return self.repo if self.repo is not None else Path.cwd()

    def _where(self) -> str:
        return f"{self.repo}: " if self.repo is not None else ""


def _sub(args: Sequence[str]) -> str:
    """The subcommand of an argument list (after any `-c key=value` options)."""
    rest = list(args)
    while rest[:1] == ["-c"]:
        rest = rest[2:]
    return rest[0] if rest else "(no command)"


def _spawn(cmd: list[str], data: bytes | None, env: dict[str, str], limit: float) -> tuple[int, bytes, bytes]:
    """Run `cmd` to its end: (exit status, stdout, stderr); TimeoutExpired once it ran `limit` seconds."""
    # stdin is never the caller's (a prompt must not wait for a terminal nobody watches)
    with subprocess.Popen(cmd, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        try:
            out, err = proc.communicate(data, timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            # not communicate(): a child git started (ssh, a hook) may hold the pipes open for long
            proc.wait()
            raise
        return proc.returncode, out, err


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env.update(_HARDENED)
    env.update(extra or {})
    return env

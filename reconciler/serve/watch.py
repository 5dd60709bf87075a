"""Knowing when the tracked repository changed.

A local repository is watched with watchfiles (inotify) on the files git
rewrites when a branch moves: loose refs under `refs/`, `packed-refs` (after
`git pack-refs` or `gc` a branch may live only there) and `HEAD`. A burst of
writes (a commit rewrites several refs and their `.lock` files) is coalesced by
watchfiles' debounce into one wake-up. A remote URL cannot be watched, so it is
polled: the reconciler fetches every `poll_interval`. A local repository is
polled at the same interval too, as a safety net for file systems where inotify
misses changes (network mounts, some container overlays).

Watching only says "look again": the reconciler always reads the branch from
git itself, so a spurious or a coalesced wake-up is harmless.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import watchfiles

from reconciler.repository.git import Git, GitError

__all__ = ["Changes", "RefWatcher", "local_git_dir"]

log = logging.getLogger("palisade.watch")

#: watchfiles yields once no new change arrived for `_STEP_MS`, at the latest after `_DEBOUNCE_MS`.
_DEBOUNCE_MS = 300
_STEP_MS = 30


class Changes:
    """A latch between watchers (any thread) and the reconcile loop: `notify()` wakes `wait()`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def notify(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        """Block until notified or `timeout` seconds passed; True if notified. Resets the latch."""
        notified = self._event.wait(timeout)
        self._event.clear()
        return notified


def local_git_dir(repo: str) -> Path | None:
    """The directory holding the refs of `repo` if it is a local repository (work tree or bare), else None.

    For a linked work tree this is the common directory, where branches live.
    """
    path = Path(repo)
    if "://" in repo or not path.is_dir():
        return None
    try:
        out = Git(path, timeout=30).try_text("rev-parse", "--path-format=absolute", "--git-common-dir")
    except GitError:  # no git, or it hangs: poll instead of watching
        return None
    return Path(out.strip()) if out and out.strip() else None


def _is_ref_file(git_dir: Path, path: str) -> bool:
    try:
        rel = Path(path).relative_to(git_dir)
    except ValueError:
        return False
    if rel.name.endswith(".lock"):
        return False  # git writes `x.lock` and renames it to `x`: the rename is the change
    return rel.parts[:1] == ("refs",) or rel.as_posix() in ("packed-refs", "HEAD")


class RefWatcher:
    """Watches a local git directory's refs in a thread and calls `changes.notify()` when they move."""

    def __init__(self, git_dir: Path, changes: Changes) -> None:
        self.git_dir = Path(git_dir)
        self.changes = changes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="palisade-watch", daemon=True)

    def start(self) -> RefWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> RefWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        # The whole git directory is watched (recursively) because `packed-refs` may not exist yet
        # and new ref folders (refs/heads/team/...) appear at any time; the filter keeps refs only.
        def wanted(_change: watchfiles.Change, path: str) -> bool:
            return _is_ref_file(self.git_dir, path)

        try:
            for changes in watchfiles.watch(
                self.git_dir, watch_filter=wanted, debounce=_DEBOUNCE_MS, step=_STEP_MS,
                stop_event=self._stop, rust_timeout=1000, yield_on_timeout=False, raise_interrupt=False,
            ):
                log.debug("refs changed: %s", sorted(p for _, p in changes))
                self.changes.notify()
        except Exception as e:  # the poll interval still drives reconciliation
            log.warning("watching %s failed (%s); falling back to polling", self.git_dir, e)

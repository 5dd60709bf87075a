"""Crash-safe file replacement: a reader sees the old file or the new one, never a mix."""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

__all__ = ["StateFiles", "write_atomic"]


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it over `path`, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class StateFiles:
    """The agent's writes to its state directory, kept when the disk refuses them and written again later.

    A full or read-only file system must not stop enforcement: `write` replaces
    the file atomically when it can and otherwise keeps the newest bytes for
    that path in memory; `flush` (called again and again by the agent) retries
    them in the order they were first queued. `error` is the OSError that holds
    them back (None: everything is on disk). A failed write leaves the old file
    whole — write_atomic removes its temporary file — so what is on disk stays
    verifiable.
    """

    def __init__(self) -> None:
        self._pending: dict[Path, tuple[bytes, int]] = {}
        self.error: OSError | None = None
        self.error_path: Path | None = None
        self._lock = threading.Lock()

    def write(self, path: Path, data: bytes, mode: int = 0o600) -> bool:
        """True if `data` (and everything queued before it) is on disk now."""
        with self._lock:
            self._pending[Path(path)] = (data, mode)
        return self.flush()

    def flush(self) -> bool:
        with self._lock:
            for path, (data, mode) in list(self._pending.items()):
                try:
                    write_atomic(path, data, mode)
                except OSError as e:
                    self.error, self.error_path = e, path
                    return False
                del self._pending[path]
            self.error = self.error_path = None
            return True

    @property
    def pending(self) -> tuple[Path, ...]:
        with self._lock:
            return tuple(self._pending)

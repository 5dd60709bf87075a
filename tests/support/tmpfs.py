"""A small tmpfs that a test fills and empties: a real full disk, on demand (needs root).

`small_tmpfs` is a fixture factory: `mount(path)` mounts a 1 MiB tmpfs at `path`;
`fill(path)` writes a filler file until the file system says ENOSPC; `free(path)`
deletes it. Every mount is lazily unmounted at the end of the test, whatever
still holds it open. Without root the test is skipped — in CI (CI=true) it fails.
"""
from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FILLER = ".filler"


def fill(path: Path) -> None:
    """Fill the file system of `path` to the last byte."""
    chunk = b"\0" * 65536
    fd = os.open(path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, chunk[:size])
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def free(path: Path) -> None:
    (path / FILLER).unlink(missing_ok=True)


def read_only(path: Path, on: bool = True) -> None:
    subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(path)], check=True)


@dataclass
class Mounts:
    paths: list[Path] = field(default_factory=list)

    def __call__(self, path: Path, size: str = "1m") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "palisade-test", str(path)],
                       check=True)
        self.paths.append(path)
        return path


@pytest.fixture()
def small_tmpfs() -> Iterator[Callable[..., Path]]:
    if os.geteuid() != 0:
        msg = "mounting a tmpfs needs root"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    mounts = Mounts()
    try:
        yield mounts
    finally:
        for p in reversed(mounts.paths):
            subprocess.run(["umount", "-l", str(p)], check=False)

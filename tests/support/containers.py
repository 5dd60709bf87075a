"""A real container runtime for tests: the podman of scripts/podman_runtime.py (Debian's podman with runc,
its own storage in a temporary directory, its Docker-compatible API on a unix socket), which `make demo`
uses too, and `podman_session`, the fixture's lifetime of one."""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from support.kernel import unavailable

sys.path.insert(1, str(Path(__file__).resolve().parents[2] / "scripts"))  # scripts/ is no package

from podman_runtime import IMAGE, Podman, Started, problem

__all__ = ["IMAGE", "Podman", "Started", "podman_session", "problem", "runtime_session", "wait_for"]


class _Runtime(Protocol):
    def start(self) -> None: ...
    def close(self) -> None: ...


R = TypeVar("R", bound=_Runtime)


@contextlib.contextmanager
def runtime_session(why: str | None, make: Callable[[Path, Path], R], prefix: str) -> Iterator[R]:
    """A runtime `make(base, cgroup2 root)` made, started, and closed after (fails under CI=true when `why` says
    it cannot run here, skips otherwise)."""
    if why is not None:
        unavailable(why)
    from bpf.core import procfs

    root = procfs.cgroup2_mount()
    if root is None:
        unavailable("no cgroup2 hierarchy")
    # a short base: the API socket's path must fit a sockaddr_un
    r = make(Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")), root)
    try:
        r.start()
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def podman_session() -> Iterator[Podman]:
    """A started `Podman` (fails under CI=true when podman cannot run here, skips otherwise)."""
    with runtime_session(problem(), Podman, "pl-podman-") as p:
        yield p


def wait_for(cond: Callable[[], object], timeout: float = 10.0) -> None:
    """Until `cond()` holds (a container seen, a cgroup gone), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)

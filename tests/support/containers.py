"""A real container runtime for tests: the podman of scripts/podman_runtime.py (Debian's podman with runc,
its own storage in a temporary directory, its Docker-compatible API on a unix socket), which `make demo`
uses too, and `podman_session`, the fixture's lifetime of one."""
from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from support.kernel import unavailable

sys.path.insert(1, str(Path(__file__).resolve().parents[2] / "scripts"))  # scripts/ is no package

from podman_runtime import IMAGE, Podman, Started, problem

__all__ = ["IMAGE", "Podman", "Started", "podman_session", "problem"]


@contextlib.contextmanager
def podman_session() -> Iterator[Podman]:
    """A started `Podman` (fails under CI=true when podman cannot run here, skips otherwise)."""
    why = problem()
    if why is not None:
        unavailable(why)
    from bpf.core import procfs

    root = procfs.cgroup2_mount()
    if root is None:
        unavailable("no cgroup2 hierarchy")
    # a short base: the API socket's path must fit a sockaddr_un
    p = Podman(Path(tempfile.mkdtemp(prefix="pl-podman-", dir="/tmp")), root)
    try:
        p.start()
        yield p
    finally:
        p.close()

"""Containers from a real runtime (podman + runc, its Docker-compatible API): the test runtime itself, and
the agent's discovery of containers, their cgroups and metadata (agent/containers.py)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from support.containers import IMAGE, Podman, podman_session

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def podman(require_kernel: None) -> Iterator[Podman]:
    with podman_session() as p:
        yield p


def wait_for(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_container_runs_in_its_own_cgroup_and_is_removed(podman: Podman) -> None:
    c = podman.run(labels={"app": "web"})
    try:
        assert c.cgroup.is_dir(), c.cgroup
        assert str(c.pid) in (c.cgroup / "cgroup.procs").read_text().split()
        assert podman.exec(c.id, "/bin/true").returncode == 0
    finally:
        podman.remove(c.id)
    wait_for(lambda: not c.cgroup.exists())
    assert IMAGE

"""A real CRI runtime for tests: the containerd of scripts/containerd_runtime.py (Debian's containerd 1.6 with
its CRI plugin and runc, its own state in a temporary directory, its CRI on a unix socket), and
`containerd_session`, the fixture's lifetime of one. Also `Runtime`: podman's and containerd's containers
behind one face, for the tests that run the same story on both."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.config import ContainerRuntime
from support.containers import Podman, runtime_session

sys.path.insert(1, str(Path(__file__).resolve().parents[2] / "scripts"))  # scripts/ is no package

from containerd_runtime import IMAGE, Containerd, Pod, problem

__all__ = ["IMAGE", "Containerd", "CriRuntime", "Pod", "PodmanRuntime", "Running", "Runtime", "containerd_session",
           "problem"]


@contextlib.contextmanager
def containerd_session() -> Iterator[Containerd]:
    """A started `Containerd` (fails under CI=true when containerd's CRI cannot run here, skips otherwise)."""
    with runtime_session(problem(), Containerd, "pl-ctd-") as c:
        yield c


@dataclass(frozen=True)
class Running:
    """A container a test started, and what the agent should call it."""

    id: str
    cgroup: Path
    pod: str  # the pod's name in events
    namespace: str
    container: str  # the container's name in events
    scheme: str  # of Tetragon's container id: docker://, containerd://


class Runtime(Protocol):
    name: str
    config: ContainerRuntime  # what agent.yaml's `containers` says for it

    def run(self, labels: dict[str, str], *, namespace: str | None = None, pod: str | None = None) -> Running: ...
    def exec(self, cid: str, *command: str) -> int: ...
    def remove(self, cid: str) -> None: ...


class PodmanRuntime:
    """Podman's containers (the Docker API); a namespace and pod name are the kubelet's labels on them."""

    name = "podman"

    def __init__(self, podman: Podman) -> None:
        self.podman = podman
        self.config = ContainerRuntime(podman.socket)

    def run(self, labels: dict[str, str], *, namespace: str | None = None, pod: str | None = None) -> Running:
        kube = {"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": pod} if namespace else {}
        s = self.podman.run(labels={**labels, **{k: v for k, v in kube.items() if v}})
        return Running(s.id, s.cgroup, pod or s.name, namespace or "default", s.name, "docker")

    def exec(self, cid: str, *command: str) -> int:
        return self.podman.exec(cid, *command).returncode

    def remove(self, cid: str) -> None:
        self.podman.remove(cid)


class CriRuntime:
    """Pods of containerd's CRI, one container (`main`) each, as the kubelet makes them."""

    name = "containerd"

    def __init__(self, containerd: Containerd) -> None:
        self.containerd = containerd
        self.config = ContainerRuntime(containerd.socket, "cri")

    def run(self, labels: dict[str, str], *, namespace: str | None = None, pod: str | None = None) -> Running:
        p = self.containerd.run(labels=labels, namespace=namespace or "default", name=pod)
        return Running(p.id, p.cgroup, p.name, p.namespace, p.container, "containerd")

    def exec(self, cid: str, *command: str) -> int:
        return self.containerd.exec(cid, *command)[0]

    def remove(self, cid: str) -> None:
        self.containerd.remove(cid)

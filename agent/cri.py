"""Workloads from a CRI socket: containers of Kubernetes pods, as the kubelet's runtime (containerd's CRI
plugin, CRI-O) runs them.

The CRI is gRPC (`runtime.v1.RuntimeService`); agent/criapi/runtime.proto is the part of it spoken here.
The watcher lists the running containers (`ListContainers`), and for each asks `ContainerStatus` (verbose:
containerd's `info` carries the init pid and the sandbox id) and its sandbox's `PodSandboxStatus` (the
pod's name, namespace, uid and labels), and reports a `Container` as the Docker-API watcher does
(agent/containers.py), its cgroup read from its init pid. It then follows `GetContainerEvents` where the
runtime has it (containerd 1.7 and later); containerd 1.6 answers UNIMPLEMENTED, and then the cgroup
directories are the events: the kubelet's `kubepods` tree (and containerd's own `k8s.io` parent) is
watched with inotify, a new directory named for a container id is inspected every few milliseconds until
the container runs, a removed one is the container gone, and the whole list is read again every
`resync` seconds for anything inotify could not see.

grpcio is an optional dependency (the `cri` extra): it is imported only when `containers.cri` is
configured, and its absence is `CriUnavailable` (exit 3), not an import error at start. The compiled
messages (agent/criapi/runtime_pb2.py, `make cri-proto`) need protobuf, so agent/criapi has no
`__init__.py`: a namespace package, which a walk of the agent's modules (as the base install's check
makes) does not enter.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from .containers import (
    K8S_CONTAINER_NAME,
    K8S_POD_NAME,
    K8S_POD_NAMESPACE,
    K8S_POD_UID,
    Container,
    ContainerWatcher,
    RuntimeProtocolError,
    RuntimeUnreachable,
    _Inotify,
    cgroup_of,
)
from .errors import AgentError

__all__ = ["CriClient", "CriNotFound", "CriProtocolError", "CriUnavailable", "CriUnimplemented", "CriUnreachable",
           "CriWatcher", "container_of_status", "load_grpc"]

log = logging.getLogger("palisade.agent.cri")

SERVICE = "/runtime.v1.RuntimeService/"


class CriUnavailable(AgentError):
    """`containers.cri` is configured but grpcio (or protobuf) is not installed (exit 3)."""

    exit_code = 3


class CriUnreachable(RuntimeUnreachable):
    """The CRI socket does not answer (absent, refused, the stream broke)."""


class CriProtocolError(RuntimeProtocolError):
    """The runtime answered a CRI call with an error other than the ones handled below."""


class CriNotFound(AgentError):
    """No such container or sandbox (removed meanwhile, or an id that is a sandbox's)."""


class CriUnimplemented(AgentError):
    """The runtime does not implement the call (GetContainerEvents on containerd 1.6)."""


def load_grpc() -> tuple[ModuleType, ModuleType]:
    """grpc and the generated CRI messages, or `CriUnavailable` saying how to install them."""
    try:
        import grpc

        from .criapi import runtime_pb2
    except ImportError as e:
        raise CriUnavailable(f"containers.cri needs grpcio and protobuf ({e}): "
                             "pip install 'palisade[cri]'") from None
    return grpc, runtime_pb2


class CriClient:
    """A RuntimeService client on a unix socket. `call` makes any call of the proto; the rest are the
    agent's own, typed."""

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.grpc, self.pb = load_grpc()
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        # a runtime restarted (containerd upgraded, its unit restarted) is reached again within seconds, not
        # after gRPC's default backoff of up to two minutes
        self._channel = self.grpc.insecure_channel(f"unix://{self.socket_path}", options=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000)])
        self._stream: Any = None  # the events call in progress, which close_stream() cancels

    def close(self) -> None:
        self.close_stream()
        self._channel.close()

    def _error(self, method: str, e: Any) -> AgentError:
        code = e.code() if callable(getattr(e, "code", None)) else None
        codes = self.grpc.StatusCode
        what = f"CRI {method} at {self.socket_path}: {code.name if code else '?'}: {e.details() if code else e}"
        if code == codes.NOT_FOUND:
            return CriNotFound(what)
        if code == codes.UNIMPLEMENTED:
            return CriUnimplemented(what)
        if code in (codes.UNAVAILABLE, codes.DEADLINE_EXCEEDED, codes.CANCELLED):
            return CriUnreachable(what)
        return CriProtocolError(what)

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        response = getattr(self.pb, f"{method}Response")
        stub = self._channel.unary_unary(SERVICE + method, request_serializer=type(request).SerializeToString,
                                         response_deserializer=response.FromString)
        try:
            return stub(request, timeout=timeout or self.timeout)
        except self.grpc.RpcError as e:
            raise self._error(method, e) from None

    def version(self) -> Any:
        return self.call("Version", self.pb.VersionRequest(version="v1"))

    def running(self) -> list[str]:
        """The ids of the running containers (sandboxes are not containers here)."""
        pb = self.pb
        f = pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
        return [c.id for c in self.call("ListContainers", pb.ListContainersRequest(filter=f)).containers]

    def status(self, cid: str) -> tuple[Any, dict[str, Any]]:
        """A container's `ContainerStatus` and its verbose `info` (containerd: {"pid": …, "sandboxID": …})."""
        r = self.call("ContainerStatus", self.pb.ContainerStatusRequest(container_id=cid, verbose=True))
        info: dict[str, Any] = {}
        with contextlib.suppress(ValueError, TypeError):
            doc = json.loads(r.info.get("info", "{}"))
            if isinstance(doc, dict):
                info = doc
        return r.status, info

    def sandbox(self, sid: str) -> Any:
        return self.call("PodSandboxStatus", self.pb.PodSandboxStatusRequest(pod_sandbox_id=sid)).status

    def sandbox_of(self, cid: str) -> str:
        """A container's sandbox id from `ListContainers` (for runtimes whose status `info` lacks it)."""
        r = self.call("ListContainers", self.pb.ListContainersRequest(filter=self.pb.ContainerFilter(id=cid)))
        return str(r.containers[0].pod_sandbox_id) if r.containers else ""

    def close_stream(self) -> None:
        call = self._stream
        if call is not None:
            call.cancel()

    def events(self, opened: Callable[[], None] | None = None) -> Iterator[Any]:
        """`GetContainerEvents` until it ends; `CriUnimplemented` where the runtime has none."""
        pb = self.pb
        stub = self._channel.unary_stream(SERVICE + "GetContainerEvents",
                                          request_serializer=pb.GetEventsRequest.SerializeToString,
                                          response_deserializer=pb.ContainerEventResponse.FromString)
        call = stub(pb.GetEventsRequest())
        self._stream = call
        if opened is not None:
            opened()  # the call is open: whatever starts from now on is streamed
        try:
            it = iter(call)
            while True:
                try:
                    ev = next(it)
                except StopIteration:
                    return
                except self.grpc.RpcError as e:
                    err = self._error("GetContainerEvents", e)
                    if isinstance(err, CriUnreachable) and call.code() == self.grpc.StatusCode.CANCELLED:
                        return  # close_stream()
                    raise err from None
                yield ev
        finally:
            self._stream = None


def _rfc3339(ns: int) -> str:
    if ns <= 0:
        return ""
    return f"{datetime.fromtimestamp(ns // 10**9, UTC):%Y-%m-%dT%H:%M:%S}.{ns % 10**9:09d}Z"  # RFC 3339, in ns


def container_of_status(status: Any, info: dict[str, Any], sandbox: Any | None, cgroup2_root: Path | None = None,
                        proc: Path = Path("/proc")) -> Container | None:
    """A `Container` from a CRI `ContainerStatus`, its verbose info and its `PodSandboxStatus`; None when it
    does not run (no pid, no cgroup)."""
    pid = info.get("pid")
    cgroup = cgroup_of(pid, proc, cgroup2_root) if isinstance(pid, int) and pid > 0 else None
    if cgroup is None or not isinstance(pid, int):
        return None
    # The pod's labels are the sandbox's (the kubelet puts the pod's labels there, with its own
    # io.kubernetes.pod.*); the container's add the container's name. The sandbox's metadata is the pod's
    # identity whatever the labels say.
    labels: dict[str, str] = {}
    if sandbox is not None:
        labels.update(sandbox.labels)
    labels.update(status.labels)
    if sandbox is not None and sandbox.metadata.name:
        labels[K8S_POD_NAME] = sandbox.metadata.name
        labels[K8S_POD_NAMESPACE] = sandbox.metadata.namespace or "default"
        if sandbox.metadata.uid:
            labels[K8S_POD_UID] = sandbox.metadata.uid
    if status.metadata.name:
        labels.setdefault(K8S_CONTAINER_NAME, status.metadata.name)
    image_name = status.image.image or status.image_ref
    return Container(
        id=status.id, name=status.metadata.name or status.id[:12],
        image_id=status.image_ref or image_name, image_name=image_name,
        labels=tuple(sorted(labels.items())), start_time=_rfc3339(status.started_at), pid=pid, cgroup=cgroup,
        runtime="containerd")


#: A container's cgroup directory name under a CRI runtime: the id (cgroupfs), or systemd's
#: `cri-containerd-<id>.scope` / `crio-<id>.scope`.
_CGROUP_NAME = re.compile(r"^(?:[a-z-]+-)?([0-9a-f]{64})(?:\.scope)?$")
#: Cgroup trees (under the cgroup2 root) that CRI runtimes put pods in: the kubelet's (cgroupfs, systemd)
#: and containerd's default parent when a sandbox names none.
CGROUP_TREES = ("kubepods", "kubepods.slice", "k8s.io")
_IN_CREATE, _IN_DELETE, _IN_ONLYDIR = 0x100, 0x200, 0x01000000


class _CgroupTree(_Inotify):
    """Directories made and removed under the watched ones (a pod's, a QoS class's, a container's)."""

    def watch(self, d: Path) -> None:
        for wd, p in list(self.watched.items()):
            if p == d:
                if d.is_dir():
                    return
                del self.watched[wd]  # the kernel dropped the watch with the directory
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(d), _IN_CREATE | _IN_DELETE | _IN_ONLYDIR)
        if wd >= 0:
            self.watched[wd] = d


class CriWatcher(ContainerWatcher):
    """Follows a CRI runtime in a thread, as ContainerWatcher follows the Docker API (its reconnecting loop,
    listing and reports are the same): `on_start(container)` for each running container (those found at
    start, then each that starts), `on_stop(container)` when one stops."""

    def __init__(self, socket_path: Path, on_start: Callable[[Container], None],
                 on_stop: Callable[[Container], None], *, cgroup2_root: Path | None = None,
                 resync: float = 2.0) -> None:
        super().__init__(socket_path, on_start, on_stop, cgroup2_root=cgroup2_root)
        self.api: CriClient = CriClient(socket_path)  # type: ignore[assignment]  # the same calls, over the CRI
        self.resync = resync
        #: Whether the runtime streams events (None until known): False on containerd 1.6.
        self.streams: bool | None = None
        self._wake = threading.Event()  # the cgroup tree changed: list again now

    def start(self) -> None:
        root = self.cgroup2_root
        if root is None:
            from bpf import syscall

            root = syscall.cgroup2_root()
        self._root = root
        try:
            self._inotify = _CgroupTree()
        except OSError as e:
            log.warning("no inotify (%s): CRI containers are seen by listing every %.0fs", e, self.resync)
        else:
            self._inotify.watch(root)  # for a tree made after the agent started
            for name in CGROUP_TREES:
                self._watch_tree(root / name)
            threading.Thread(target=self._cgroups, name="palisade-cri-cgroups", daemon=True).start()
        self._thread = threading.Thread(target=self._run, name="palisade-cri", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._wake.set()
        super().stop()
        self.api.close()

    # --- the cgroup tree

    def _watch_tree(self, d: Path, depth: int = 0) -> None:
        """Watch `d` and the directories under it that are not containers' (QoS classes, pods)."""
        if self._inotify is None or depth > 4 or not d.is_dir():
            return
        with contextlib.suppress(OSError):
            self._inotify.watch(d)
            for child in d.iterdir():
                if child.is_dir():
                    self._seen(d, child.name, depth)

    def _seen(self, parent: Path, name: str, depth: int = 0) -> None:
        m = _CGROUP_NAME.match(name)
        if m is None:
            if parent != self._root or name in CGROUP_TREES:
                self._watch_tree(parent / name, depth + 1)
            return
        cid = m[1]
        if (parent / name).is_dir():
            threading.Thread(target=self._until_running, args=(cid,), daemon=True).start()
        else:
            with self._lock:
                known = cid in self.running
            if known:
                self._check(cid)
            self._wake.set()  # and list again (without a stream: what else changed)

    def _cgroups(self) -> None:
        assert self._inotify is not None
        with contextlib.suppress(OSError, ValueError):  # the descriptor closed by stop()
            while not self._stop.is_set():
                for parent, name in self._inotify.read(0.5):
                    self._seen(parent, name)

    def _until_running(self, cid: str, timeout: float = 10.0, every: float = 0.003) -> None:
        """A new container cgroup: its container is created (CRI knows it) and runs within milliseconds."""
        pb = self.api.pb
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline and cid not in self.running:
            try:
                status, info = self.api.status(cid)
            except (CriNotFound, CriUnreachable, CriProtocolError):
                return  # a sandbox's cgroup (not a container of the CRI), or gone again
            if status.state == pb.CONTAINER_RUNNING and info.get("pid"):
                self._up(cid, info, status=status)
                return
            if status.state == pb.CONTAINER_EXITED:
                return
            time.sleep(every)

    def _check(self, cid: str) -> None:
        """A known container's cgroup went away: down unless the runtime still has it running."""
        try:
            status, _ = self.api.status(cid)
            still = status.state == self.api.pb.CONTAINER_RUNNING
        except CriNotFound:
            still = False
        except (CriUnreachable, CriProtocolError):
            return
        if not still:
            self._down(cid)

    # --- the runtime

    def _follow(self) -> None:
        if self.streams is not False:
            try:
                for ev in self.api.events(opened=self._resync):
                    if self._stop.is_set():
                        return
                    self._event(ev)
                return
            except CriUnimplemented:
                self.streams = False
                log.info("the CRI runtime has no GetContainerEvents: following its cgroups and listing every %.0fs",
                         self.resync)
        # No stream: list now, then on every wake-up of the cgroup tree and every `resync` seconds.
        while not self._stop.is_set():
            self._wake.clear()
            self._resync()
            self._wake.wait(self.resync)

    def _event(self, ev: Any) -> None:
        pb = self.api.pb
        self.streams = True
        kind = ev.container_event_type
        if kind == pb.CONTAINER_STARTED_EVENT:
            self._up(ev.container_id, sandbox=ev.pod_sandbox_status if ev.HasField("pod_sandbox_status") else None)
        elif kind in (pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT):
            self._down(ev.container_id)

    def _up(self, cid: str, info: dict[str, Any] | None = None, *, status: Any = None, sandbox: Any = None) -> None:
        with self._up_lock:
            with self._lock:
                if cid in self.running:
                    return
            try:
                if status is None or info is None:
                    status, info = self.api.status(cid)
                if status.state != self.api.pb.CONTAINER_RUNNING:
                    return
                if sandbox is None:
                    sid = str(info.get("sandboxID") or "") or self.api.sandbox_of(cid)
                    sandbox = self.api.sandbox(sid) if sid else None
            except CriNotFound:
                return
            c = container_of_status(status, info, sandbox, self.cgroup2_root)
            if c is None:
                return
            with self._lock:
                self.running[cid] = c
            if status.started_at:
                self.reported_at[cid] = status.started_at / 1e9
            if self._inotify is not None:
                parent = Path(c.cgroup).parent
                with contextlib.suppress(OSError):
                    self._inotify.watch(parent)  # this pod's (another of its containers, its removal)
                    self._inotify.watch(parent.parent)  # and its QoS class's (the next pod)
            self.on_start(c)

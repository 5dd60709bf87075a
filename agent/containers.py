"""Workloads from the container runtime: containers discovered through the Docker-compatible API.

Podman's `podman system service` and Docker's daemon both serve it on a unix socket. The watcher
lists the running containers once (`GET /containers/json`), then follows the events stream
(`GET /events?filters={"type":["container"]}`): on `start` it inspects the container
(`GET /containers/<id>/json`) and reports a `Container` (id, name, image id and name, labels, start
time, init pid, cgroup2 directory), on `die` it reports the container gone. The cgroup is read from
`/proc/<init pid>/cgroup` (its cgroup2 line), which holds whatever layout the runtime chose
(`/libpod_parent/libpod-<id>` under podman with cgroupfs, a systemd scope, a kubepods slice).

The events stream can lag: podman's file events backend is read by polling (a start is seen up to a
quarter of a second after it happened). So the watcher also watches the cgroup directories runtimes
put containers under (`libpod_parent`, `docker`, `system.slice`, and the parent of every container
it found) with inotify: a new directory named for a container id is the runtime creating one, and the
container is inspected every few milliseconds until it runs, then reported at once. Whichever of the
two sees a start first reports it; the other finds it known.

Under Kubernetes the kubelet labels each container (CRI) with `io.kubernetes.pod.name`,
`io.kubernetes.pod.namespace`, `io.kubernetes.pod.uid` and `io.kubernetes.container.name`; those
give the pod's name, namespace and uid. The pod's own labels are not among them (no API server is
asked here), so a container's labels other than `io.kubernetes.*` stand for its pod's labels, which
is also how a plain podman or Docker container is selected (`--label app=web`). The workload and
its kind are derived from the pod name where the controller's naming makes it certain
(`<deployment>-<replicaset hash>-<5 chars>` with a `pod-template-hash` label: a Deployment).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import http.client
import json
import logging
import os
import re
import select
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AgentError

__all__ = [
    "Container",
    "ContainerWatcher",
    "RuntimeProtocolError",
    "RuntimeUnreachable",
    "cgroup_of",
    "container_of",
]

log = logging.getLogger("palisade.agent.containers")

K8S_POD_NAME = "io.kubernetes.pod.name"
K8S_POD_NAMESPACE = "io.kubernetes.pod.namespace"
K8S_POD_UID = "io.kubernetes.pod.uid"
K8S_CONTAINER_NAME = "io.kubernetes.container.name"


class RuntimeUnreachable(AgentError):
    """The runtime's socket does not answer (absent, refused, closed mid-stream)."""


class RuntimeProtocolError(AgentError):
    """The runtime answered something that is not the Docker-compatible API (status, JSON)."""


@dataclass(frozen=True)
class Container:
    """One running container, as the agent scopes policies to it and names it in events."""

    id: str
    name: str
    image_id: str
    image_name: str
    labels: tuple[tuple[str, str], ...]
    start_time: str  # RFC 3339, as the runtime reports it
    pid: int  # its init process, in the host's pid namespace
    cgroup: str  # its cgroup2 directory (absolute path)
    runtime: str = "docker"  # the scheme of Tetragon's container id ("docker://<id>", "containerd://")

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def pod_name(self) -> str:
        return self.label_map.get(K8S_POD_NAME) or self.name

    @property
    def namespace(self) -> str:
        return self.label_map.get(K8S_POD_NAMESPACE) or "default"

    @property
    def pod_uid(self) -> str | None:
        return self.label_map.get(K8S_POD_UID)

    @property
    def container_name(self) -> str:
        return self.label_map.get(K8S_CONTAINER_NAME) or self.name

    @property
    def pod_labels(self) -> dict[str, str]:
        """The labels a podSelector matches: every label but the kubelet's own `io.kubernetes.*`."""
        return {k: v for k, v in self.labels if not k.startswith("io.kubernetes.")}

    @property
    def workload(self) -> tuple[str, str | None]:
        """(workload name, kind): a Deployment's pod is `<name>-<template hash>-<suffix>`."""
        pod = self.pod_name
        template = self.label_map.get("pod-template-hash")
        if template and f"-{template}-" in pod:
            return pod.rsplit(f"-{template}-", 1)[0], "Deployment"
        return pod, None

    def tetragon_pod(self) -> dict[str, Any]:
        """Tetragon's `process.pod` for a process of this container."""
        name, kind = self.workload
        pod: dict[str, Any] = {
            "namespace": self.namespace, "name": self.pod_name,
            "container": {"id": f"{self.runtime}://{self.id}", "name": self.container_name,
                          "image": {"id": self.image_id, "name": self.image_name},
                          "start_time": self.start_time, "pid": 1},  # the init's; a process's own where known
            "pod_labels": self.pod_labels, "workload": name}
        if kind:
            pod["workload_kind"] = kind
        return pod


def cgroup_of(pid: int, proc: Path = Path("/proc"), cgroup2_root: Path | None = None) -> str | None:
    """The cgroup2 directory of process `pid` (from its `0::<path>` line), or None if it is gone."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            if cgroup2_root is None:
                from bpf import syscall

                cgroup2_root = syscall.cgroup2_root()
            rel = line[3:].strip().lstrip("/")
            return str(cgroup2_root / rel) if rel else str(cgroup2_root)
    return None


def container_of(info: Mapping[str, Any], cgroup2_root: Path | None = None,
                 proc: Path = Path("/proc")) -> Container | None:
    """A `Container` from the API's inspect document; None when it is not running (no pid, no cgroup)."""
    state = info.get("State") or {}
    pid = state.get("Pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    cgroup = cgroup_of(pid, proc, cgroup2_root)
    if cgroup is None:
        return None
    config = info.get("Config") or {}
    labels = config.get("Labels") or {}
    image_id = str(info.get("Image") or "")
    return Container(
        id=str(info["Id"]), name=str(info.get("Name") or "").lstrip("/"),
        image_id=image_id, image_name=str(config.get("Image") or info.get("ImageName") or image_id),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        start_time=str(state.get("StartedAt") or ""), pid=pid, cgroup=cgroup)


#: A container's cgroup directory name: the id, maybe with the runtime's prefix and systemd's suffix.
_CGROUP_NAME = re.compile(r"^(?:[a-z]+-)?([0-9a-f]{64})(?:\.scope)?$")
#: Cgroup directories (under the cgroup2 root) runtimes put containers in, watched when they exist.
CGROUP_PARENTS = ("libpod_parent", "machine.slice", "docker", "system.slice")
_IN_CREATE, _IN_ISDIR, _IN_ONLYDIR, _IN_NONBLOCK, _IN_CLOEXEC = 0x100, 0x40000000, 0x01000000, 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")


class _Inotify:
    """New subdirectories of the watched directories (inotify through libc)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.watched: dict[int, Path] = {}

    def watch(self, d: Path) -> None:
        if d in self.watched.values():
            return
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(d), _IN_CREATE | _IN_ONLYDIR)
        if wd >= 0:
            self.watched[wd] = d

    def read(self, timeout: float) -> list[tuple[Path, str]]:
        """(directory, name) of each directory created since, waiting up to `timeout`."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, off = [], 0
        while off + _EVENT.size <= len(buf):
            wd, mask, _, n = _EVENT.unpack_from(buf, off)
            name = buf[off + _EVENT.size:off + _EVENT.size + n].rstrip(b"\0").decode(errors="replace")
            off += _EVENT.size + n
            if mask & _IN_ISDIR and wd in self.watched:
                out.append((self.watched[wd], name))
        return out

    def close(self) -> None:
        os.close(self.fd)


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class RuntimeAPI:
    """The few calls of the Docker-compatible API the watcher makes, over a unix socket."""

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._stream: _UnixHTTP | None = None  # the open events request, which close_stream() ends

    def close_stream(self) -> None:
        """End the events request in progress (its reader sees the end of the stream)."""
        conn = self._stream
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _get(self, path: str, timeout: float | None) -> tuple[_UnixHTTP, http.client.HTTPResponse]:
        conn = _UnixHTTP(str(self.socket_path), timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise RuntimeUnreachable(f"container runtime at {self.socket_path}: {e}") from None
        if resp.status != 200:
            body = resp.read(500)
            conn.close()
            raise RuntimeProtocolError(f"container runtime {path}: HTTP {resp.status}: {body!r}")
        return conn, resp

    def json(self, path: str) -> Any:
        conn, resp = self._get(path, self.timeout)
        try:
            return json.loads(resp.read())
        except (OSError, ValueError) as e:
            raise RuntimeProtocolError(f"container runtime {path}: {e}") from None
        finally:
            conn.close()

    def running(self) -> list[str]:
        return [str(c["Id"]) for c in self.json("/containers/json") if isinstance(c, dict) and "Id" in c]

    def inspect(self, cid: str) -> dict[str, Any] | None:
        try:
            doc = self.json(f"/containers/{urllib.parse.quote(cid)}/json")
        except RuntimeProtocolError:
            return None  # removed meanwhile (404)
        return doc if isinstance(doc, dict) else None

    def events(self, opened: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
        """The container events, one JSON object each, until the stream ends."""
        query = urllib.parse.quote(json.dumps({"type": ["container"]}))
        conn, resp = self._get(f"/events?filters={query}", None)
        self._stream = conn
        if opened is not None:
            opened()
        try:
            while True:
                try:
                    line = resp.readline()
                except OSError as e:
                    raise RuntimeUnreachable(f"container runtime events: {e}") from None
                if not line:
                    return
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if isinstance(ev, dict):
                        yield ev
        finally:
            self._stream = None
            conn.close()


#: Events that bring a container up (it runs) and down (its init process is gone; `kill` only sends a signal).
_UP = ("start",)
_DOWN = ("die", "stop")


class ContainerWatcher:
    """Follows the runtime in a thread: `on_start(container)` for each running container (those found at
    start, then each that starts), `on_stop(container)` when one dies. Reconnects with backoff (and lists
    again) when the runtime goes away."""

    def __init__(self, socket_path: Path, on_start: Callable[[Container], None],
                 on_stop: Callable[[Container], None], *, cgroup2_root: Path | None = None) -> None:
        self.api = RuntimeAPI(socket_path)
        self.on_start = on_start
        self.on_stop = on_stop
        self.cgroup2_root = cgroup2_root
        self.running: dict[str, Container] = {}
        #: When the runtime says each container started (its event's time, epoch seconds): the start of the
        #: start → scope latency.
        self.reported_at: dict[str, float] = {}
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._up_lock = threading.Lock()  # one inspection and report at a time (events and cgroups both report)
        self._thread: threading.Thread | None = None
        self._inotify: _Inotify | None = None
        self._root: Path | None = None
        self.errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="palisade-containers", daemon=True)
        self._thread.start()
        try:
            self._inotify = _Inotify()
        except OSError as e:
            log.warning("no inotify (%s): containers are seen through the runtime's events only", e)
            return
        root = self.cgroup2_root
        if root is None:
            from bpf import syscall

            root = syscall.cgroup2_root()
        self._root = root
        self._inotify.watch(root)  # for a runtime's parent cgroup made after the agent started
        for name in CGROUP_PARENTS:
            if (root / name).is_dir():
                self._inotify.watch(root / name)
        threading.Thread(target=self._cgroups, name="palisade-container-cgroups", daemon=True).start()

    def _cgroups(self) -> None:
        """Report containers as their cgroup directories appear (ahead of a lagging events stream)."""
        assert self._inotify is not None
        while not self._stop.is_set():
            try:
                created = self._inotify.read(0.5)
            except (OSError, ValueError):  # closed by stop()
                return
            for parent, name in created:
                if parent == self._root and name in CGROUP_PARENTS:
                    # a runtime's first container: its own directory may already be there
                    with contextlib.suppress(OSError):
                        self._inotify.watch(parent / name)
                        created.extend((parent / name, d.name) for d in (parent / name).iterdir() if d.is_dir())
                    continue
                m = _CGROUP_NAME.match(name)
                if m is not None:
                    threading.Thread(target=self._until_running, args=(m[1],), daemon=True).start()

    def _until_running(self, cid: str, timeout: float = 10.0, every: float = 0.003) -> None:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if cid in self.running:
                    return
            try:
                info = self.api.inspect(cid)
            except (RuntimeUnreachable, RuntimeProtocolError):
                return
            state = (info or {}).get("State") or {}
            if state.get("Running") is True:
                self._up(cid, info)
                return
            if state.get("Status") in ("exited", "stopped", "removing", "dead"):
                return
            time.sleep(every)

    def stop(self) -> None:
        self._stop.set()
        if self._inotify is not None:
            with contextlib.suppress(OSError):
                self._inotify.close()
        self.api.close_stream()  # the events reader blocks in a read: end it
        if self._thread is not None:
            self._thread.join(2.0)

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                self._follow()
                delay = 0.2
            except (RuntimeUnreachable, RuntimeProtocolError) as e:
                self.errors += 1
                self.connected.clear()
                log.warning("%s; retrying in %.1fs", e, delay)
            except Exception:  # a callback's failure must not end discovery
                self.errors += 1
                self.connected.clear()
                log.exception("container discovery failed; retrying")
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def _follow(self) -> None:
        stream = self.api.events(opened=self._resync)  # open first: nothing starting meanwhile is missed
        for ev in stream:
            if self._stop.is_set():
                return
            action = str(ev.get("Action") or ev.get("status") or "")
            cid = str(ev.get("id") or (ev.get("Actor") or {}).get("ID") or "")
            if not cid:
                continue
            if action in _UP:
                when = ev.get("timeNano")
                self.reported_at[cid] = when / 1e9 if isinstance(when, int) else time.time()
                self._up(cid)
            elif action in _DOWN:
                self._down(cid)

    def _resync(self) -> None:
        """List what runs now: new ones come up, ones no longer running go down."""
        ids = set(self.api.running())
        for cid in ids:
            self._up(cid)
        for cid in set(self.running) - ids:
            self._down(cid)
        self.connected.set()

    def _up(self, cid: str, info: dict[str, Any] | None = None) -> None:
        with self._up_lock:
            with self._lock:
                if cid in self.running:
                    return
            if info is None:
                info = self.api.inspect(cid)
            c = container_of(info, self.cgroup2_root) if info is not None else None
            if c is None:
                return
            with self._lock:
                self.running[cid] = c
            if self._inotify is not None:
                with contextlib.suppress(OSError):
                    self._inotify.watch(Path(c.cgroup).parent)  # where this runtime puts containers
            self.on_start(c)

    def _down(self, cid: str) -> None:
        with self._lock:
            c = self.running.pop(cid, None)
        self.reported_at.pop(cid, None)
        if c is not None:
            self.on_stop(c)

"""The base sensor in the agent: `process_exec` / `process_exit` of every process on the node, in the event log.

As Tetragon's base sensor does, it runs from start-up with no policy loaded: the
agent loads bpf/core's sensor (built by clang once per machine, cached by digest),
seeds its process cache from /proc, and a thread of its own moves its records to
the JSON event log. A process in a configured workload's cgroup (or below it)
carries Tetragon's `process.pod` and `process.docker`, as far as the workload map
knows them.

Pins: the sensor's links and process cache are pinned in `<pin root>-sensor/`, a
sibling of the engine's pin root, so the engine's adopt, drift inventory and load
listing never see them as a policy. `stop()` removes them; after a crash the next
start removes what was left (the links would otherwise keep the programs running
with no reader), and so does `palisade-agent reset`.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Workload
from .events import EventLog
from .metrics import AgentMetrics

__all__ = ["NodeSensor", "PodResolver", "container_of", "pin_dir", "remove_pins"]

log = logging.getLogger("palisade.agent.sensor")

PIN_SUFFIX = "-sensor"
POLL_MS = 200
_DROPS_EVERY = 1.0  # seconds between reads of the kernel's count of records the ring refused

# `<runtime>-<64 hex>.scope` (systemd cgroup driver) or a bare 64-hex directory (cgroupfs driver)
_CONTAINER = re.compile(r"^(?:(docker|cri-containerd|crio|libpod)-)?([0-9a-f]{64})(?:\.scope)?$")
# how Kubernetes names the runtime in a container id (`containerd://…`)
_RUNTIME = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o", "libpod": "podman"}
_DOCKER_LEN = 31  # Tetragon's `process.docker`: the container id cut to 31 characters


def pin_dir(pin_root: Path) -> Path:
    """Where the sensor pins, for an engine pin root."""
    return pin_root.with_name(pin_root.name + PIN_SUFFIX)


def remove_pins(pin_root: Path) -> tuple[list[str], list[str]]:
    """Unpin what a sensor left under `pin_dir(pin_root)` (its links detach once unpinned): (removed, problems)."""
    d = pin_dir(pin_root)
    removed: list[str] = []
    problems: list[str] = []
    if not d.is_dir():
        return removed, problems
    for p in sorted(d.iterdir()):
        try:
            p.unlink()
            removed.append(p.name)
        except OSError as e:
            problems.append(f"{p}: {e.strerror}")
    try:
        d.rmdir()
    except OSError as e:
        problems.append(f"{d}: {e.strerror}")
    return removed, problems


@dataclass(frozen=True)
class Container:
    id: str  # `<runtime>://<64 hex>`, or the bare hex when the cgroup does not name its runtime
    hex: str


def container_of(cgroup_path: str) -> Container | None:
    """The container whose cgroup this is (the innermost path component that names one), if any."""
    for part in reversed(cgroup_path.strip("/").split("/")):
        m = _CONTAINER.match(part)
        if m is not None:
            runtime = _RUNTIME.get(m[1] or "")
            return Container(f"{runtime}://{m[2]}" if runtime else m[2], m[2])
    return None


@dataclass(frozen=True)
class Placement:
    """What the workload map says of one cgroup: Tetragon's `pod` and `docker` fields."""

    pod: dict[str, Any]
    docker: str | None


class PodResolver:
    """cgroup id → Placement, for the configured workloads and the cgroups below them.

    A cgroup id is the inode of the cgroup's directory. The workloads' directories are
    stat'ed (again on a miss: a workload's cgroup may be created after the agent
    started); an id that is none of them is placed by the process's own cgroup path
    (/proc/<pid>/cgroup), read once per cgroup id. The answer is cached per id.
    """

    def __init__(self, workloads: Sequence[Workload], cgroup_root: Path | None) -> None:
        self._workloads = tuple(workloads)
        self._root = cgroup_root
        self._cache: dict[int, Placement | None] = {}
        self._lock = threading.Lock()

    def add(self, w: Workload) -> None:
        """A workload that appeared (a container the runtime reported): its processes' events name it."""
        with self._lock:
            self._workloads = (*(x for x in self._workloads if x.cgroup != w.cgroup), w)
            self._cache = {k: v for k, v in self._cache.items() if v is not None}  # misses may be its now

    def remove(self, w: Workload) -> None:
        """A workload that went away; what was cached for its cgroups stays (events still in flight)."""
        with self._lock:
            self._workloads = tuple(x for x in self._workloads if x.cgroup != w.cgroup)

    def _path(self, w: Workload) -> str:
        """The workload's cgroup relative to the cgroup2 root, as /proc/<pid>/cgroup writes it."""
        root = str(self._root) if self._root is not None else ""
        p = w.cgroup[len(root):] if root and w.cgroup.startswith(root + "/") else w.cgroup
        return "/" + p.strip("/")

    def of(self, cgroup_id: int, pid: int) -> Placement | None:
        with self._lock:
            workloads = self._workloads
            if cgroup_id in self._cache:
                return self._cache[cgroup_id]
        if not workloads or not cgroup_id or self._root is None:
            return None
        known, found = self._resolve(cgroup_id, pid, workloads)
        if not known:
            return None  # the process is gone or moved, and its cgroup unseen: ask again next time
        with self._lock:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[cgroup_id] = found
        return found

    def _resolve(self, cgroup_id: int, pid: int, workloads: Sequence[Workload]) -> tuple[bool, Placement | None]:
        """(whether the cgroup could be told, its placement)."""
        assert self._root is not None
        paths = {self._path(w): w for w in workloads}
        for rel, w in paths.items():
            with contextlib.suppress(OSError):
                if os.stat(self._root / rel.lstrip("/")).st_ino == cgroup_id:
                    return True, _placement(w, rel)
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False, None
        own = next((line[3:] for line in text.splitlines() if line.startswith("0::")), None)
        if own is None:
            return True, None  # no cgroup v2 here
        try:
            if os.stat(self._root / own.lstrip("/")).st_ino != cgroup_id:
                return False, None  # it moved since: this path is not the id's
        except OSError:
            return False, None
        best = max((p for p in paths if own == p or own.startswith(p.rstrip("/") + "/")), key=len, default=None)
        return True, (_placement(paths[best], own) if best is not None else None)


def _placement(w: Workload, cgroup_path: str) -> Placement:
    """Tetragon's Pod: for a container the runtime reported, all it said (image, start time, workload);
    from the hand-written map, what the map knows: its name is the pod's, the container's and the
    workload's, and no runtime is asked, so no image, container start or pid."""
    if w.container is not None:
        return Placement(w.container.tetragon_pod(), w.container.id[:_DOCKER_LEN])
    pod: dict[str, Any] = {"namespace": w.namespace or "default", "name": w.name}
    c = container_of(cgroup_path)
    if c is not None:
        pod["container"] = {"id": c.id, "name": w.name}
    if w.labels:
        pod["pod_labels"] = dict(w.labels)
    pod["workload"] = w.name
    return Placement(pod, c.hex[:_DOCKER_LEN] if c is not None else None)


class NodeSensor:
    """The base sensor, attached, with a thread writing its events; `stop()` detaches and unpins."""

    def __init__(self, node: str, events: EventLog, *, workloads: Sequence[Workload] = (),
                 pin_root: Path | None = None, metrics: AgentMetrics | None = None,
                 obj: bytes | None = None, cache_dir: Path | None = None, seed: bool = True) -> None:
        from bpf.core import procfs
        from bpf.core.records import ExecRecord
        from bpf.core.sensor import Sensor, build

        self._exec_record = ExecRecord
        self.events = events
        self.metrics = metrics
        self.pods = PodResolver(workloads, procfs.cgroup2_mount())
        self.pin_dir = pin_dir(pin_root) if pin_root is not None else None
        self.failed = 0  # records that could not be turned into an event (logged)
        self._dropped = 0
        self._stop = threading.Event()
        if pin_root is not None:
            removed, problems = remove_pins(pin_root)  # what a sensor that died left attached
            if removed:
                log.warning("removed %d pins a previous sensor left in %s", len(removed), self.pin_dir)
            for p in problems:
                log.error("cannot remove a previous sensor's pin: %s", p)
        if self.pin_dir is not None:
            self.pin_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            data = obj if obj is not None else build(cache_dir).read()
            self.sensor = Sensor(data, node, pin_dir=self.pin_dir, on_event=self._on_event)
        except BaseException:
            if self.pin_dir is not None:
                with contextlib.suppress(OSError):
                    self.pin_dir.rmdir()
            raise
        try:
            self.seeded = self.sensor.seed() if seed else 0
        except BaseException:
            self._close()
            raise
        self.started_in = time.monotonic() - t0
        self._thread = threading.Thread(target=self._run, name="palisade-sensor", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the reader thread

    def _run(self) -> None:
        from bpf.errors import BpfError

        next_drops = time.monotonic() + _DROPS_EVERY
        while not self._stop.is_set():
            try:
                self.sensor.poll(POLL_MS)
            except BpfError:
                log.exception("reading the base sensor failed")
                self._stop.wait(0.5)
            if time.monotonic() >= next_drops:
                next_drops = time.monotonic() + _DROPS_EVERY
                self._count_drops()

    def _count_drops(self) -> None:
        from bpf.errors import BpfError

        try:
            n = self.sensor.dropped()
        except BpfError:
            return
        if n > self._dropped:
            lost, self._dropped = n - self._dropped, n
            self.events.write({"events_dropped": {
                "count": lost, "detail": f"{lost} process events did not fit the base sensor's ring buffer"}})
            if self.metrics is not None:
                self.metrics.events_dropped.inc(lost)

    def _on_event(self, ev: Any) -> None:
        try:
            self.events.write(self.annotate(ev))
        except Exception:  # one bad record must not stop the reader
            self.failed += 1
            log.exception("base sensor record could not be written")
            return
        if self.metrics is not None:
            self.metrics.events.labels(next(iter(ev.json)), "none").inc()

    def annotate(self, ev: Any) -> dict[str, Any]:
        """The event with `pod`/`docker` on its process, parent and ancestors, for processes in a workload."""
        doc: dict[str, Any] = ev.json
        rec = ev.record
        body = doc.get("process_exec") or doc.get("process_exit")
        assert isinstance(body, dict)
        table = self.sensor.table
        # an exit's process is rendered from its exec record when the table has it: the pid it had then
        own = rec if isinstance(rec, self._exec_record) else table.get(rec.pid, rec.ktime)
        _place(body.get("process"), self.pods.of(rec.cgroup_id, rec.pid), (own or rec).nspid)
        parent = table.get(rec.ppid, rec.parent_ktime)
        if parent is not None and "parent" in body:
            _place(body["parent"], self.pods.of(parent.cgroup_id, parent.pid), parent.nspid)
        rendered = body.get("ancestors")
        if isinstance(rendered, list):
            # the same walk the table rendered them from, in the same order (this thread renders and annotates)
            for proc, anc in zip(rendered, table.ancestors(rec), strict=False):
                _place(proc, self.pods.of(anc.cgroup_id, anc.pid), anc.nspid)
        return doc

    # ------------------------------------------------------------------ lifecycle

    @property
    def pins(self) -> tuple[Path, ...]:
        return self.sensor.pins

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading (what is queued is written first), detach, unpin."""
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.sensor.poll(0)  # the records queued before the links went
        self._close()

    def _close(self) -> None:
        self.sensor.close()
        if self.pin_dir is not None:
            with contextlib.suppress(OSError):
                self.pin_dir.rmdir()


def _place(proc: Any, where: Placement | None, nspid: int = 0) -> None:
    if where is None or not isinstance(proc, dict):
        return
    proc["pod"] = copy.deepcopy(where.pod)  # the cached one stays as the map said, whatever a reader does
    container = proc["pod"].get("container")
    if container is not None and nspid:
        container["pid"] = nspid  # Tetragon's Container.pid: the process's pid in the container's pid namespace
    if where.docker is not None:
        proc["docker"] = where.docker


def start(node: str, events: EventLog, *, workloads: Sequence[Workload], pin_root: Path,
          metrics: AgentMetrics | None = None) -> NodeSensor | None:
    """The agent's base sensor, or None (logged) when this node cannot run it: enforcement goes on without it."""
    from bpf.errors import BpfError

    try:
        s = NodeSensor(node, events, workloads=workloads, pin_root=pin_root, metrics=metrics)
    except (BpfError, OSError) as e:
        log.error("base sensor not started (no process_exec/process_exit events): %s", e)
        return None
    log.info("base sensor attached in %.0f ms (%d processes seeded from /proc), pinned in %s",
             s.started_in * 1000, s.seeded, s.pin_dir)
    return s


def pod_of(ev: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The `process.pod` of an event, whatever its kind (for tests and tools)."""
    for kind, body in ev.items():
        if kind.startswith("process_") and isinstance(body, Mapping):
            proc = body.get("process")
            if isinstance(proc, Mapping) and isinstance(proc.get("pod"), Mapping):
                return proc["pod"]  # type: ignore[no-any-return]
    return None

"""Which configured workload an event's process belongs to, by its cgroup.

A cgroup id (what the engine reports as `palisade.cgroup_id`) is the inode of the
cgroup2 directory, so the configured workloads' directories are stat'ed to map ids
to workloads; a miss re-reads them, since a workload's cgroup may be created after
the agent started. Events then carry Tetragon's `process.pod` (namespace, name,
workload, pod_labels), so `jq` filters, `palisade generate --events` and the
observations agree on the workload.

Containers discovered from the runtime (agent/containers.py) are workloads too, alongside the
configured map: `add` and `remove` follow them as they start and stop, and their events carry the
whole of Tetragon's pod (container id, name, image, start time; workload and its kind).
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

from .config import Workload

__all__ = ["WorkloadIndex", "pod_of"]


def pod_of(w: Workload) -> dict[str, Any]:
    """Tetragon's `process.pod` for a process of workload `w`."""
    if w.container is not None:
        return w.container.tetragon_pod()
    return {"namespace": w.namespace or "default", "name": w.name, "workload": w.name, "pod_labels": dict(w.labels)}


class WorkloadIndex:
    def __init__(self, workloads: Sequence[Workload] = ()) -> None:
        self._workloads = tuple(workloads)
        self._by_cgroup: dict[int, Workload | None] = {}
        self._lock = threading.Lock()

    def add(self, w: Workload) -> None:
        """A workload that appeared (a container that started): its cgroup is stat'ed now, while it exists."""
        with self._lock:
            self._workloads = (*(x for x in self._workloads if x.cgroup != w.cgroup), w)
            with contextlib.suppress(OSError):
                self._by_cgroup[os.stat(w.cgroup).st_ino] = w

    def remove(self, w: Workload) -> None:
        """A workload that went away; events of its processes still in flight keep their pod."""
        with self._lock:
            self._workloads = tuple(x for x in self._workloads if x.cgroup != w.cgroup)

    def of(self, cgroup_id: Any) -> Workload | None:
        """The workload whose cgroup has this id, or None."""
        if not isinstance(cgroup_id, int) or isinstance(cgroup_id, bool) or not self._workloads:
            return None
        with self._lock:
            if cgroup_id not in self._by_cgroup:
                from bpf import syscall

                root = syscall.cgroup2_root()
                for w in self._workloads:
                    path = Path(w.cgroup) if w.cgroup.startswith(str(root)) else root / w.cgroup.lstrip("/")
                    with contextlib.suppress(OSError):
                        self._by_cgroup[os.stat(path).st_ino] = w
                if len(self._by_cgroup) > 4096:
                    self._by_cgroup.clear()
                self._by_cgroup.setdefault(cgroup_id, None)  # not a workload's: do not stat again for it
            return self._by_cgroup[cgroup_id]

    def annotate(self, event: MutableMapping[str, Any]) -> None:
        """Add `process.pod` to an event of a workload's process (an existing one is kept)."""
        meta = event.get("palisade")
        w = self.of(meta.get("cgroup_id")) if isinstance(meta, dict) else None
        if w is None:
            return
        for kind, body in event.items():
            if kind.startswith("process_") and isinstance(body, dict) and isinstance(body.get("process"), dict):
                body["process"].setdefault("pod", pod_of(w))

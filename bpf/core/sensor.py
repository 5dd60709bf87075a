"""The base sensor, loaded through libbpf: process_exec / process_exit for every process.

`Sensor` opens the CO-RE object (bytes from a bundle, or built here by `build()` and
cached), loads it, attaches its two raw tracepoint programs, optionally pins their
links and the process cache under a bpffs directory, and turns ring buffer records
into `SensorEvent`s: the decoded record and its Tetragon-shaped JSON.
"""
from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from . import procfs, records
from .build import BuiltObject, compile_object
from .errors import MapOpFailed
from .libbpf import BPF_NOEXIST, BpfObject, Link, RingBuffer

SOURCE = Path(__file__).with_name("sensor.bpf.c")
PROGRAMS = ("palisade_exec", "palisade_exit")
RINGBUF = "events"
CACHE_MAP = "proc_cache"
DROPS_MAP = "drops"


def build(cache_dir: Path | None = None) -> BuiltObject:
    """The sensor's object, compiled once per (source, clang, kernel BTF) and cached."""
    return compile_object(SOURCE, cache_dir)


@dataclass(frozen=True)
class SensorEvent:
    record: records.Record
    json: dict[str, Any]


class Sensor:
    """Loaded and attached on construction; `close()` (or leaving the `with`) detaches and unpins."""

    def __init__(self, obj: bytes, node: str, *, pin_dir: Path | None = None,
                 on_event: Callable[[SensorEvent], None] | None = None,
                 clock: records.Clock | None = None, ring_bytes: int | None = None) -> None:
        self.node = node
        # init's namespaces, read once: `is_host` of every event's namespaces is an equality with these
        self.table = records.ProcessTable(node, clock or records.Clock.now(), host_ns=procfs.host_namespaces())
        self._on_event = on_event
        self._pending: list[SensorEvent] = []
        self._links: list[Link] = []
        self._pins: list[Path] = []
        self._rb: RingBuffer | None = None
        self._obj = BpfObject.open_mem(obj, "palisade_sensor")
        try:
            if ring_bytes is not None:
                self._obj.map(RINGBUF).set_max_entries(ring_bytes)
            self._obj.load()
            for name in PROGRAMS:
                link = self._obj.program(name).attach()
                self._links.append(link)
                if pin_dir is not None:
                    link.pin(pin_dir / name)
                    self._pins.append(pin_dir / name)
            if pin_dir is not None:
                self._obj.map(CACHE_MAP).pin(pin_dir / CACHE_MAP)
                self._pins.append(pin_dir / CACHE_MAP)
            self._rb = RingBuffer(self._obj.map(RINGBUF), self._record)
        except BaseException:
            self.close()
            raise

    @classmethod
    def start(cls, node: str, cache_dir: Path | None = None, **kw: Any) -> Sensor:
        return cls(build(cache_dir).read(), node, **kw)

    @property
    def object(self) -> BpfObject:
        return self._obj

    @property
    def pins(self) -> tuple[Path, ...]:
        return tuple(self._pins)

    def _record(self, data: bytes) -> None:
        rec = records.decode(data)
        ev = SensorEvent(rec, self.table.render(rec))
        if self._on_event is not None:
            self._on_event(ev)
        else:
            self._pending.append(ev)

    def poll(self, timeout_ms: int = 100) -> list[SensorEvent]:
        """Events that arrived within timeout_ms (all of them, when no on_event callback was given)."""
        if self._rb is None:
            return []
        self._rb.poll(timeout_ms)
        out, self._pending = self._pending, []
        return out

    def seed(self, proc: Path = Path("/proc")) -> int:
        """Put the processes already running into the kernel's process cache (and the table); returns how many.

        An entry the kernel made meanwhile (the process exec'd since the scan) is kept.
        """
        cache = self._obj.map(CACHE_MAP)
        seeded: list[records.ExecRecord] = []
        for rec in procfs.scan(proc):
            try:
                cache.update(rec.pid.to_bytes(4, "little"), procfs.cache_value(rec), BPF_NOEXIST)
            except MapOpFailed as e:
                if e.errno == errno.EEXIST:
                    continue
                raise
            seeded.append(rec)
        self.table.add_all(seeded)  # at once: each is linked to its parent whatever the scan's order
        return len(seeded)

    def dropped(self) -> int:
        """Records the kernel could not queue because the ring buffer was full, since load."""
        raw = self._obj.map(DROPS_MAP).lookup(bytes(4)) or b""
        return sum(int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8))

    def close(self) -> None:
        if self._rb is not None:
            self._rb.close()
            self._rb = None
        for pin in self._pins:
            with contextlib.suppress(FileNotFoundError):
                pin.unlink()
        self._pins.clear()
        for link in self._links:
            link.close()
        self._links.clear()
        self._obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

"""Helpers for the CO-RE engine's kernel tests: what is missing, a gatherer of sensor events, a runner."""
from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bpf.core.records import ExecRecord, ExitRecord
from bpf.core.sensor import Sensor, SensorEvent

BPFFS = Path("/sys/fs/bpf")


class Events:
    """Everything the sensor reports, gathered while a test waits for what it expects."""

    def __init__(self, s: Sensor) -> None:
        self.sensor = s
        self.seen: list[SensorEvent] = []

    def wait_for(self, pred: Callable[[SensorEvent], bool], timeout: float = 10.0) -> SensorEvent:
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for ev in self.seen[checked:]:
                if pred(ev):
                    return ev
            checked = len(self.seen)
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching event within {timeout} s ({len(self.seen)} seen)")
            self.seen.extend(self.sensor.poll(50))

    def exec_of(self, pid: int, args: Sequence[str] | None = None) -> SensorEvent:
        def match(ev: SensorEvent) -> bool:
            r = ev.record
            return isinstance(r, ExecRecord) and r.pid == pid and (args is None or r.args == tuple(args))
        return self.wait_for(match)

    def exit_of(self, pid: int) -> SensorEvent:
        return self.wait_for(lambda ev: isinstance(ev.record, ExitRecord) and ev.record.pid == pid)


def run(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 30)
    return subprocess.run(list(argv), **kw)


@contextlib.contextmanager
def bpffs_dir() -> Iterator[Path]:
    """A private directory in bpffs; whatever is left pinned in it is removed on the way out."""
    d = BPFFS / f"palisade-test-core-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()

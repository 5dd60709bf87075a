"""Events as JSON lines in Tetragon's export shape, in a file rotated by size, and their compact form.

The file is `<state>/events.jsonl`; when it passes `max_bytes` it becomes
`events.jsonl.1` (older ones shift up, the oldest beyond `keep` is deleted), as
Tetragon's export does. `palisade-agent events` reads the files oldest first
and, with `-f`, follows the live one across rotations.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["EVENTS_FILE", "EventLog", "compact", "follow", "read_all"]

EVENTS_FILE = "events.jsonl"

_EMOJI = {
    "process_exec": "🚀",
    "process_exit": "💥",
    "process_kprobe": "🔍",
    "process_tracepoint": "🔍",
    "policy_applied": "📜",
    "verification_refused": "⛔",
    "drift_detected": "⚠️",
    "drift_healed": "🩹",
    "index_expired": "⌛",
    "events_dropped": "🕳️",
}
_ACTION_EMOJI = {"KPROBE_ACTION_SIGKILL": "💀", "KPROBE_ACTION_OVERRIDE": "🚫", "KPROBE_ACTION_SIGNAL": "📶"}


class EventLog:
    """Append-only JSON-lines file with size rotation; writers on several threads are serialised.

    A disk fault (full, read-only, I/O error) never reaches the writer: the event is dropped and
    counted (`dropped`), `on_error(err)` is told once per failing write, `on_recovered()` when a
    write works again. Each line is one unbuffered write, so a full disk can tear at most the
    line it refused; the next line starts on a fresh line and readers skip the torn one."""

    def __init__(self, directory: Path, *, max_bytes: int = 10 * 1024 * 1024, keep: int = 3,
                 on_error: Callable[[OSError], None] | None = None,
                 on_recovered: Callable[[], None] | None = None) -> None:
        self.path = Path(directory) / EVENTS_FILE
        self.max_bytes, self.keep = max_bytes, keep
        self.on_error, self.on_recovered = on_error, on_recovered
        self.dropped = 0
        self._failing = False
        self._torn = False
        self._lock = threading.Lock()
        self._f: BinaryIO | None = None
        with self._lock:
            self._open()

    def _open(self) -> bool:
        try:
            self._f = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held for the agent's lifetime
            return True
        except OSError as e:
            self._f = None
            self._failed(e)
            return False

    def _failed(self, e: OSError) -> None:
        self._failing = True
        if self.on_error is not None:
            self.on_error(e)

    def write(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), sort_keys=True, default=str).encode() + b"\n"
        recovered = False
        with self._lock:
            if self._f is None and not self._open():
                self.dropped += 1
                return
            assert self._f is not None
            try:
                view = memoryview(b"\n" + line if self._torn else line)
                self._torn = True  # until the whole line is written
                while view:
                    view = view[self._f.write(view) or 0:]
                self._torn = False
                if self._f.tell() >= self.max_bytes:
                    self._rotate()
            except OSError as e:
                self.dropped += 1
                self._failed(e)
                return
            if self._failing:
                self._failing, recovered = False, True
        if recovered and self.on_recovered is not None:
            self.on_recovered()

    @property
    def failing(self) -> bool:
        return self._failing

    def retry(self, marker: Mapping[str, Any]) -> None:
        """While writes fail, try `marker` (the agent's `events_dropped` event, every second): the first
        one that is written ends the disk problem and tells the reader how many events are missing."""
        if self._failing:
            self.write(marker)

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()

    def _rotate(self) -> None:
        assert self._f is not None
        self._f.close()
        self._f = None
        for i in range(self.keep - 1, 0, -1):  # .1 → .2 → ... ; the one at .keep is overwritten
            older = self.path.with_name(f"{EVENTS_FILE}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{EVENTS_FILE}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{EVENTS_FILE}.1"))
        self._open()


def _files(directory: Path) -> list[Path]:
    base = Path(directory) / EVENTS_FILE
    rotated = sorted((p for p in base.parent.glob(f"{EVENTS_FILE}.*") if p.suffix[1:].isdigit()),
                     key=lambda p: -int(p.suffix[1:]))
    return [*rotated, *([base] if base.exists() else [])]


def read_all(directory: Path) -> Iterator[dict[str, Any]]:
    """Every event on disk, oldest first; unreadable lines are skipped (a torn last line after a crash)."""
    for path in _files(directory):
        with open(path, "rb") as f:
            for line in f:
                ev = _parse(line)
                if ev is not None:
                    yield ev


def follow(directory: Path, *, poll: float = 0.2, stop: Any = None) -> Iterator[dict[str, Any]]:
    """Events appended to the live file from now on, across rotations (`tail -F`)."""
    path = Path(directory) / EVENTS_FILE
    f = None
    ino = None
    buf = b""
    while stop is None or not stop():
        if f is None:
            try:
                f = open(path, "rb")  # noqa: SIM115
                ino = os.fstat(f.fileno()).st_ino
                f.seek(0, os.SEEK_END)
            except FileNotFoundError:
                time.sleep(poll)
                continue
        chunk = f.read()
        if chunk:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                ev = _parse(line)
                if ev is not None:
                    yield ev
            continue
        try:
            rotated = os.stat(path).st_ino != ino
        except FileNotFoundError:
            rotated = True
        if rotated:
            f.close()
            f, buf = None, b""
            try:  # the new file's content so far belongs to the stream too
                f = open(path, "rb")  # noqa: SIM115
                ino = os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                f = None
            continue
        time.sleep(poll)
    if f is not None:
        f.close()


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None


def compact(ev: Mapping[str, Any]) -> str:
    """One line per event: emoji, node/workload, binary, what happened (like `tetra getevents -o compact`)."""
    kind = next((k for k in _EMOJI if k in ev), str(ev.get("type", "event")))
    body = ev.get(kind) if isinstance(ev.get(kind), dict) else ev
    assert isinstance(body, Mapping)
    proc = body.get("process") if isinstance(body.get("process"), dict) else {}
    assert isinstance(proc, Mapping)
    pod = proc.get("pod") if isinstance(proc.get("pod"), dict) else None
    where = ev.get("node_name", "")
    if isinstance(pod, Mapping):
        where = f"{pod.get('namespace', '')}/{pod.get('name', '')}".strip("/") or where
    binary = proc.get("binary", "")
    if kind in ("process_kprobe", "process_tracepoint"):
        action = str(body.get("action", ""))
        hook = body.get("function_name") or f"{body.get('subsys', '')}:{body.get('event', '')}"
        emoji = _ACTION_EMOJI.get(action, _EMOJI[kind]) if _acted(ev) else _EMOJI[kind]
        verb = action.removeprefix("KPROBE_ACTION_").lower() or "post"
        if not _acted(ev) and verb not in ("post", ""):
            verb = f"would {verb}"
        return f"{emoji} {kind.removeprefix('process_'):<10} {where} {binary} {hook} {verb} " \
               f"[{body.get('policy_name', '')}]".rstrip()
    if kind in ("process_exec", "process_exit"):
        args = proc.get("arguments", "")
        return f"{_EMOJI[kind]} {kind.removeprefix('process_'):<10} {where} {binary} {args}".rstrip()
    detail = body.get("detail") or body.get("reason") or ""
    return f"{_EMOJI.get(kind, '•')} {kind:<10} {where} {detail}".rstrip()


def _acted(ev: Mapping[str, Any]) -> bool:
    pal = ev.get("palisade")
    if isinstance(pal, Mapping) and "acted" in pal:
        return bool(pal["acted"])
    return True

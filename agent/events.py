"""Events as JSON lines in Tetragon's export shape, in a file rotated by size, and their compact form.

The file is `<state>/events.jsonl`; when it passes `max_bytes` it becomes
`events.jsonl.1` (older ones shift up, the oldest beyond `keep` is deleted), as
Tetragon's export does. `palisade-agent events` reads the files oldest first
and, with `-f`, follows the live one across rotations.
"""
from __future__ import annotations

import base64
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

__all__ = ["EVENTS_FILE", "EventLog", "compact", "follow", "read_all"]

EVENTS_FILE = "events.jsonl"

_EMOJI = {
    "process_exec": "🚀",
    "process_exit": "💥",
    "process_kprobe": "🔍",
    "process_tracepoint": "🔍",
    "process_lsm": "🔒",
    "process_uprobe": "🕵️",
    "process_usdt": "🕵️",
    "process_loader": "🧬",
    "process_throttle": "🧬",
    "policy_applied": "📜",
    "verification_refused": "⛔",
    "drift_detected": "⚠️",
    "drift_healed": "🩹",
    "index_expired": "⌛",
    "events_dropped": "🕳️",
}
_ACTION_EMOJI = {"KPROBE_ACTION_SIGKILL": "💀", "KPROBE_ACTION_OVERRIDE": "🚫", "KPROBE_ACTION_SIGNAL": "📶"}


def _line(event: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(event, default=str, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # what orjson does not take (an integer past 64 bits): the standard encoder
        return json.dumps(event, separators=(",", ":"), default=str).encode() + b"\n"


class EventLog:
    """Append-only JSON-lines file with size rotation; writers on several threads are serialised.

    A disk fault (full, read-only, I/O error) never reaches the writer: the event is dropped and
    counted (`dropped`), `on_error(err)` is told once per failing write, `on_recovered()` when a
    write works again. Each batch of lines is one unbuffered write, so a full disk can tear at most the
    line it refused (the rest of that batch is dropped and counted); the next write starts on a
    fresh line and readers skip the torn one."""

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
        self.write_many((event,))

    def write_many(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Append events in one write (a burst of thousands costs one system call, not thousands)."""
        if not events:
            return
        line = b"".join(map(_line, events))
        recovered = False
        with self._lock:
            if self._f is None and not self._open():
                self.dropped += len(events)
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
                self.dropped += len(events)
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
    """One line per event, as `tetra getevents -o compact` prints it (no colours, trailing blanks cut).

    Tetragon's kinds give Tetragon's line; an event of a policy that has an action gets
    Palisade's note after it (the action, or `would <action>` when the mode held it back,
    and the policy's name), so a line still says which policy acted or would have. Palisade's own
    events (policy_applied, drift, ...) get a line of the same form."""
    kind = next((k for k in _EMOJI if k in ev), str(ev.get("type", "event")))
    body = ev.get(kind) if isinstance(ev.get(kind), dict) else ev
    assert isinstance(body, Mapping)
    if kind in _TETRAGON_KINDS:
        line = _tetragon_line(kind, body, str(ev.get("node_name", "")))
        return f"{line}{_policy_note(ev, body)}".rstrip()
    where = ev.get("node_name", "")
    detail = body.get("detail") or body.get("reason") or ""
    return f"{_EMOJI.get(kind, '•')} {kind:<10} {where} {detail}".rstrip()


_TETRAGON_KINDS = ("process_exec", "process_exit", "process_kprobe", "process_tracepoint", "process_lsm",
                   "process_uprobe", "process_usdt", "process_loader", "process_throttle")
_SYSCALL_PREFIX = re.compile(r"^__(x64|ia32|arm64|riscv)_")
_NS_NAMES = {0: "any", 0x2000000: "cgroup", 0x8000000: "ipc", 0x40000000: "net", 0x20000: "mnt",
             0x20000000: "pid", 0x80: "time", 0x10000000: "user", 0x4000000: "uts"}
_CAPS_COLUMN = 120  # Tetragon right-aligns the capability note to this column


def _m(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _label(emoji: str, word: str) -> str:
    return f"{emoji} {word:<7}"  # Go's %-7s


def _process_info(node: str, proc: Mapping[str, Any]) -> tuple[str, str]:
    """(`<node or namespace/pod> <binary>`, the capability note) as Tetragon's colourer prints them."""
    pod = proc.get("pod")
    source = f"{pod.get('namespace', '')}/{pod.get('name', '')}" if isinstance(pod, Mapping) else node
    eff = _m(proc.get("cap")).get("effective")
    caps = "🛑 CAP_SYS_ADMIN" if isinstance(eff, list) and "CAP_SYS_ADMIN" in eff else ""
    return f"{source} {proc.get('binary', '')}", caps


def _with_caps(line: str, caps: str) -> str:
    if not caps:
        return line
    pad = max(0, _CAPS_COLUMN - len(line.encode()))  # Go measures the line in bytes, the pad in runes
    return f"{line} {caps:>{pad}}"


def _arg(args: Any, i: int, key: str, default: Any = "") -> Any:
    if isinstance(args, list) and len(args) > i and isinstance(args[i], Mapping):
        return args[i].get(key, default)
    return default


def _sock(args: Any) -> str:
    sa = _m(_arg(args, 0, "sock_arg", {}))
    return f"tcp {sa.get('saddr', '')}:{sa.get('sport', 0)} -> {sa.get('daddr', '')}:{sa.get('dport', 0)}"


def _kprobe_line(info: str, body: Mapping[str, Any]) -> str:
    fn = str(body.get("function_name", ""))
    sc = _SYSCALL_PREFIX.sub("", fn)
    a = body.get("args")
    n = len(a) if isinstance(a, list) else 0
    if sc in ("sys_write", "sys_read"):
        label = _label("📝", "write") if sc == "sys_write" else _label("📚", "read")
        size = f"{_arg(a, 2, 'size_arg', 0)} bytes" if n > 2 else ""
        return f"{label} {info} {_m(_arg(a, 0, 'file_arg', {})).get('path', '')} {size}"
    simple = {  # name → (emoji, word, what follows the process)
        "fd_install": ("📬", "open", lambda: _m(_arg(a, 1, "file_arg", {})).get("path", "")),
        "sys_openat": ("📬️", "openat", lambda: _arg(a, 1, "string_arg")),
        "sys_open": ("📬️", "open", lambda: _arg(a, 1, "string_arg")),
        "sys_close": ("📪", "close", lambda: _m(_arg(a, 0, "file_arg", {})).get("path", "")),
        "sys_mount": ("💾", "mount", lambda: f"{_arg(a, 0, 'string_arg')} {_arg(a, 1, 'string_arg')}"),
        "sys_pivot_root": ("💾", "pivot_root", lambda: f"{_arg(a, 0, 'string_arg')} {_arg(a, 1, 'string_arg')}"),
        "sys_setuid": ("🔑", "setuid", lambda: str(_arg(a, 0, "int_arg", 0)) if n > 0 else ""),
        "sys_setns": ("🔧", "setns", lambda: _NS_NAMES.get(_arg(a, 1, "int_arg", 0), "") if n > 1 else ""),
        "tcp_connect": ("🔌", "connect", lambda: _sock(a) if n > 0 else ""),
        "tcp_close": ("🧹", "close", lambda: _sock(a) if n > 0 else ""),
        "bpf_check": ("🐝", "bpf_load", lambda: "{} {} instruction count {}".format(
            *(_m(_arg(a, 0, "bpf_attr_arg", {})).get(k, d) for k, d in
              (("prog_type", ""), ("prog_name", ""), ("insn_cnt", 0)))) if n > 0 else ""),
        "security_perf_event_alloc": ("🐝", "perf_event_alloc", lambda: "{} {}".format(
            *(_m(_arg(a, 0, "perf_event_arg", {})).get(k, "") for k in ("type", "kprobe_func"))) if n > 0 else ""),
        "security_bpf_map_alloc": ("🗺", "bpf_map_create", lambda: "{} {} key size {} value size {} max entries {}"
                                   .format(*(_m(_arg(a, 0, "bpf_map_arg", {})).get(k, d) for k, d in
                                             (("map_type", ""), ("map_name", ""), ("key_size", 0),
                                              ("value_size", 0), ("max_entries", 0)))) if n > 0 else ""),
    }
    if sc in simple:
        emoji, word, rest = simple[sc]
        return f"{_label(emoji, word)} {info} {rest()}"
    if sc in ("sys_clock_settime", "proc_exec_connector"):
        emoji = "⏰" if sc == "sys_clock_settime" else "🔧"
        return f"{_label(emoji, sc.removeprefix('sys_'))} {info}"
    if sc == "tcp_sendmsg":
        return f"{_label('📤', 'sendmsg')} {info} {_sock(a) if n > 0 else ''} bytes {_arg(a, 1, 'int_arg', 0)}"
    if sc == "security_file_permission":
        label, attr = _label("❓", sc), ""
        if n > 1:
            label = {2: _label("📝", "write"), 4: _label("📚", "read")}.get(_arg(a, 1, "int_arg", 0), label)
            attr = _m(_arg(a, 0, "file_arg", {})).get("path", "")
        return f"{label} {info} {attr}"
    if sc == "security_mmap_file":
        label, attr = _label("❓", sc), ""
        if n > 1:
            prot = _arg(a, 1, "uint_arg", 0)
            prot = prot if isinstance(prot, int) else 0
            tag = "mmap-" + "".join(c for bit, c in ((1, "r"), (2, "w"), (4, "x")) if prot & bit)
            label, attr = _label("📝", tag), _m(_arg(a, 0, "file_arg", {})).get("path", "")
        return f"{label} {info} {attr}"
    if sc == "security_path_truncate":
        if n > 0:
            return f"{_label('📝', 'truncate')} {info} {_m(_arg(a, 0, 'path_arg', {})).get('path', '')}"
        return f"{_label('❓', sc)} {info} "
    return f"{_label('❓', 'syscall')} {info} {fn}"


def _raw_syscall(body: Mapping[str, Any]) -> str:
    """The syscall a raw_syscalls/sys_enter event entered: its name (Tetragon adds the argument list)."""
    args = body.get("args")
    abi, nr = "x64", _arg(args, 0, "long_arg", None)
    sid = _arg(args, 0, "syscall_id", None)
    if isinstance(sid, Mapping):
        abi, nr = str(sid.get("abi", "x64")), sid.get("id", 0)
    try:
        number = int(nr) if nr is not None else -1  # a long_arg is a string in protojson (int64)
    except (TypeError, ValueError):
        return "unknown"
    name = _syscall_names(abi).get(number)
    if name is None:
        return "unknown"
    return name if abi == "x64" else f"{abi}/{name}"


@functools.lru_cache(maxsize=4)
def _syscall_names(abi: str) -> dict[int, str]:
    if abi in ("i386", "ia32"):
        from bpf import ia32

        return {n: f"sys_{k}" for k, n in ia32.NUMBERS.items()}
    if abi != "x64":
        return {}
    out: dict[int, str] = {}
    for header in (Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), Path("/usr/include/asm/unistd_64.h")):
        try:
            text = header.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^#define __NR_(\w+)\s+(\d+)$", text, re.M):
            out[int(m[2])] = f"sys_{m[1]}"
        break
    return out


def _tetragon_line(kind: str, body: Mapping[str, Any], node: str) -> str:
    proc = _m(body.get("process"))
    info, caps = _process_info(node, proc)
    if kind == "process_exec":
        line = f"{_label('🚀', 'process')} {info} {proc.get('arguments', '')}"
    elif kind == "process_exit":
        status = body.get("signal") or body.get("status", 0)
        line = f"{_label('💥', 'exit')} {info} {proc.get('arguments', '')} {status}"
    elif kind == "process_kprobe":
        line = _kprobe_line(info, body)
    elif kind == "process_tracepoint":
        if (body.get("subsys"), body.get("event")) == ("raw_syscalls", "sys_enter"):
            line = f"{_label('☎ ', 'syscall')} {info} {_raw_syscall(body)}"
        else:
            line = f"{_label('⁉️', 'tracepoint')} {info} {body.get('subsys', '')} {body.get('event', '')}"
    elif kind == "process_lsm":
        line = f"{_label('🔒', 'LSM')} {info} {body.get('function_name', '')}"
    elif kind == "process_uprobe":
        line = f"{_label('🕵️', 'uprobe')} {info} {body.get('path', '')} {body.get('symbol', '')}"
    elif kind == "process_usdt":
        line = (f"{_label('🕵️', 'usdt')} {info} {body.get('path', '')} {body.get('provider', '')} "
                f"{body.get('name', '')}")
    elif kind == "process_loader":  # the build ID in hex, as tetra prints the bytes
        try:
            build = base64.b64decode(str(body.get("buildid", ""))).hex()
        except ValueError:
            build = ""
        line = f"{_label('🧬', 'loader')} {info} {build + ' ' if build else ''}{body.get('path', '')}"
    else:  # process_throttle: no process
        typ = {"THROTTLE_START": "START", "THROTTLE_STOP": "STOP "}.get(str(body.get("type", "")), "")
        return f"{_label('🧬', 'throttle')} {typ} {body.get('cgroup', '')}"
    return _with_caps(line, caps)


def _policy_note(ev: Mapping[str, Any], body: Mapping[str, Any]) -> str:
    """Palisade's addition to the line of a policy that acts: ` 💀 sigkill [policy]`, ` would sigkill [policy]`
    (a post-only event's line is Tetragon's alone)."""
    policy = body.get("policy_name")
    action = str(body.get("action", ""))
    verb = action.removeprefix("KPROBE_ACTION_").lower()
    if not verb or verb == "post":
        return ""
    note = f" {_ACTION_EMOJI.get(action, '⚡')} {verb}" if _acted(ev) else f" would {verb}"
    return note + (f" [{policy}]" if isinstance(policy, str) and policy else "")


def _acted(ev: Mapping[str, Any]) -> bool:
    pal = ev.get("palisade")
    if isinstance(pal, Mapping) and "acted" in pal:
        return bool(pal["acted"])
    return True

"""Tracepoint format files: the typed field list of `events/<subsystem>/<event>/format`.

Tetragon counts tracepoint argument `index` over these fields, common fields
included (for `syscalls:sys_enter_*`: 0-3 common, 4 `__syscall_nr`, 5 the first
syscall argument). Without tracefs (the reconciler's CI) the layout of syscall
and the supported sched tracepoints is known well enough to compile: every
syscall argument is an 8-byte slot after the common header.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str
    offset: int
    size: int
    signed: bool

    @property
    def data_loc(self) -> bool:
        """A `__data_loc` field: a u32 (offset | length << 16) to a string inside the record."""
        return self.ctype.startswith("__data_loc")

    @property
    def pointer(self) -> bool:
        return "*" in self.ctype and not self.data_loc


Formats = Callable[[str, str], "tuple[Field, ...] | None"]

_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<sig>\d)")


def parse_format(text: str) -> tuple[Field, ...]:
    fields = []
    for m in _FIELD.finditer(text):
        decl = m.group("decl").strip()
        # "const char * filename", "unsigned long args[6]", "__data_loc char[] filename"
        name_m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)(\[\d*\])?$", decl)
        name = name_m.group(1) if name_m else decl
        ctype = decl[: name_m.start(1)].strip() if name_m else decl
        if name_m and name_m.group(2):
            ctype += name_m.group(2)
        fields.append(Field(name, ctype, int(m.group("off")), int(m.group("size")), m.group("sig") == "1"))
    return tuple(fields)


def tracefs_formats(root: Path = TRACEFS) -> Formats:
    """Formats read from tracefs, falling back to `builtin_formats` where tracefs is absent."""
    known: dict[tuple[str, str], tuple[Field, ...]] = {}  # a tracepoint's layout is fixed while the kernel runs

    def read(subsystem: str, event: str) -> tuple[Field, ...] | None:
        hit = known.get((subsystem, event))
        if hit is not None:
            return hit
        if not (root / "events").is_dir():
            return builtin_formats(subsystem, event)
        try:
            fields = parse_format((root / "events" / subsystem / event / "format").read_text())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None  # not cached: a module loaded later may bring it
        known[(subsystem, event)] = fields
        return fields

    return read


_COMMON = (
    Field("common_type", "unsigned short", 0, 2, False),
    Field("common_flags", "unsigned char", 2, 1, False),
    Field("common_preempt_count", "unsigned char", 3, 1, False),
    Field("common_pid", "int", 4, 4, True),
)

_SCHED = {
    "sched_process_exec": (Field("filename", "__data_loc char[]", 8, 4, False), Field("pid", "pid_t", 12, 4, True),
                           Field("old_pid", "pid_t", 16, 4, True)),
    "sched_process_fork": (Field("parent_comm", "__data_loc char[]", 8, 4, False),
                           Field("parent_pid", "pid_t", 12, 4, True),
                           Field("child_comm", "__data_loc char[]", 16, 4, False),
                           Field("child_pid", "pid_t", 20, 4, True)),
    "sched_process_exit": (Field("comm", "char[16]", 8, 16, False), Field("pid", "pid_t", 24, 4, True),
                           Field("prio", "int", 28, 4, True), Field("group_dead", "bool", 32, 1, False)),
}


def builtin_formats(subsystem: str, event: str) -> tuple[Field, ...] | None:
    """The layout without tracefs: syscalls and raw_syscalls generically, the three sched events by table."""
    if subsystem == "syscalls" and event.startswith("sys_enter_"):
        # without the format file a slot may hold an integer or a user pointer: the policy's type decides
        args = tuple(Field(f"arg{i}", "void *", 16 + 8 * i, 8, False) for i in range(6))
        return (*_COMMON, Field("__syscall_nr", "int", 8, 4, True), *args)
    if subsystem == "syscalls" and event.startswith("sys_exit_"):
        return (*_COMMON, Field("__syscall_nr", "int", 8, 4, True), Field("ret", "long", 16, 8, True))
    if subsystem == "raw_syscalls" and event == "sys_enter":
        return (*_COMMON, Field("id", "long", 8, 8, True), Field("args", "unsigned long[6]", 16, 48, False))
    if subsystem == "raw_syscalls" and event == "sys_exit":
        return (*_COMMON, Field("id", "long", 8, 8, True), Field("ret", "long", 16, 8, True))
    if subsystem == "sched" and event in _SCHED:
        return (*_COMMON, *_SCHED[event])
    return None

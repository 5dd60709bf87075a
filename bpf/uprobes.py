"""Where a uprobe of a policy goes on this node: the file the kernel attaches to and the offset in it.

The kernel puts a uprobe on an inode at a file offset (bpf.syscall.perf_event_open_uprobe),
so a policy's path is resolved to the file it names here (symlinks followed: `/bin/bash` is
`/usr/bin/bash` on a merged-/usr system) and its symbol to a file offset through the ELF
symbol tables (bpf.elf). That depends on the node's files, never on the policy alone, so it
is an attach parameter, not part of the program's source: the object a bundle carries is
the same whatever version of the binary a node has.

Tetragon runs in a container with the host's /proc mounted at `/procRoot`, and its
documentation writes host binaries as `/procRoot/1/root/usr/bin/bash`. The agent sees the
host's /proc at `/proc`, so `/procRoot/` is read as `/proc/` (events still report the
policy's path, as Tetragon's do).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from . import elf
from .errors import BpfError
from .policy import UprobeTarget, UsdtTarget

#: Tetragon's mount of the host's /proc inside its container.
PROC_ROOT = "/procRoot/"


class TargetUnresolvable(BpfError):
    """A user-space hook's file, or the place in it, is not on this node; `detail` says which and why."""

    #: What the message calls the hook, in front of its target.
    hook = ""

    def __init__(self, target: UprobeTarget | UsdtTarget, detail: str) -> None:
        self.target = target
        self.detail = detail
        super().__init__(f"{self.hook} {target.describe()}: {detail}")


class Unresolvable(TargetUnresolvable):
    """A uprobe's file or function is not on this node (or cannot be read)."""

    hook = "uprobe on"


@dataclass(frozen=True)
class Resolved:
    #: The real path of the file, which the kernel attaches to.
    file: str
    #: File offset of the probed instruction.
    offset: int


def host_path(path: str) -> str:
    """The path as this node names it: `/procRoot/...` is the host's /proc."""
    return "/proc/" + path[len(PROC_ROOT):] if path.startswith(PROC_ROOT) else path


@contextlib.contextmanager
def reading(target: UprobeTarget | UsdtTarget, error: type[TargetUnresolvable],
            *formats: type[Exception]) -> Iterator[tuple[str, str]]:
    """The file `target.path` names on this node, as (its real path, what a message adds where the policy's
    path was read as another); what goes wrong reading it is raised as `error`, the file format errors in
    `formats` in their own words."""
    if not target.path.startswith("/"):
        raise error(target, "the path must be absolute (a relative one would name a file relative to "
                            "the agent's working directory)")
    given = host_path(target.path)
    mapped = f" (read as {given})" if given != target.path else ""
    try:
        # /proc/<pid>/root is a magic link into that process's mount namespace, which realpath would read
        # as a plain link ("/"): opening through it (as the kernel does when it attaches) is what reaches
        # the process's file
        yield (given if given.startswith("/proc/") else os.path.realpath(given)), mapped
    except FileNotFoundError:
        raise error(target, f"no such file on this node{mapped}") from None
    except OSError as e:
        raise error(target, f"cannot read {target.path}{mapped}: {e.strerror or e}") from None
    except formats as e:
        raise error(target, f"{e}{mapped}") from None


def resolve(target: UprobeTarget) -> Resolved:
    """Where `target` is on this node; raises `Unresolvable` with the reason."""
    with reading(target, Unresolvable, elf.SymbolNotFound, elf.NotAnElf) as (real, mapped):
        size = os.stat(real).st_size
        if not os.path.isfile(real):
            raise Unresolvable(target, f"{real}{mapped} is not a regular file")
        if target.symbol is not None:
            name, _, extra = target.symbol.partition("+")
            try:
                delta = int(extra, 0) if extra else 0
            except ValueError:
                raise Unresolvable(target, f"symbol {target.symbol!r}: expected name or name+offset") from None
            offset = elf.symbol_offset(real, name) + delta
        elif target.address is not None:
            offset = elf.file_offset(real, target.address)
        else:
            assert target.offset is not None
            with open(real, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    raise Unresolvable(target, f"{real}{mapped} is not an ELF file")
            offset = target.offset
    if offset >= size:
        raise Unresolvable(target, f"offset {offset:#x} is past the end of {real} ({size} bytes)")
    return Resolved(real, offset)

"""Exceptions of the CO-RE engine (`bpf.core`): one class per failure kind, under `CoreError`.

`CoreError` is a `bpf.errors.BpfError`, so callers of the engine that catch the engine's
root also catch these. Library errors carry the errno and what was being done.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import ClassVar

from bpf.errors import BpfError


class CoreError(BpfError):
    """Root of the CO-RE engine's errors."""


# --- building (bpf.core.build) -------------------------------------------------------------

class BuildError(CoreError):
    """An object could not be built."""


class ToolMissing(BuildError):
    """clang or bpftool is not installed (scripts/kernel-tools.sh installs them)."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        super().__init__(f"{tool} is not installed (run scripts/kernel-tools.sh)")


class BtfUnavailable(BuildError):
    """The kernel exposes no BTF to generate vmlinux.h from."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"no kernel BTF at {path}: {reason}")


class ToolFailed(BuildError):
    """A build tool refused its input `source`; `message` is what the tool said. Each kind names its text
    in its class line (`pattern=`, a format of `source` and `message`)."""

    pattern: ClassVar[str] = "{source}: {message}"

    def __init_subclass__(cls, pattern: str = "{source}: {message}") -> None:
        super().__init_subclass__()
        cls.pattern = pattern

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        self.message = message
        super().__init__(self.pattern.format(source=source, message=message))


class VmlinuxFailed(ToolFailed, pattern="bpftool btf dump failed: {message}"):
    """bpftool could not dump the BTF (`source`) as C."""


class CompileFailed(ToolFailed, pattern="clang could not compile {source}:\n{message}"):
    """clang refused the source."""


class StripFailed(ToolFailed, pattern="bpftool gen object failed for {source}: {message}"):
    """bpftool gen object could not link the compiled object (dropping its DWARF)."""


# --- libbpf (bpf.core.libbpf) --------------------------------------------------------------

class LibbpfMissing(CoreError):
    """The system libbpf (libbpf.so.1) could not be loaded."""


class ObjectClosed(CoreError):
    """An object, link or ring buffer was used after it was closed."""


class NotFound(CoreError):
    """No program or map of that name in the object."""

    def __init__(self, kind: str, name: str, available: tuple[str, ...]) -> None:
        self.kind = kind
        self.name = name
        self.available = available
        super().__init__(f"no {kind} named {name!r} in the object (has: {', '.join(available) or 'none'})")


class LibbpfError(CoreError):
    """A libbpf call failed: `errno` and `action` say what and why; `log` is what libbpf printed."""

    def __init__(self, action: str, err: int, log: str = "", reason: str = "") -> None:
        self.action = action
        self.errno = abs(err)  # a system errno, or one of libbpf's own (4000..4099)
        self.log = log
        name = _errno.errorcode.get(self.errno, "libbpf")
        text = f"{action}: {reason or os.strerror(self.errno)} ({name})"
        super().__init__(f"{text}\n{log}" if log else text)


class OpenFailed(LibbpfError):
    """libbpf could not parse the ELF object."""


class LoadFailed(LibbpfError):
    """The kernel refused the object (verifier, map creation, CO-RE relocation); `log` has its words."""


class AttachFailed(LibbpfError):
    """A program could not be attached."""


class PinFailed(LibbpfError):
    """A link or map could not be pinned or unpinned in bpffs."""


class MapOpFailed(LibbpfError):
    """A map update, lookup or delete failed."""


class RingBufferFailed(LibbpfError):
    """A ring buffer could not be set up or polled."""


# --- records (bpf.core.records) ------------------------------------------------------------

class RecordError(CoreError):
    """A ring buffer record does not have the sensor's layout."""

"""Addresses to names: kernel addresses through /proc/kallsyms, user addresses through a process's memory map
and the ELF symbols of the file mapped there. For stack traces (Tetragon's `kernel_stack_trace` and
`user_stack_trace` entries) and for the function a kprobe of a `generated_ftrace` list ran on.

Tetragon's shapes: a kernel frame is its symbol and the offset into it; a user frame is the mapped file
(`module`), the frame's offset in that file, and the function there (its symbol), the offset a uint64 and
so a string in protojson. Neither carries the raw address (Tetragon shows it only with
`--expose-stack-addresses`), and an address nothing names is left out, as Tetragon leaves it.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import elf

KALLSYMS = Path("/proc/kallsyms")
#: How long a read of kallsyms is used before it is read again (modules come and go).
_KSYMS_TTL = 60.0


@dataclass(frozen=True)
class KernelSymbols:
    """The text symbols of the running kernel and its modules, sorted by address."""

    addresses: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def read(cls, path: Path = KALLSYMS) -> KernelSymbols:
        rows: list[tuple[int, str]] = []
        with path.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3 or parts[1] not in "tTwW":
                    continue
                addr = int(parts[0], 16)
                if addr:  # all zero: addresses hidden from this reader (kptr_restrict)
                    rows.append((addr, parts[2]))
        rows.sort()
        return cls(tuple(a for a, _ in rows), tuple(n for _, n in rows))

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(symbol, offset into it) of kernel address `addr`, or None."""
        k = bisect.bisect_right(self.addresses, addr) - 1
        if k < 0:
            return None
        return self.names[k], addr - self.addresses[k]


_ksyms: list[Any] = [None, 0.0]


def kernel_symbols() -> KernelSymbols:
    now = time.monotonic()
    if _ksyms[0] is None or now - _ksyms[1] > _KSYMS_TTL:
        _ksyms[:] = [KernelSymbols.read(), now]
    return _ksyms[0]  # type: ignore[no-any-return]


def kernel_function(addr: int) -> str | None:
    """The kernel function at address `addr` (the start of a function, or inside one)."""
    found = kernel_symbols().lookup(addr)
    return found[0] if found else None


def kernel_frames(addresses: list[int]) -> list[dict[str, Any]]:
    """Tetragon's kernel_stack_trace entries of a stack (innermost first)."""
    ks = kernel_symbols()
    out: list[dict[str, Any]] = []
    for addr in addresses:
        found = ks.lookup(addr)
        if found is None:
            continue
        name, off = found
        out.append({"offset": str(off), "symbol": name} if off else {"symbol": name})
    return out


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    offset: int
    path: str


def _maps(pid: int) -> list[_Mapping]:
    out: list[_Mapping] = []
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue  # anonymous memory, the stack, [vdso]: no file to name a function
        lo, _, hi = parts[0].partition("-")
        out.append(_Mapping(int(lo, 16), int(hi, 16), int(parts[2], 16), parts[5].removesuffix(" (deleted)")))
    return out


def user_frames(pid: int, addresses: list[int]) -> list[dict[str, Any]]:
    """Tetragon's user_stack_trace entries of a stack of process `pid` (innermost first): read while the
    process lives, since its memory map says which file each address is in."""
    maps = _maps(pid)
    starts = [m.start for m in maps]
    out: list[dict[str, Any]] = []
    for addr in addresses:
        k = bisect.bisect_right(starts, addr) - 1
        if k < 0 or not maps[k].start <= addr < maps[k].end:
            continue
        m = maps[k]
        off = addr - m.start + m.offset
        entry: dict[str, Any] = {"offset": str(off), "module": m.path}
        name = elf.function_at(m.path, off)
        if name:
            entry["symbol"] = name
        out.append(entry)
    return out

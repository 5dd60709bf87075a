"""Just enough of ELF to place a uprobe: where in a file an address of its code is.

A uprobe is set at a file offset, not at an address; ELF files give addresses (the entry
point, symbol values), and the program headers say which part of the file is loaded where.
"""
from __future__ import annotations

import struct
from pathlib import Path

from .errors import BpfError

_PT_LOAD = 1
_PF_X = 1


class NotAnElf(BpfError):
    """The file is not a 64-bit little-endian ELF file, or an address is outside its code."""


def file_offset(path: str | Path, vaddr: int) -> int:
    """The file offset of address `vaddr` in the executable segments of ELF file `path`."""
    data = Path(path).read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        raise NotAnElf(f"{path}: not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for k in range(phnum):
        p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data,
                                                                                  phoff + k * phentsize)
        if p_type == _PT_LOAD and p_flags & _PF_X and p_vaddr <= vaddr < p_vaddr + p_filesz:
            return vaddr - p_vaddr + p_offset
    raise NotAnElf(f"{path}: address {vaddr:#x} is in no executable segment")


def entry_offset(path: str | Path) -> int:
    """The file offset of the entry point of ELF file `path`."""
    with open(path, "rb") as f:
        head = f.read(0x20)
    if head[:6] != b"\x7fELF\x02\x01":
        raise NotAnElf(f"{path}: not a 64-bit little-endian ELF file")
    entry, = struct.unpack_from("<Q", head, 0x18)
    return file_offset(path, entry)

"""Just enough of ELF to place a uprobe: where in a file an address of its code is.

A uprobe is set at a file offset, not at an address; ELF files give addresses (the entry
point, symbol values), and the program headers say which part of the file is loaded where.

Function names come from `.symtab` and `.dynsym` (Debian strips `.symtab`; a shared library's
exported functions are always in `.dynsym`). `.dynsym` names carry no version: `nm -D` prints
`getpid@@GLIBC_2.2.5` by joining the name with its entry in `.gnu.version` and the version names
of `.gnu.version_d`. A bare name (Tetragon's `symbols: [getpid]`) means the default version, the
one a program linked today calls; `name@VERSION` or `name@@VERSION` asks for one version.
"""
from __future__ import annotations

import bisect
import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import BpfError

_PT_LOAD = 1
_PF_X = 1
_SHT_SYMTAB = 2
_SHT_DYNSYM = 11
_SHT_GNU_VERDEF = 0x6FFFFFFD
_SHT_GNU_VERSYM = 0x6FFFFFFF
_STT_FUNC = 2
_STT_GNU_IFUNC = 10
_SHN_UNDEF = 0
_VERSYM_HIDDEN = 0x8000  # a non-default version: `name@V` rather than `name@@V`


class NotAnElf(BpfError):
    """The file is not a 64-bit little-endian ELF file, or an address is outside its code."""


class SymbolNotFound(BpfError):
    """ELF file `path` defines no function `symbol` whose code a uprobe can be put on."""

    def __init__(self, path: str | Path, symbol: str, detail: str) -> None:
        self.path = str(path)
        self.symbol = symbol
        super().__init__(f"{path}: {detail}")


def _check_elf(path: str | Path, head: bytes) -> None:
    if head[:6] != b"\x7fELF\x02\x01":
        raise NotAnElf(f"{path}: not a 64-bit little-endian ELF file")


def _exec_segments(data: bytes) -> tuple[tuple[int, int, int], ...]:
    """(address, size, file offset) of each executable PT_LOAD segment."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    out = []
    for k in range(phnum):
        p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data,
                                                                                  phoff + k * phentsize)
        if p_type == _PT_LOAD and p_flags & _PF_X:
            out.append((p_vaddr, p_filesz, p_offset))
    return tuple(out)


def _to_offset(segments: tuple[tuple[int, int, int], ...], path: str | Path, vaddr: int) -> int:
    for start, size, offset in segments:
        if start <= vaddr < start + size:
            return vaddr - start + offset
    raise NotAnElf(f"{path}: address {vaddr:#x} is in no executable segment")


def file_offset(path: str | Path, vaddr: int) -> int:
    """The file offset of address `vaddr` in the executable segments of ELF file `path`."""
    data = Path(path).read_bytes()
    _check_elf(path, data)
    return _to_offset(_exec_segments(data), path, vaddr)


def entry_offset(path: str | Path) -> int:
    """The file offset of the entry point of ELF file `path`."""
    with open(path, "rb") as f:
        head = f.read(0x20)
    _check_elf(path, head)
    entry, = struct.unpack_from("<Q", head, 0x18)
    return file_offset(path, entry)


def symbol_offset(path: str | Path, name: str) -> int:
    """The file offset of function `name` (`getpid`, or `getpid@@GLIBC_2.2.5`) in ELF executable or
    shared library `path`, for a uprobe on its first instruction."""
    st = os.stat(path)
    image = _parse(str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    base, _, version = name.partition("@")
    version = version.lstrip("@")
    candidates = image.functions.get(base, ())
    found = [s for s in candidates if (s.version == version if version else s.default)]
    if not found and not version and len({s.value for s in candidates}) == 1:
        found = list(candidates)  # no default version, but one definition under every name
    if not found:
        if candidates and not version:
            versions = ", ".join(sorted({f"{base}@{s.version}" for s in candidates}))
            raise SymbolNotFound(path, name, f"function {base} has no default version, only {versions}")
        raise SymbolNotFound(path, name, f"no function {name} in .symtab or .dynsym")
    if found[0].ifunc:
        # Its address is the resolver, run once when a program binds to it; the code it picks is elsewhere.
        raise SymbolNotFound(path, name, f"{name} is a GNU indirect function (its address is a resolver)")
    return _to_offset(image.segments, path, found[0].value)


@dataclass(frozen=True)
class _Symbol:
    version: str  # "" when unversioned
    default: bool  # the default version, or unversioned
    ifunc: bool
    value: int


@dataclass(frozen=True)
class _Image:
    segments: tuple[tuple[int, int, int], ...]
    functions: dict[str, tuple[_Symbol, ...]]  # by name without version


@functools.lru_cache(maxsize=16)
def _parse(path: str, _ino: int, _mtime_ns: int, _size: int) -> _Image:
    """The executable segments and defined function symbols of `path` (cached per file version)."""
    data = Path(path).read_bytes()
    _check_elf(path, data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # (type, offset, size, link, entsize) of every section header
    sections = [struct.unpack_from("<4xI16xQQI4x8xQ", data, shoff + k * shentsize) for k in range(shnum)]

    def string(table: int, at: int) -> str:
        start = sections[table][1] + at
        return data[start:data.index(b"\0", start)].decode(errors="replace")

    versions: dict[int, str] = {}  # version index -> name, from the Elf64_Verdef chain
    for sh_type, off, _sz, link, _ent in sections:
        pos = off
        while sh_type == _SHT_GNU_VERDEF:
            _ver, _flags, ndx, _cnt, _hash, aux, nxt = struct.unpack_from("<HHHHIII", data, pos)
            versions[ndx] = string(link, struct.unpack_from("<I", data, pos + aux)[0])
            if not nxt:
                break
            pos += nxt
    functions: dict[str, list[_Symbol]] = {}
    for index, (sh_type, off, size, link, ent) in enumerate(sections):
        if sh_type not in (_SHT_SYMTAB, _SHT_DYNSYM) or not ent:
            continue
        versym = next((s[1] for s in sections if s[0] == _SHT_GNU_VERSYM and s[3] == index), None)
        for k in range(size // ent):
            st_name, st_info, _other, st_shndx, st_value = struct.unpack_from("<IBBHQ", data, off + k * ent)
            kind = st_info & 0xF
            if kind not in (_STT_FUNC, _STT_GNU_IFUNC) or st_shndx == _SHN_UNDEF or not st_value:
                continue
            # a .symtab name may carry its version itself ("name@@V"); .dynsym's are in .gnu.version
            sym_name, _, version = string(link, st_name).partition("@")
            default = not version or version.startswith("@")
            version = version.lstrip("@")
            if versym is not None:
                v, = struct.unpack_from("<H", data, versym + 2 * k)
                version = versions.get(v & 0x7FFF, "") if v & 0x7FFF > 1 else ""  # 0 local, 1 global
                default = not v & _VERSYM_HIDDEN
            functions.setdefault(sym_name, []).append(_Symbol(version, default, kind == _STT_GNU_IFUNC, st_value))
    return _Image(_exec_segments(data), {k: tuple(v) for k, v in functions.items()})


def function_at(path: str | Path, offset: int) -> str | None:
    """The name of the function whose code holds file offset `offset` of ELF file `path` (from `.symtab` or
    `.dynsym`, by the symbol's value and size), or None: what a user stack frame is in."""
    try:
        st = os.stat(path)
        spans = _spans(str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    except (OSError, NotAnElf, struct.error, ValueError):
        return None
    k = bisect.bisect_right(spans, (offset, float("inf"))) - 1
    if k >= 0 and spans[k][0] <= offset < spans[k][1]:
        return spans[k][2]
    return None


@functools.lru_cache(maxsize=32)
def _spans(path: str, _ino: int, _mtime_ns: int, _size: int) -> list[tuple[int, int, str]]:
    """(start, end, name) of every defined function of `path` with a size, as file offsets, sorted."""
    data = Path(path).read_bytes()
    _check_elf(path, data)
    segments = _exec_segments(data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<4xI16xQQI4x8xQ", data, shoff + k * shentsize) for k in range(shnum)]
    out: dict[int, tuple[int, int, str]] = {}
    for sh_type, off, size, link, ent in sections:
        if sh_type not in (_SHT_SYMTAB, _SHT_DYNSYM) or not ent:
            continue
        strtab = sections[link][1]
        for k in range(size // ent):
            st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, off + k * ent)
            if st_info & 0xF not in (_STT_FUNC, _STT_GNU_IFUNC) or st_shndx == _SHN_UNDEF or not st_size:
                continue
            try:
                start = _to_offset(segments, path, st_value)
            except NotAnElf:
                continue
            name = data[strtab + st_name:data.index(b"\0", strtab + st_name)].decode(errors="replace")
            # .symtab and .dynsym often both name a function: keep one (the first, .symtab's when present)
            out.setdefault(start, (start, start + st_size, name.partition("@")[0]))
    return sorted(out.values())


_PT_NOTE = 4
_NT_GNU_BUILD_ID = 3


def build_id(path: str | Path, limit: int = 1 << 16) -> bytes | None:
    """The GNU build ID of an ELF file (its NT_GNU_BUILD_ID note, which the linker puts near the start), or
    None when it has none or is not a 64-bit ELF. Reads the program headers and notes only."""
    try:
        with open(path, "rb") as f:
            head = f.read(limit)
    except OSError:
        return None
    if head[:6] != b"\x7fELF\x02\x01" or len(head) < 0x40:
        return None
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    for k in range(phnum):
        at = phoff + k * phentsize
        if at + 56 > len(head):
            break
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", head, at)
        if p_type != _PT_NOTE:
            continue
        off, end = p_offset, min(p_offset + p_filesz, len(head))
        while off + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", head, off)
            name_at = off + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            if n_type == _NT_GNU_BUILD_ID and head[name_at:name_at + namesz] == b"GNU\0":
                return head[desc_at:desc_at + descsz] if desc_at + descsz <= end else None
            off = desc_at + (descsz + 3) // 4 * 4
    return None

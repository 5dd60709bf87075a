"""USDT probes (SystemTap SDT notes): where a `spec.usdts` probe is in a binary, and how its arguments are read.

A program built with <sys/sdt.h> marks each probe site with a `nop` and describes it in an ELF note of the
non-allocated section `.note.stapsdt` (owner "stapsdt", type 3). The note's descriptor holds three
addresses, the probe's pc, the link-time address of `.stapsdt.base` and the probe's semaphore (0: none),
then three NUL-terminated strings: the provider, the probe name and the argument specs. Tools that move a
binary's addresses after linking (prelink) move `.stapsdt.base` too, so the pc and semaphore are adjusted by
how far the section moved from the address the note recorded.

Each argument spec is `[-]SIZE@OPERAND` in the assembler's syntax (x86-64 AT&T): SIZE bytes (negative:
signed), the operand a register (`%edi`), a constant (`$5`), or memory at a base register plus a
displacement, maybe with an index register times a scale (`-8(%rbp)`, `8(%rax,%rdx,4)`).

A probe with a semaphore runs its argument set-up only while the semaphore is non-zero; the kernel counts it
up in every process that maps the file while a uprobe with that `ref_ctr_offset` (the semaphore's file
offset) is attached, and down when it goes.

The uprobe is placed at the pc's file offset (bpf.uprobes, bpf.syscall.perf_event_open_uprobe). Argument
specs depend on how the binary was compiled, not on the policy: they are attach data, written into the
policy's `pl_usdt` map per probe site (keyed by the link's BPF cookie), so the program is the same whatever
build of the binary a node has.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from . import elf
from .errors import BpfError
from .policy import UsdtTarget
from .uprobes import TargetUnresolvable, reading

_SHT_NOTE = 7
_PT_LOAD = 1
_NT_STAPSDT = 3

#: The x86-64 struct pt_regs offset of each general register, by every name its low parts have
#: (`%rdi`, `%edi`, `%di`, `%dil`): reading 8 bytes there and keeping the spec's size gives the part.
_PT_REGS = {"r15": 0, "r14": 8, "r13": 16, "r12": 24, "rbp": 32, "rbx": 40, "r11": 48, "r10": 56, "r9": 64,
            "r8": 72, "rax": 80, "rcx": 88, "rdx": 96, "rsi": 104, "rdi": 112, "rip": 128, "rsp": 152}


def _register_names() -> dict[str, int]:
    out: dict[str, int] = {}
    for full, off in _PT_REGS.items():
        out[full] = off
        if full[1:].isdigit():  # r8..r15: r8d, r8w, r8b
            out.update({full + suffix: off for suffix in ("d", "w", "b")})
        elif full != "rip":
            core = full[1:]  # "ax", "di", "bp"
            out.update({"e" + core: off, core: off, (core[0] + "l" if core.endswith("x") else core + "l"): off})
    return out


_REG_NAMES = _register_names()

#: What a spec's operand is: a constant, a register's value, or memory at an address made from registers.
CONST, REG, DEREF = 1, 2, 3

_SPEC = re.compile(r"^(?:(?P<size>-?\d+)@)?(?P<op>.+)$")
_MEM = re.compile(r"^(?P<disp>[-+]?(?:0x[0-9a-fA-F]+|\d+))?\((?P<base>%\w+)(?:,(?P<idx>%\w+)(?:,(?P<scale>\d+))?)?\)$")


class BadArgSpec(BpfError):
    """An argument spec of a note is not one this engine reads (or not well formed)."""


class UsdtUnresolvable(TargetUnresolvable):
    """A USDT probe's file, or the probe in it, is not on this node."""

    hook = "usdt"


@dataclass(frozen=True)
class UsdtArg:
    """How one argument of a probe site is read: `kind` CONST (`value`), REG (the register at `reg_off` of
    pt_regs) or DEREF (`size` bytes at register + `value` [+ index register << `shift`]); the result is
    `size` bytes wide, sign-extended when `signed`."""

    spec: str
    kind: int
    size: int
    signed: bool
    value: int = 0
    reg_off: int = 0
    index_off: int = -1
    shift: int = 0


@dataclass(frozen=True)
class Note:
    provider: str
    name: str
    #: The probe's address and its semaphore's (0: none), adjusted by where `.stapsdt.base` is.
    pc: int
    semaphore: int
    args: tuple[UsdtArg, ...]
    #: The argument specs as the note gives them, or why one cannot be read (`args` is then empty).
    spec: str
    bad: str = ""


@dataclass(frozen=True)
class Probe:
    """One probe site as the kernel attaches to it."""

    file: str
    offset: int
    #: File offset of the probe's semaphore, the uprobe's ref_ctr_offset (0: no semaphore).
    ref_ctr_offset: int
    args: tuple[UsdtArg, ...]


def _register(name: str, spec: str) -> int:
    reg = name.removeprefix("%")
    if reg not in _REG_NAMES or reg == "rip":
        what = "%rip-relative operands (a global's address)" if reg == "rip" else f"register %{reg}"
        raise BadArgSpec(f"argument {spec!r}: {what} is outside what the engine reads")
    return _REG_NAMES[reg]


def parse_arg(spec: str) -> UsdtArg:
    """One x86-64 argument spec: `-4@%edi`, `8@-8(%rbp)`, `8@%rax`, `4@$5`, `8@16(%rax,%rdx,8)`."""
    m = _SPEC.match(spec)
    if not m:
        raise BadArgSpec(f"argument spec {spec!r} is not SIZE@OPERAND")
    raw_size = int(m["size"]) if m["size"] is not None else 8  # the oldest notes give no size: a long
    size, signed = abs(raw_size), raw_size < 0
    if size not in (1, 2, 4, 8):
        raise BadArgSpec(f"argument {spec!r}: size {size} (only 1, 2, 4 or 8 bytes)")
    op = m["op"]
    if op.startswith("$"):
        try:
            v = int(op[1:], 0)
        except ValueError:
            raise BadArgSpec(f"argument {spec!r}: constant {op[1:]!r} is not an integer (a symbol's "
                             "address is outside what the engine reads)") from None
        return UsdtArg(spec, CONST, size, signed, _narrow(v, size, signed))
    if op.startswith("%"):
        return UsdtArg(spec, REG, size, signed, reg_off=_register(op, spec))
    if op.endswith("(%rip)"):
        raise BadArgSpec(f"argument {spec!r}: %rip-relative operands (a global's address) are outside what the "
                         "engine reads")
    mm = _MEM.match(op)
    if not mm:
        raise BadArgSpec(f"argument {spec!r}: operand {op!r} is outside what the engine reads (a register, a "
                         "constant, or memory at a register plus an integer displacement)")
    scale = int(mm["scale"] or 1)
    if scale not in (1, 2, 4, 8):
        raise BadArgSpec(f"argument {spec!r}: scale {scale}")
    return UsdtArg(spec, DEREF, size, signed, int(mm["disp"] or "0", 0), _register(mm["base"], spec),
                   _register(mm["idx"], spec) if mm["idx"] else -1, scale.bit_length() - 1)


def _narrow(v: int, size: int, signed: bool) -> int:
    """`v` as `size` bytes, then sign- or zero-extended to 64 bits (as a two's complement u64)."""
    bits = 8 * size
    v &= (1 << bits) - 1
    if signed and v >> (bits - 1):
        v -= 1 << bits
    return v & (1 << 64) - 1


def parse_args(text: str) -> tuple[UsdtArg, ...]:
    return tuple(parse_arg(s) for s in text.split())


def _sections(data: bytes) -> dict[str, tuple[int, int, int, int]]:
    """(type, addr, offset, size) of each section, by name."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", data, shoff + k * shentsize) for k in range(shnum)]
    if not heads or shstrndx >= len(heads):
        return {}
    strtab = heads[shstrndx][4]
    out = {}
    for name_at, sh_type, _flags, addr, off, size in heads:
        start = strtab + name_at
        out[data[start:data.index(b"\0", start)].decode(errors="replace")] = (sh_type, addr, off, size)
    return out


def notes(path: str | Path) -> tuple[Note, ...]:
    """Every SDT note of ELF file `path` (raises elf.NotAnElf, OSError)."""
    return _notes(path, Path(path).read_bytes())


def _notes(path: str | Path, data: bytes) -> tuple[Note, ...]:
    if data[:6] != b"\x7fELF\x02\x01":
        raise elf.NotAnElf(f"{path}: not a 64-bit little-endian ELF file")
    sections = _sections(data)
    sec = sections.get(".note.stapsdt")
    if sec is None or sec[0] != _SHT_NOTE:
        return ()
    base_sec = sections.get(".stapsdt.base")
    _t, _a, off, size = sec
    end = off + size
    out = []
    while off + 12 <= end:
        namesz, descsz, n_type = struct.unpack_from("<III", data, off)
        name_at = off + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        off = desc_at + (descsz + 3) // 4 * 4
        if n_type != _NT_STAPSDT or data[name_at:name_at + namesz] != b"stapsdt\0" or descsz < 24:
            continue
        pc, base, sema = struct.unpack_from("<QQQ", data, desc_at)
        if base_sec is not None and base:
            pc += base_sec[1] - base
            if sema:
                sema += base_sec[1] - base
        provider, name, spec = [*data[desc_at + 24:desc_at + descsz].split(b"\0"), b"", b"", b""][:3]
        spec_s = spec.decode(errors="replace")
        try:
            args, bad = parse_args(spec_s), ""
        except BadArgSpec as e:
            args, bad = (), str(e)
        out.append(Note(provider.decode(errors="replace"), name.decode(errors="replace"), pc, sema, args,
                        spec_s, bad))
    return tuple(out)


def _data_offset(data: bytes, vaddr: int) -> int | None:
    """The file offset of address `vaddr` in any PT_LOAD segment's file contents."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for k in range(phnum):
        p_type, _fl, p_offset, p_vaddr, _pa, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + k * phentsize)
        if p_type == _PT_LOAD and p_vaddr <= vaddr < p_vaddr + p_filesz:
            return vaddr - p_vaddr + p_offset
    return None


def resolve(target: UsdtTarget) -> tuple[Probe, ...]:
    """Every site of probe `target.provider`:`target.name` in `target.path` on this node (a probe may be
    in several places, each its own uprobe, as in Tetragon); raises UsdtUnresolvable with the reason."""
    with reading(target, UsdtUnresolvable, elf.NotAnElf, struct.error, ValueError) as (real, mapped):
        if not os.path.isfile(real):
            if not os.path.exists(real):
                raise FileNotFoundError(real)
            raise UsdtUnresolvable(target, f"{real}{mapped} is not a regular file")
        data = Path(real).read_bytes()
        found = _notes(real, data)
        segments = elf._exec_segments(data)
        probes = []
        matching = [n for n in found if n.provider == target.provider and n.name == target.name]
        if not matching:
            have = sorted({f"{n.provider}:{n.name}" for n in found})
            listed = f" (it has {', '.join(have[:12])}{' ...' if len(have) > 12 else ''})" if have else \
                " (it has no .note.stapsdt notes)"
            raise UsdtUnresolvable(target, f"no USDT probe {target.provider}:{target.name} in {real}{mapped}"
                                           f"{listed}")
        for n in matching:
            if n.bad:
                raise UsdtUnresolvable(target, n.bad)
            offset = elf._to_offset(segments, real, n.pc)
            ref = 0
            if n.semaphore:
                at = _data_offset(data, n.semaphore)
                if at is None:
                    raise UsdtUnresolvable(target, f"the semaphore at {n.semaphore:#x} is in no loaded part of "
                                                   f"{real}")
                ref = at
            probes.append(Probe(real, offset, ref, n.args))
    return tuple(probes)

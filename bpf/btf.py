"""Member offsets of kernel structs, read from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).

bcc compiles against headers that need not match the running kernel, so a program that
must read a kernel struct (the engine reads one field: `thread_info.status`, to tell a
32-bit compat syscall) gets the offset from BTF instead, as CO-RE would. Only what that
needs is decoded: the type section's STRUCT/UNION members, skipping every other kind by
its documented size.
"""
from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
_STRUCT, _UNION = 4, 5
#: Bytes that follow `struct btf_type` for each kind, as (fixed, per vlen entry).
_TRAILER = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
            17: (4, 0), 19: (0, 12)}


class BtfError(ValueError):
    """The BTF blob is not one this reader understands."""


@cache
def _structs(path: Path) -> dict[str, dict[str, int]]:
    data = path.read_bytes()
    if len(data) < 24:
        raise BtfError(f"{path}: too short for a BTF header")
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != _MAGIC:
        raise BtfError(f"{path}: not BTF (magic {magic:#x})")
    types = data[hdr_len + type_off:hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off:]

    def name(off: int) -> str:
        end = strings.index(b"\0", off)
        return strings[off:end].decode(errors="replace")

    out: dict[str, dict[str, int]] = {}
    pos = 0
    while pos + 12 <= len(types):
        name_off, info, _size = struct.unpack_from("<III", types, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        pos += 12
        fixed, per = _TRAILER.get(kind, (0, 0))
        if kind in (_STRUCT, _UNION) and name_off:
            members = {}
            for k in range(vlen):
                m_name, _m_type, m_off = struct.unpack_from("<III", types, pos + 12 * k)
                bits = m_off & 0xFFFFFF if kflag else m_off
                if m_name:
                    members[name(m_name)] = bits // 8
            out.setdefault(name(name_off), members)
        pos += fixed + per * vlen
    return out


def member_offset(struct_name: str, member: str, path: Path = VMLINUX) -> int | None:
    """Byte offset of `member` in `struct struct_name`, or None when BTF or the member is missing."""
    try:
        return _structs(path).get(struct_name, {}).get(member)
    except (OSError, BtfError, struct.error, ValueError):
        return None

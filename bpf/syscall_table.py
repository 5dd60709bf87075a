"""The x86 system call numbers by name, for each ABI the engine matches (bpf/x64.py, bpf/ia32.py).

Kernel ABI, never changing, kept as data in syscall_numbers.json: each ABI's own numbers (from the
kernel's `asm/unistd_64.h` and `asm/unistd_32.h`), and once the calls from 424 on, which every
architecture has numbered alike since 5.1.
"""
from __future__ import annotations

import json
from pathlib import Path

_TABLES: dict[str, dict[str, int]] = json.loads(Path(__file__).with_name("syscall_numbers.json").read_text())


def numbers(abi: str) -> dict[str, int]:
    """The numbers of `abi` ("x86_64" or "ia32"), by name, in the kernel's order."""
    return {**_TABLES[abi], **_TABLES["common"]}

"""The x86-64 system call numbers, by name: what `raw_syscalls:sys_enter` reports as `id` for a 64-bit call.

Kernel ABI, fixed for every version; taken from the kernel's `asm/unistd_64.h`, plus the calls
newer than that header (the table is data: bpf/syscall_numbers.json). Used where a
policy names syscalls and the engine matches their numbers (`spec.lists` of type
`syscalls` with `InMap`, `generated_syscalls` on raw_syscalls), and to name a number in an event.
"""
from __future__ import annotations

from . import syscall_table

NUMBERS: dict[str, int] = syscall_table.numbers("x86_64")
NAMES: dict[int, str] = {v: k for k, v in NUMBERS.items()}

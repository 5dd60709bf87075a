"""The 32-bit x86 (ia32) system call numbers, by name: the compat ABI a 64-bit process reaches with `int $0x80`.

Syscall tracepoints (`syscalls:sys_enter_*`) never fire for compat calls (the kernel's
syscall tracing skips them), so a policy on `sys_enter_unshare` would not see unshare
made through `int $0x80`, which any 64-bit process may execute where ia32 emulation is
on (the default). The engine therefore also runs each syscall hook on
`raw_syscalls:sys_enter` for the hook's ia32 number, where the call's arguments arrive in
the same slots (compiled in bpf/compile.py), and, for the socket calls, also
through `socketcall`. The numbers are kernel ABI and never change;
they come from the kernel's `asm/unistd_32.h`, plus the calls numbered alike on every
architecture since 5.1 that are newer than that header (the table is data: bpf/syscall_numbers.json).
"""
from __future__ import annotations

from . import syscall_table

NUMBERS: dict[str, int] = syscall_table.numbers("ia32")

#: Native socket call → (its `socketcall` number, how many u32 arguments that reads): ia32 also
#: reaches every socket call through socketcall(call, args), with the arguments in user memory.
SOCKETCALL: dict[str, tuple[int, int]] = {
    "socket": (1, 3), "bind": (2, 3), "connect": (3, 3), "listen": (4, 2), "accept": (5, 3),
    "getsockname": (6, 3), "getpeername": (7, 3), "socketpair": (8, 4), "sendto": (11, 6), "recvfrom": (12, 6),
    "shutdown": (13, 2), "setsockopt": (14, 5), "getsockopt": (15, 5), "sendmsg": (16, 3), "recvmsg": (17, 3),
    "accept4": (18, 4), "recvmmsg": (19, 5), "sendmmsg": (20, 4),
}

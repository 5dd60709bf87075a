"""A C program with USDT probes, built here with the system compiler and systemtap's <sys/sdt.h>
(Debian's systemtap-sdt-dev, which scripts/kernel-tools.sh installs), for the USDT tests.

`prog args N WORD...`: for each WORD, the probe pl:args(N as an int, -10^12 * N as a long, WORD, N + i read
from the stack), then the line "after WORD". `prog sema [wait]`: prints the pl:sema probe's semaphore and
fires pl:sema(7) when it is set; with `wait`, first prints "ready" and waits for a line on stdin (so a test
can load a policy while the process runs). `prog set N`: the probe pl:set(result, N), `result` an int in
memory, then the line "result R" with what it holds after the probe. `prog twice N`: the probe pl:twice at
two sites, pl:twice(1, N) then pl:twice(2, argv[2]).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = r"""
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* every probe of a file built with _SDT_HAS_SEMAPHORES has one; only pl:sema's guards its probe */
unsigned short pl_sema_semaphore __attribute__((unused, section(".probes")));
unsigned short pl_args_semaphore __attribute__((unused, section(".probes")));
unsigned short pl_set_semaphore __attribute__((unused, section(".probes")));
unsigned short pl_twice_semaphore __attribute__((unused, section(".probes")));

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 1 && strcmp(argv[1], "sema") == 0) {
        if (argc > 2) {
            char line[8];
            printf("ready\n");
            if (!fgets(line, sizeof line, stdin)) return 1;
        }
        printf("semaphore %u\n", (unsigned)pl_sema_semaphore);
        if (pl_sema_semaphore) DTRACE_PROBE1(pl, sema, 7);
        return 0;
    }
    int n = argc > 2 ? atoi(argv[2]) : 0;
    if (argc > 1 && strcmp(argv[1], "twice") == 0) {
        DTRACE_PROBE2(pl, twice, 1, n);  /* one probe, two sites: two notes, each its own arguments */
        printf("between\n");
        DTRACE_PROBE2(pl, twice, 2, argv[2]);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "set") == 0) {
        volatile int result = 0;  /* in memory: the probe names its address, which Set writes */
        DTRACE_PROBE2(pl, set, result, n);
        printf("result %d\n", result);
        return 0;
    }
    long big = -1000000000000L * n;
    for (int i = 3; i < argc; i++) {
        volatile int onstack = n + i;  /* in memory: its operand is an offset from %rsp */
        DTRACE_PROBE4(pl, args, n, big, argv[i], onstack);
        printf("after %s\n", argv[i]);
    }
    return 0;
}
"""


def build(directory: Path) -> Path:
    """The program, compiled in `directory` (fails the test where the compiler or <sys/sdt.h> is missing)."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("the USDT tests build a C program: install a C compiler (cc)")
    (directory / "prog.c").write_text(SOURCE)
    done = subprocess.run([cc, "-O1", "-o", str(directory / "prog"), str(directory / "prog.c")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"building the USDT test program failed (is systemtap-sdt-dev installed? "
                    f"scripts/kernel-tools.sh installs it):\n{done.stderr}")
    return directory / "prog"

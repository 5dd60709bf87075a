"""bpf.elf.symbol_offset on real binaries of this machine: the offsets agree with readelf where it is
installed, and uprobes put at them (bpf.syscall.perf_event_open_uprobe) fire when the function runs."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bpf import elf
from bpf import probe as probe_mod
from bpf.elf import NotAnElf, SymbolNotFound
from bpf.errors import BpfError

# Debian's python3.11 is not position-independent: its code is loaded 0x400000 above its file offset,
# so only a real conversion through the program headers gives the right answer there.
NON_PIE = Path("/usr/bin/python3.11")


def _libc() -> str:
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name == "libc.so.6":
            return fields[5]
    pytest.fail("this process maps no libc.so.6")


def _readelf(*args: str) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True, check=True).stdout


def _readelf_functions(path: str | Path) -> dict[str, int]:
    """name@version -> file offset of every defined FUNC symbol readelf lists, converted through the
    executable LOAD segments readelf lists."""
    segments = [(int(m[1], 16), int(m[0], 16), int(m[2], 16)) for m in re.findall(
        r"LOAD\s+(0x[0-9a-f]+) (0x[0-9a-f]+) 0x[0-9a-f]+ (0x[0-9a-f]+) 0x[0-9a-f]+ R E", _readelf("-l", str(path)))]
    assert segments
    out = {}
    for line in _readelf("--dyn-syms", str(path)).splitlines():
        cols = line.split()
        if len(cols) == 8 and cols[3] == "FUNC" and cols[6] != "UND":
            vaddr = int(cols[1], 16)
            out[cols[7]] = next(vaddr - start + off for start, off, size in segments if start <= vaddr < start + size)
    return out


def test_getpid_in_libc_is_where_readelf_says() -> None:
    libc = _libc()
    offset = elf.symbol_offset(libc, "getpid")
    assert offset == elf.symbol_offset(libc, "getpid@@GLIBC_2.2.5") == elf.symbol_offset(libc, "getpid@GLIBC_2.2.5")
    assert _readelf_functions(libc)["getpid@@GLIBC_2.2.5"] == offset


@pytest.mark.parametrize("path", [pytest.param("libc", id="libc"), pytest.param(NON_PIE, id="non-pie-python")])
def test_every_function_readelf_lists_resolves_to_the_same_offset(path: str | Path) -> None:
    target = _libc() if path == "libc" else path
    if not Path(target).exists():
        pytest.skip(f"{target} is not installed")
    functions = _readelf_functions(target)
    assert len(functions) > 1000
    for versioned, offset in functions.items():
        assert elf.symbol_offset(target, versioned) == offset, versioned
        name, _, version = versioned.partition("@")
        if not version or version.startswith("@"):  # the default version answers to the bare name
            assert elf.symbol_offset(target, name) == offset, name


def test_a_uprobe_at_libc_getpid_fires_for_each_call(require_kernel: None) -> None:
    libc = _libc()
    offset = elf.symbol_offset(libc, "getpid")

    def three_calls() -> None:
        for _ in range(3):
            os.getpid()  # glibc does not cache getpid: each call enters libc

    with probe_mod._child(three_calls) as (pid, run), \
            probe_mod._uprobe_counter(libc, offset, tgid=pid) as hits:
        assert hits() == 0
        status = run()
        assert os.WIFEXITED(status)
        assert hits() == 3


def test_a_uprobe_in_a_non_pie_executable_fires(require_kernel: None) -> None:
    if not NON_PIE.exists():
        pytest.skip(f"{NON_PIE} is not installed")
    offset = elf.symbol_offset(NON_PIE, "Py_BytesMain")  # main() of python3.11 calls it once
    with probe_mod._child(lambda: os.execv(NON_PIE, [str(NON_PIE), "-S", "-c", "pass"])) as (pid, run), \
            probe_mod._uprobe_counter(str(NON_PIE), offset, tgid=pid) as hits:
        status = run()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert hits() == 1


_SOURCE = r"""
#include <stdlib.h>
static __attribute__((noinline)) int twice(int v) { __asm__ volatile(""); return 2 * v; }
int main(int argc, char **argv) { int s = 0; for (int i = 0; i < atoi(argv[1]); i++) s += twice(i); return s & 1; }
"""


def test_a_static_function_is_found_in_symtab_and_its_uprobe_fires(require_kernel: None, tmp_path: Path) -> None:
    if shutil.which("cc") is None or shutil.which("strip") is None:
        pytest.skip("no C compiler or no strip")
    (tmp_path / "t.c").write_text(_SOURCE)
    binary = tmp_path / "t"
    subprocess.run(["cc", "-O1", "-o", str(binary), str(tmp_path / "t.c")], check=True)
    offset = elf.symbol_offset(binary, "twice")  # a local symbol: only in .symtab
    with probe_mod._child(lambda: os.execv(binary, [str(binary), "5"])) as (pid, run), \
            probe_mod._uprobe_counter(str(binary), offset, tgid=pid) as hits:
        run()
        assert hits() == 5
    subprocess.run(["strip", str(binary)], check=True)
    with pytest.raises(SymbolNotFound, match=re.escape("no function twice in .symtab or .dynsym")):
        elf.symbol_offset(binary, "twice")


def test_a_missing_symbol_names_the_file_and_the_symbol() -> None:
    libc = _libc()
    with pytest.raises(SymbolNotFound) as caught:
        elf.symbol_offset(libc, "no_such_function")
    assert caught.value.path == libc
    assert caught.value.symbol == "no_such_function"
    assert str(caught.value) == f"{libc}: no function no_such_function in .symtab or .dynsym"
    assert isinstance(caught.value, BpfError)
    with pytest.raises(SymbolNotFound, match=re.escape("no function getpid@GLIBC_9.9")):
        elf.symbol_offset(libc, "getpid@GLIBC_9.9")
    # /usr/bin/true calls exit, but from libc: its .dynsym only imports it
    with pytest.raises(SymbolNotFound):
        elf.symbol_offset(os.path.realpath("/usr/bin/true"), "exit")


def test_an_indirect_function_is_refused_not_misplaced() -> None:
    # memcpy's default version is an IFUNC: its address is the resolver, which runs once at binding
    libc = _libc()
    with pytest.raises(SymbolNotFound, match="memcpy is a GNU indirect function"):
        elf.symbol_offset(libc, "memcpy")
    assert elf.symbol_offset(libc, "memcpy@GLIBC_2.2.5") > 0  # the old version is plain code


def test_not_an_elf(tmp_path: Path) -> None:
    text = tmp_path / "script.sh"
    text.write_text("#!/bin/sh\n")
    with pytest.raises(NotAnElf, match="not a 64-bit little-endian ELF file"):
        elf.symbol_offset(text, "main")


def test_a_rewritten_file_is_parsed_again(tmp_path: Path) -> None:
    libc = _libc()
    lib = tmp_path / "lib.so"
    shutil.copyfile(libc, lib)
    assert elf.symbol_offset(lib, "getpid") == elf.symbol_offset(libc, "getpid")
    shutil.copyfile(os.path.realpath("/usr/bin/true"), lib)  # same path, other contents
    with pytest.raises(SymbolNotFound):
        elf.symbol_offset(lib, "getpid")

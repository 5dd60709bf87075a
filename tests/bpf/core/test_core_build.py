"""Building CO-RE objects: vmlinux.h and objects cached by content, typed errors with the tools' words."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bpf.core import build, procfs, records, sensor
from bpf.core.build import BuiltObject
from bpf.core.errors import BtfUnavailable, CompileFailed, ToolMissing, VmlinuxFailed

pytestmark = pytest.mark.kernel  # reads the running kernel's BTF, needs clang and bpftool


def test_vmlinux_header_is_dumped_once_per_btf(require_core: None, tmp_path: Path) -> None:
    header = build.vmlinux_header(tmp_path)
    text = header.read_text()
    assert "struct task_struct {" in text and "struct linux_binprm {" in text
    before = header.stat().st_mtime_ns
    assert build.vmlinux_header(tmp_path) == header
    assert header.stat().st_mtime_ns == before  # not dumped again


def test_object_is_compiled_once_and_rebuilt_when_its_inputs_change(require_core: None, tmp_path: Path) -> None:
    first = sensor.build(tmp_path)
    assert not first.cached and first.read()[:4] == b"\x7fELF"
    again = sensor.build(tmp_path)
    assert (again.cached, again.path, again.digest) == (True, first.path, first.digest)
    other = build.compile_object(sensor.SOURCE, tmp_path, extra_flags=("-DPALISADE_TEST=1",))
    assert not other.cached and other.digest != first.digest
    with_dwarf = build.compile_object(sensor.SOURCE, tmp_path, strip=False)
    assert with_dwarf.digest != first.digest
    assert b".debug_info" in with_dwarf.read() and b".debug_info" not in first.read()
    assert b".BTF.ext" in first.read()  # CO-RE relocations survive stripping


def test_the_precompiled_header_changes_nothing_but_time(require_core: None, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with_pch = build.compile_object(sensor.SOURCE, tmp_path / "a")
    assert list((tmp_path / "a" / "vmlinux").glob("*/vmlinux.*.pch"))
    monkeypatch.setattr(build, "_pch", lambda *_: None)
    without = build.compile_object(sensor.SOURCE, tmp_path / "b")
    assert not list((tmp_path / "b" / "vmlinux").glob("*/vmlinux.*.pch"))
    assert with_pch.read() == without.read() and with_pch.digest == without.digest


def test_compiler_errors_are_typed_and_name_the_source(require_core: None, tmp_path: Path) -> None:
    src = tmp_path / "broken.bpf.c"
    src.write_text('#include "vmlinux.h"\nint f(void) { return undeclared_thing; }\n')
    with pytest.raises(CompileFailed) as e:
        build.compile_object(src, tmp_path)
    assert e.value.source == "broken.bpf.c"
    assert "broken.bpf.c:2" in e.value.message and "undeclared_thing" in e.value.message
    assert not list(tmp_path.glob("objects/*.o"))  # nothing cached for a failed build


def test_missing_btf_and_unreadable_btf_are_told_apart(require_core: None, tmp_path: Path) -> None:
    with pytest.raises(BtfUnavailable):
        build.vmlinux_header(tmp_path, btf=tmp_path / "absent")
    junk = tmp_path / "junk.btf"
    junk.write_bytes(b"\x9f\xeb\x01\x00garbage")
    with pytest.raises(VmlinuxFailed) as e:
        build.vmlinux_header(tmp_path, btf=junk)
    assert e.value.message


def test_a_missing_compiler_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing) as e:
        build.compile_object(b"int x;", tmp_path)
    assert e.value.tool == "clang"


def test_object_digest_covers_every_input() -> None:
    base = build.object_digest(b"src", ("-O2",), "clang 14", "btf-a")
    variants = [build.object_digest(b"src2", ("-O2",), "clang 14", "btf-a"),
                build.object_digest(b"src", ("-O1",), "clang 14", "btf-a"),
                build.object_digest(b"src", ("-O2",), "clang 15", "btf-a"),
                build.object_digest(b"src", ("-O2",), "clang 14", "btf-b"),
                # length-prefixed parts: moving bytes between parts changes the digest
                build.object_digest(b"sr", ("c-O2",), "clang 14", "btf-a")]
    assert len({base, *variants}) == 6


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PALISADE_CORE_CACHE", "/var/cache/x")
    assert build.default_cache_dir() == Path("/var/cache/x")
    monkeypatch.delenv("PALISADE_CORE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/c")
    assert build.default_cache_dir() == Path("/c/palisade/bpf-core")


def test_the_record_layouts_match_the_objects_btf(sensor_object: BuiltObject) -> None:
    dump = subprocess.run(["bpftool", "btf", "dump", "file", str(sensor_object.path), "format", "raw"],
                          capture_output=True, text=True, check=True).stdout
    assert re.findall(r"STRUCT 'event_hdr' size=(\d+)", dump) == [str(records.HEADER_SIZE)]
    assert re.findall(r"STRUCT 'proc_entry' size=(\d+)", dump) == [str(procfs.ENTRY.size)]

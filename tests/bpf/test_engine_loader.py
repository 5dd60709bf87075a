"""`spec.loader: true` (Tetragon's tracingpolicy/loader.yaml): a process_loader event per executable file a
process maps — its program and ELF interpreter at exec, each library or file it maps executable later —
with the file's path and GNU build ID, on any kernel with syscall tracepoints (bpf/loader.py)."""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from engine_support import Workload, policy, wait_events

from bpf.engine import Engine

pytestmark = pytest.mark.kernel

PY = sys.executable
TRUE = "/usr/bin/true"


def _loads(engine: Engine, until: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    events = wait_events(engine, lambda ev: "process_loader" in ev and until(ev["process_loader"]), timeout)
    return [ev["process_loader"] for ev in events if "process_loader" in ev]


def _file_build_id(path: str) -> str:
    """The build ID as file(1) reads it, hex."""
    out = subprocess.run(["file", "-L", path], capture_output=True, text=True, check=True).stdout
    m = re.search(r"BuildID\[sha1\]=([0-9a-f]+)", out)
    assert m, out
    return m.group(1)


def _interpreter(path: str) -> str:
    out = subprocess.run(["file", "-L", path], capture_output=True, text=True, check=True).stdout
    m = re.search(r"interpreter (\S+?),", out)
    assert m, out
    return os.path.realpath(m.group(1))


def test_an_exec_reports_the_program_its_interpreter_and_its_libraries(engine: Engine, workload: Workload) -> None:
    res = engine.load(policy("loader", {"loader": True}), "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run([TRUE]).returncode == 0
    libc = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
    events = _loads(engine, lambda e: e["path"] == libc)
    mine = [e for e in events if e["process"]["binary"] == TRUE]
    paths = [e["path"] for e in mine]
    # the kernel maps the program and ld.so during exec; ld.so maps libc with mmap(PROT_EXEC)
    assert paths[:2] == [TRUE, _interpreter(TRUE)], paths
    assert libc in paths
    by_path = {e["path"]: e for e in mine}
    for p in (TRUE, libc):
        assert base64.b64decode(by_path[p]["buildid"]).hex() == _file_build_id(p)
    assert all(e["process"]["pid"] == mine[0]["process"]["pid"] for e in mine)


def test_a_file_mapped_executable_is_reported_and_one_mapped_readable_is_not(
        engine: Engine, workload: Workload, tmp_path: Path) -> None:
    blob, data = tmp_path / "blob.bin", tmp_path / "data.bin"
    blob.write_bytes(b"\xc3" * 4096)  # ret, ret, ...
    data.write_bytes(b"\0" * 4096)
    res = engine.load(policy("loader", {"loader": True}), "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    code = f"""
import mmap, os
r = os.open({str(data)!r}, os.O_RDONLY)
mmap.mmap(r, 4096, prot=mmap.PROT_READ)
w = os.open({str(blob)!r}, os.O_WRONLY)
try: mmap.mmap(w, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)  # EACCES: not mapped, not reported
except OSError: pass
x = os.open({str(blob)!r}, os.O_RDONLY)
mmap.mmap(x, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)
print('mapped')
"""
    assert workload.run([PY, "-c", code]).stdout == b"mapped\n"
    events = _loads(engine, lambda e: e["path"] == str(blob))
    assert [e["path"] for e in events].count(str(blob)) == 1
    assert str(data) not in [e["path"] for e in events]
    (e,) = [e for e in events if e["path"] == str(blob)]
    assert "buildid" not in e  # not an ELF file
    # the same outside the policy's workload: nothing
    subprocess.run([PY, "-c", code], check=True, capture_output=True)
    assert not _loads(engine, lambda e: e["path"] == str(blob), timeout=1.0)


def test_observe_only_and_gone_when_unloaded(engine: Engine, workload: Workload) -> None:
    res = engine.load(policy("loader", {"loader": True}), "enforced", cgroups=[workload.path])
    assert res.loaded, res.reasons
    assert workload.run([TRUE]).returncode == 0  # nothing to enforce: a loader only reports
    assert _loads(engine, lambda e: e["path"] == TRUE)
    engine.unload("loader")
    assert workload.run([TRUE]).returncode == 0
    assert not _loads(engine, lambda e: True, timeout=1.0)

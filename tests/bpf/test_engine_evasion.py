"""Binaries are judged by the file that runs, not by the path the caller typed.

Each test is an escape that worked when the engine compared the path given to execve:
block-execve-tmp let a file in /tmp run when it was reached as `//tmp/x`, `/./tmp/x`,
`/usr/../tmp/x`, `./x`, `/proc/self/fd/N`, execveat with a directory fd or an empty path,
`ld.so /tmp/x`, a `#!/tmp/x` script or a symlink; an exec allowlist let a symlink or a
`#!/usr/bin/id` script at an allowlisted path run something else. Now each one dies with
SIGKILL before the program runs (it would print "ran"), and what is allowed still runs.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_support import Workload, exec_allowlist, wait_events

from bpf import templates
from bpf.engine import Engine
from bpf.policy import parse

pytestmark = pytest.mark.kernel

LDSO = "/lib64/ld-linux-x86-64.so.2"
_SYS_EXECVEAT = 322
_AT_EMPTY_PATH = 0x1000


@pytest.fixture
def tmp_bin() -> Iterator[Path]:
    """A copy of echo inside /tmp (where block-execve-tmp forbids executing)."""
    d = Path(tempfile.mkdtemp(prefix="pl-ev-", dir="/tmp"))
    x = d / "x"
    shutil.copy("/usr/bin/echo", x)
    x.chmod(0o755)
    yield x
    shutil.rmtree(d)


@pytest.fixture
def elsewhere() -> Iterator[Path]:
    """A directory outside the blocked ones, for scripts and symlinks (PALISADE_EXEC_SCRATCH: where the
    root is read-only, as in the kernel matrix's guest)."""
    d = Path(os.environ.get("PALISADE_EXEC_SCRATCH", "/var/lib")) / f"palisade-ev-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    shutil.rmtree(d)


@pytest.fixture
def block_tmp(engine: Engine, workload: Workload) -> Engine:
    doc = templates.render("block-execve-tmp", "no-tmp-exec")
    result = engine.load(parse(doc), "enforced", cgroups=[workload.path])
    assert result.loaded, result.reasons
    return engine


def _killed(workload: Workload, argv: list[str], **kw: object) -> None:
    done = workload.run(argv, **kw)  # type: ignore[arg-type]
    assert done.returncode == -9, (argv, done)
    assert b"ran" not in done.stdout


def _python(workload: Workload, code: str) -> None:
    _killed(workload, [sys.executable, "-c", code])


@pytest.mark.parametrize("spelling", ["//tmp/{rel}", "/./tmp/{rel}", "/usr/../tmp/{rel}", "/tmp//{rel}"])
def test_block_tmp_catches_any_spelling_of_the_path(block_tmp: Engine, workload: Workload, tmp_bin: Path,
                                                    spelling: str) -> None:
    _killed(workload, [spelling.format(rel=tmp_bin.relative_to("/tmp")), "ran"])


def test_block_tmp_catches_a_relative_path_from_inside_tmp(block_tmp: Engine, workload: Workload,
                                                           tmp_bin: Path) -> None:
    _killed(workload, ["./x", "ran"], cwd=tmp_bin.parent)


def test_block_tmp_catches_proc_self_fd(block_tmp: Engine, workload: Workload, tmp_bin: Path) -> None:
    _python(workload, f"import os; fd = os.open({str(tmp_bin)!r}, os.O_RDONLY); "
                      "os.execv(f'/proc/self/fd/{fd}', ['x', 'ran'])")


def test_block_tmp_catches_execveat_with_a_directory_fd(block_tmp: Engine, workload: Workload,
                                                        tmp_bin: Path) -> None:
    _python(workload, "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
                      f"d = os.open({str(tmp_bin.parent)!r}, os.O_RDONLY | os.O_DIRECTORY); "
                      "argv = (ctypes.c_char_p * 3)(b'x', b'ran', None); env = (ctypes.c_char_p * 1)(None); "
                      f"libc.syscall({_SYS_EXECVEAT}, d, b'x', argv, env, 0)")


def test_block_tmp_catches_execveat_of_an_open_file(block_tmp: Engine, workload: Workload, tmp_bin: Path) -> None:
    # os.execve(fd, ...) is fexecve: execveat(fd, "", AT_EMPTY_PATH)
    _python(workload, f"import os; fd = os.open({str(tmp_bin)!r}, os.O_RDONLY); os.execve(fd, ['x', 'ran'], {{}})")
    _python(workload, "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
                      f"fd = os.open({str(tmp_bin)!r}, os.O_RDONLY); "
                      "argv = (ctypes.c_char_p * 3)(b'x', b'ran', None); env = (ctypes.c_char_p * 1)(None); "
                      f"libc.syscall({_SYS_EXECVEAT}, fd, b'', argv, env, {_AT_EMPTY_PATH})")


def test_block_tmp_catches_a_program_started_by_its_loader(block_tmp: Engine, workload: Workload,
                                                           tmp_bin: Path) -> None:
    assert Path(LDSO).exists()
    _killed(workload, [LDSO, str(tmp_bin), "ran"])
    # the event names the program the loader mapped
    real = os.path.realpath(tmp_bin)
    events = wait_events(block_tmp, lambda ev: ev.get("process_tracepoint", {}).get("process", {})
                         .get("binary") == real)
    assert any(ev["palisade"]["acted"] for ev in events
               if ev.get("process_tracepoint", {}).get("process", {}).get("binary") == real)
    # the loader itself still runs programs from elsewhere
    ok = workload.run([LDSO, "/usr/bin/echo", "ran"])
    assert (ok.returncode, ok.stdout) == (0, b"ran\n")


def test_block_tmp_catches_a_script_whose_interpreter_is_in_tmp(block_tmp: Engine, workload: Workload,
                                                                tmp_bin: Path, elsewhere: Path) -> None:
    script = elsewhere / "s"
    script.write_text(f"#!{tmp_bin}\n")
    script.chmod(0o755)
    _killed(workload, [str(script), "ran"])


def test_block_tmp_catches_a_symlink_into_tmp(block_tmp: Engine, workload: Workload, tmp_bin: Path,
                                              elsewhere: Path) -> None:
    link = elsewhere / "link"
    link.symlink_to(tmp_bin)
    _killed(workload, [str(link), "ran"])
    ok = workload.run(["/usr/bin/echo", "ran"])
    assert (ok.returncode, ok.stdout) == (0, b"ran\n")


def test_block_tmp_still_catches_a_script_in_tmp_started_by_its_path(block_tmp: Engine, workload: Workload,
                                                                     tmp_bin: Path) -> None:
    script = tmp_bin.parent / "s.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    _killed(workload, [str(script)])


def _allowlist(engine: Engine, workload: Workload, name: str, allowed: list[str]) -> None:
    result = engine.load(exec_allowlist(name, allowed), "enforced", cgroups=[workload.path])
    assert result.loaded, result.reasons


def test_allowlist_is_not_escaped_by_a_symlink_at_an_allowed_path(engine: Engine, workload: Workload,
                                                                  elsewhere: Path) -> None:
    tool, real_tool = elsewhere / "tool", elsewhere / "real-tool"
    _allowlist(engine, workload, "allow-tools", ["/usr/bin/echo", str(tool), str(real_tool)])
    tool.symlink_to("/usr/bin/id")  # created after the policy, at a path it allows
    _killed(workload, [str(tool)])
    shutil.copy("/usr/bin/echo", real_tool)  # a real file at an allowed path runs
    ok = workload.run([str(real_tool), "ran"])
    assert (ok.returncode, ok.stdout) == (0, b"ran\n")


def test_allowlist_is_not_escaped_by_a_script_at_an_allowed_path(engine: Engine, workload: Workload,
                                                                 elsewhere: Path) -> None:
    tool = elsewhere / "tool"
    _allowlist(engine, workload, "allow-tool", ["/usr/bin/echo", str(tool)])
    tool.write_text("#!/usr/bin/id\n")
    tool.chmod(0o755)
    _killed(workload, [str(tool)])


def test_allowlist_written_with_a_symlinked_path_allows_the_file_it_names(engine: Engine,
                                                                          workload: Workload) -> None:
    assert os.path.realpath("/bin/sh") != "/bin/sh"  # Debian: /bin -> usr/bin, sh -> dash
    _allowlist(engine, workload, "allow-sh", ["/bin/sh", "/bin/echo"])
    ok = workload.run(["/bin/sh", "-c", "/bin/echo ran"])
    assert (ok.returncode, ok.stdout) == (0, b"ran\n")
    _killed(workload, ["/usr/bin/id"])


def test_paths_deeper_than_the_walk_keep_their_beginning(block_tmp: Engine, workload: Workload,
                                                         tmp_bin: Path) -> None:
    # 80 levels, over 300 bytes: more than the in-kernel walk keeps; what it keeps is the top (/tmp/...)
    deep = tmp_bin.parent.joinpath(*(["d"] * 40), *(["directory"] * 40))
    deep.mkdir(parents=True)
    shutil.copy(tmp_bin, deep / "x")
    assert len(str(deep)) > 300
    _killed(workload, ["./x", "ran"], cwd=deep)


def test_paths_longer_than_the_walk_buffer_keep_their_beginning(block_tmp: Engine, workload: Workload,
                                                                tmp_bin: Path) -> None:
    # over 1,300 bytes: more than the buffer the first walk fills, so the kernel walks it a second time
    deep = tmp_bin.parent.joinpath(*(["directory"] * 130))
    deep.mkdir(parents=True)
    shutil.copy(tmp_bin, deep / "x")
    assert len(str(deep)) > 1300
    _killed(workload, ["./x", "ran"], cwd=deep)
    real = os.path.realpath(tmp_bin.parent)
    events = wait_events(block_tmp, lambda ev: ev.get("process_tracepoint", {}).get("process", {})
                         .get("binary", "").startswith(real + "/directory/directory/"))
    binary = next(ev["process_tracepoint"]["process"]["binary"] for ev in events
                  if ev.get("process_tracepoint", {}).get("process", {}).get("binary", "").startswith(real))
    assert len(binary) == 255  # the true first 255 bytes of the path
    assert binary == (real + "/directory" * 130)[:255]


def test_allowlist_compares_paths_longer_than_the_short_key_whole(engine: Engine, workload: Workload,
                                                                  elsewhere: Path) -> None:
    # paths of 64 bytes and more are kept under a full-length key: the first 64 bytes do not decide
    long_dir = elsewhere / ("d" * 90)
    twin_dir = elsewhere / ("d" * 89 + "e")
    for d in (long_dir, twin_dir):
        d.mkdir()
        shutil.copy("/usr/bin/echo", d / "tool")
    tool = long_dir / "tool"
    assert len(str(tool)) >= 64
    _allowlist(engine, workload, "allow-long", ["/usr/bin/echo", str(tool)])
    ok = workload.run([str(tool), "ran"])
    assert (ok.returncode, ok.stdout) == (0, b"ran\n")
    _killed(workload, [str(twin_dir / "tool"), "ran"])


def test_a_loader_mark_is_forgotten_when_the_process_execs_again(engine: Engine, workload: Workload) -> None:
    # busybox is static: its exec marks the process as awaiting the program a loader maps. It then execs
    # echo, whose loader maps libc: that mapping is not the program, and must not be judged as one.
    busybox = os.path.realpath("/usr/bin/busybox")
    _allowlist(engine, workload, "allow-busybox", [busybox, "/usr/bin/echo"])
    ok = workload.run([busybox, "sh", "-c", "exec /usr/bin/echo ran"])
    assert (ok.returncode, ok.stdout) == (0, b"ran\n")
    # and a program the static binary's loader-less process maps itself is still judged
    _killed(workload, [busybox, "sh", "-c", f"exec {LDSO} /usr/bin/id"])



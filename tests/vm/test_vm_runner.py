"""scripts/vm/run.py's own failures, told apart by exit code and message, without booting a VM.

These need neither root nor QEMU: each stops before a guest would boot. The boots are in
test_vm_matrix.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "scripts" / "vm" / "run.py"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_no_command_is_a_usage_error() -> None:
    proc = run("--kernel", "6.1")
    assert proc.returncode == 2
    assert "no command given" in proc.stderr


def test_missing_qemu_is_named_with_its_exit_code(tmp_path: Path) -> None:
    proc = run("--no-install", "--qemu", str(tmp_path / "qemu-system-x86_64"), "--", "true",
               env={"PALISADE_VM_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 120, proc.stderr
    assert "QemuMissing" in proc.stderr and "qemu-system-x86" in proc.stderr
    assert not (tmp_path / "cache").exists()  # stopped before fetching any kernel


def test_a_kernel_that_cannot_be_downloaded_is_told_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # an apt-get that fails as it does with no network; apt-cache (the local lists) stays real
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: Failed to fetch: Temporary failure resolving' >&2\n"
                                  "exit 100\n")
    (fake / "apt-get").chmod(0o755)
    cache = tmp_path / "cache"
    proc = run("--no-install", "--qemu", "/bin/true", "--", "true",
               env={"PALISADE_VM_CACHE": str(cache), "PATH": f"{fake}:{os.environ['PATH']}"})
    assert proc.returncode == 121, proc.stderr
    assert "KernelUnavailable" in proc.stderr
    assert not cache.exists() or not any((cache / "kernels").iterdir())  # no half-fetched kernel


def test_an_unknown_kernel_series_is_refused() -> None:
    proc = run("--no-install", "--qemu", "/bin/true", "--kernel", "six", "--", "true")
    assert proc.returncode == 121
    assert "give a series such as 6.1" in proc.stderr

"""Shared fixtures. Kernel tests use `require_kernel`: skipped on a machine without
root and BPF, but in CI (CI=true) a kernel test that would skip fails instead."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from support.kernel import unavailable

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_REPO = ROOT / "example-repo"
#: ../shared/tetragon-corpus; PALISADE_CORPUS names it where that path is not visible (the kernel matrix's
#: guest, whose /tmp is its own).
CORPUS = Path(os.environ.get("PALISADE_CORPUS") or ROOT.parent / "shared" / "tetragon-corpus")


def _kernel_problem() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root"
    if not Path("/sys/fs/bpf").is_dir() or not os.path.ismount("/sys/fs/bpf"):
        return "bpffs is not mounted at /sys/fs/bpf (run scripts/kernel-tools.sh)"
    if not Path("/sys/kernel/tracing/events/syscalls").is_dir():
        return "tracefs with syscall tracepoints is not mounted at /sys/kernel/tracing"
    from bpf.core.errors import LibbpfMissing
    from bpf.core.libbpf import lib

    try:
        lib()
    except LibbpfMissing as e:
        return f"{e} (run scripts/kernel-tools.sh)"
    if shutil.which("clang") is None:
        return "clang is not installed, so no policy object can be built here (run scripts/kernel-tools.sh)"
    return None


@pytest.fixture(scope="session")
def require_kernel() -> None:
    problem = _kernel_problem()
    if problem is not None:
        unavailable(problem)


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        msg = f"the Tetragon corpus is missing at {CORPUS}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return CORPUS


@pytest.fixture()
def example_copy(tmp_path: Path) -> Path:
    """A writable copy of example-repo/ (not yet a git repository)."""
    dst = tmp_path / "policy-repo"
    shutil.copytree(EXAMPLE_REPO, dst)
    return dst

"""What a kernel test does when the machine cannot run it: skip, but fail in CI (CI=true); what the
CO-RE engine needs beyond `require_kernel`."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest


def unavailable(problem: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"kernel test cannot run in CI: {problem}")
    pytest.skip(problem)


def core_problem() -> str | None:
    """Why the CO-RE engine (bpf.core) cannot build and load here, or None: clang, bpftool, kernel BTF, libbpf."""
    from bpf.core.build import KERNEL_BTF

    for tool in ("clang", "bpftool"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            return f"{tool} is not installed (run scripts/kernel-tools.sh)"
    if not KERNEL_BTF.is_file():
        return f"the kernel has no BTF at {KERNEL_BTF}"
    if not any(Path(d, "libbpf.so.1").exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/lib64")):
        return "libbpf.so.1 is not installed (Debian libbpf1)"
    return None

"""Build the CO-RE objects on the host, keyed for the guest kernel, so the guest compiles nothing.

`bpf.core.build` keys vmlinux.h by the sha256 of the BTF it was dumped from, and an
object by (source, flags, clang, that header's key). Giving it the guest kernel's own BTF
(the .BTF section of its vmlinux, byte for byte the guest's /sys/kernel/btf/vmlinux)
produces exactly the entries the guest would compute, so a guest lookup with
PALISADE_CORE_CACHE pointing here is a hit without any fake key. The host's vmlinux.h
would also give loadable objects (CO-RE relocates them), but under another key, so the
guest would miss and compile again under TCG (30-60 s a program).
"""
from __future__ import annotations

from pathlib import Path

from kernel import Kernel
from vmerrors import SetupFailed


def core_cache_dir(kernel: Kernel, cache: Path) -> Path:
    return cache / "core" / kernel.release


def prebuild(kernel: Kernel, cache: Path) -> Path:
    """The cache directory holding the guest's vmlinux.h and the sensor object built for it."""
    try:
        from bpf.core import build, sensor
        from bpf.core.errors import BuildError
    except ImportError as e:
        raise SetupFailed(f"bpf.core is not importable (run with the project's .venv python): {e}") from e
    out = core_cache_dir(kernel, cache)
    try:
        build.vmlinux_header(out, btf=kernel.btf)
        build.compile_object(sensor.SOURCE, out, btf=kernel.btf)
    except BuildError as e:
        raise SetupFailed(f"cannot build the CO-RE objects for {kernel.release}: {e}") from e
    return out

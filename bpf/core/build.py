"""Build CO-RE objects: vmlinux.h from the kernel's BTF (bpftool), then clang -target bpf.

Both steps are cached on disk by content: vmlinux.h by the sha256 of the BTF it was
dumped from, an object by the digest of (source, flags, clang version, vmlinux.h), so
an unchanged program is compiled once per machine and a rebuilt kernel gets a fresh
header. Files are written to a temporary name and renamed, so a crash or a concurrent
build never leaves a half-written entry. The object is CO-RE: libbpf relocates its
field accesses to the kernel that loads it, so it can be built anywhere once.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import BtfUnavailable, CompileFailed, StripFailed, ToolMissing, VmlinuxFailed

KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")
#: Flags every object is built with; __TARGET_ARCH_x86 selects bpf_tracing.h's register layout.
BASE_FLAGS: tuple[str, ...] = ("-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86")
COMPILE_TIMEOUT_S = 120


def default_btf() -> Path:
    """The BTF vmlinux.h is generated from: the running kernel's, or `PALISADE_CORE_BTF`.

    CO-RE objects load on any kernel with the fields they use, so a fixed BTF (another kernel's,
    copied to a file) lets machines with different kernels share one object cache: the kernel
    matrix builds on the host and loads the same objects in the VM."""
    env = os.environ.get("PALISADE_CORE_BTF")
    return Path(env) if env else KERNEL_BTF


def default_cache_dir() -> Path:
    env = os.environ.get("PALISADE_CORE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "palisade" / "bpf-core"


@dataclass(frozen=True)
class BuiltObject:
    path: Path
    digest: str
    cached: bool  # True when no compiler ran

    def read(self) -> bytes:
        return self.path.read_bytes()


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise ToolMissing(name)
    return found


@lru_cache(maxsize=4)
def clang_version(clang: str | None = None) -> str:
    """The first line of `clang --version` (part of every object's cache key)."""
    exe = clang or _tool("clang")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "unknown"


_digests: dict[tuple[str, int, int, int], str] = {}


def _sha256_file(path: Path) -> str:
    """sha256 of a file, remembered while it is unchanged (the kernel's BTF: 6 MB, read for every build)."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _digests.get(key)
    if hit is None:
        hit = _digests[key] = _sha256_uncached(path)
    return hit


def _sha256_uncached(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(dst: Path, data: bytes) -> None:
    """Write `data` to `dst` through a temporary file in its folder, so a reader sees all of it or none
    (also scripts/vm's kernel cache)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def vmlinux_header(cache_dir: Path | None = None, btf: Path | None = None) -> Path:
    """Path of a vmlinux.h for `btf` (default: `default_btf()`), dumping it with bpftool unless cached."""
    cache = cache_dir or default_cache_dir()
    btf = btf or default_btf()
    try:
        digest = _sha256_file(btf)
    except OSError as e:
        raise BtfUnavailable(str(btf), e.strerror or str(e)) from e
    header = cache / "vmlinux" / digest[:32] / "vmlinux.h"
    if header.is_file():
        return header
    proc = subprocess.run([_tool("bpftool"), "btf", "dump", "file", str(btf), "format", "c"],
                          capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise VmlinuxFailed(str(btf), proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}")
    write_atomic(header, proc.stdout)
    return header


def _pch(header: Path, flags: tuple[str, ...], clang: str) -> Path | None:
    """vmlinux.h precompiled for these flags, made once next to the header (None when clang cannot).

    Parsing the 3 MB header is most of the cost of a small program (0.18 s of 0.19 s) and a
    fifth of a policy's; the object is byte for byte the same with or without it."""
    key = hashlib.sha256("\0".join((*flags, clang_version(clang))).encode()).hexdigest()[:16]
    pch = header.with_name(f"vmlinux.{key}.pch")
    if pch.is_file():
        return pch
    tmp = pch.with_name(f".{pch.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        proc = subprocess.run([clang, *flags, "-x", "c-header", str(header), "-o", str(tmp)], capture_output=True,
                              check=False, timeout=COMPILE_TIMEOUT_S)
        if proc.returncode != 0:
            return None
        os.replace(tmp, pch)
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        tmp.unlink(missing_ok=True)
    return pch


def object_digest(source: bytes, flags: tuple[str, ...], clang: str, vmlinux_digest: str) -> str:
    """The cache key of an object: everything that changes the bytes clang produces."""
    h = hashlib.sha256()
    for part in (source, "\0".join(flags).encode(), clang.encode(), vmlinux_digest.encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _compiler_message(stderr: str, src_name: str, tmp_name: str) -> str:
    """clang's diagnostics with the temporary file name replaced by the source's."""
    return stderr.replace(tmp_name, src_name).strip()


def _strip(obj: Path, name: str) -> Path:
    dst = obj.with_suffix(".stripped.o")
    proc = subprocess.run([_tool("bpftool"), "gen", "object", str(dst), str(obj)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0 or not dst.is_file():
        raise StripFailed(name, proc.stderr.strip() or f"exit {proc.returncode}")
    return dst


def compile_object(source: Path | bytes, cache_dir: Path | None = None, *, name: str = "program.bpf.c",
                   extra_flags: tuple[str, ...] = (), btf: Path | None = None, strip: bool = True) -> BuiltObject:
    """Compile a BPF C source (a file, or its bytes with `name` for messages) into a CO-RE object.

    The source includes "vmlinux.h" and libbpf's <bpf/...> headers; nothing else from the
    host's kernel headers is used. With `strip`, the object goes through `bpftool gen
    object`, which keeps BTF (CO-RE needs it) and drops DWARF: a tenth of the size, the
    same load time.
    """
    cache = cache_dir or default_cache_dir()
    if isinstance(source, Path):
        name = source.name
        text = source.read_bytes()
    else:
        text = source
    clang = _tool("clang")
    header = vmlinux_header(cache, btf)
    flags = (*BASE_FLAGS, *extra_flags)
    digest = object_digest(text, (*flags, "strip" if strip else "keep-dwarf"), clang_version(clang),
                           header.parent.name)
    obj = cache / "objects" / f"{digest[:40]}.o"
    if obj.is_file():
        return BuiltObject(obj, digest, cached=True)
    with tempfile.TemporaryDirectory(prefix="palisade-core-") as tmp:
        src = Path(tmp) / name
        src.write_bytes(text)
        out = Path(tmp) / "out.o"
        # the temporary directory's name kept out of the object's BTF line info: the same source gives
        # the same bytes, so anyone can rebuild a signed object and compare
        cmd = [clang, *flags, f"-fdebug-prefix-map={tmp}=/palisade", f"-fdebug-prefix-map={header.parent}=/vmlinux",
               "-I", str(header.parent), "-c", str(src),
               "-o", str(out)]
        pch = _pch(header, flags, clang)
        if pch is not None:
            cmd[1:1] = ["-include-pch", str(pch)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise CompileFailed(name, f"clang did not finish in {COMPILE_TIMEOUT_S} s") from e
        if proc.returncode != 0 or not out.is_file():
            raise CompileFailed(name, _compiler_message(proc.stderr, name, str(src)) or f"exit {proc.returncode}")
        if strip:
            out = _strip(out, name)
        write_atomic(obj, out.read_bytes())
    return BuiltObject(obj, digest, cached=False)

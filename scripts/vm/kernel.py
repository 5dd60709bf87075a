"""Stock Debian kernels for the VM: resolve a series, download and unpack it once, read its modules and BTF.

A kernel is fetched with `apt-get download` and unpacked with `dpkg -x` into the cache
(nothing is installed, /boot is untouched), under a temporary name renamed into place
when complete, so an interrupted fetch never leaves a half kernel that looks usable.
The .deb carries no modules.dep (depmod runs at install time), so module dependencies
are read from each module's own `.modinfo` section, which is what depmod reads too.
"""
from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import re
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmerrors import KernelUnavailable, SetupFailed

from bpf.core.build import write_atomic

DEFAULT_CACHE = Path("/var/cache/palisade-vm")
APT_TIMEOUT_S = 600
#: The modules the guest needs to mount the host's root over virtio 9p (their dependencies are added).
NINEP_MODULES = ("virtio_pci", "9pnet_virtio", "9p")


def cache_root() -> Path:
    return Path(os.environ.get("PALISADE_VM_CACHE") or DEFAULT_CACHE)


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel package: `root` holds its boot/ and lib/modules/ trees."""

    release: str  # e.g. 6.1.0-57-amd64, as `uname -r` prints it in the guest
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def btf(self) -> Path:
        """The raw BTF the guest exposes as /sys/kernel/btf/vmlinux (extracted on first use)."""
        out = self.root / "vmlinux.btf"
        if not out.is_file():
            write_atomic(out, extract_btf(self.vmlinuz.read_bytes()))
        return out


# ------------------------------------------------------------------ resolving and fetching

def _series_pattern(series: str) -> re.Pattern[str]:
    # "6.1" -> linux-image-6.1.0-N-amd64; a full release ("6.1.0-57-amd64") names one package
    if re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", series):
        return re.compile(rf"linux-image-({re.escape(series)})")
    if re.fullmatch(r"\d+\.\d+", series):
        return re.compile(rf"linux-image-({re.escape(series)}\.0-(\d+)-amd64)")
    raise KernelUnavailable(f"kernel {series!r}: give a series such as 6.1 or a release such as 6.1.0-57-amd64")


def _abi(release: str) -> int:
    m = re.search(r"-(\d+)-amd64$", release)
    return int(m.group(1)) if m else 0


def _apt_releases(pattern: re.Pattern[str]) -> list[str]:
    try:
        out = subprocess.run(["apt-cache", "pkgnames", "linux-image-"], capture_output=True, text=True,
                             check=False, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted({m.group(1) for name in out.split() if (m := pattern.fullmatch(name))}, key=_abi)


def _cached_releases(pattern: re.Pattern[str], kernels: Path) -> list[str]:
    if not kernels.is_dir():
        return []
    return sorted((d.name for d in kernels.iterdir() if pattern.fullmatch(f"linux-image-{d.name}")), key=_abi)


def resolve(series: str, cache: Path | None = None, log: Callable[[str], None] = print) -> Kernel:
    """The newest kernel of `series` apt knows of, downloaded and unpacked unless already cached.

    With no apt list naming one (lists never fetched), apt-get update runs once; with no
    network at all, the newest kernel of the series already in the cache is used.
    """
    kernels = (cache or cache_root()) / "kernels"
    pattern = _series_pattern(series)
    releases = _apt_releases(pattern)
    if not releases:
        _apt_update(log)
        releases = _apt_releases(pattern)
    if not releases:
        cached = _cached_releases(pattern, kernels)
        if cached:
            log(f"palisade-vm: apt names no kernel {series}; using the cached {cached[-1]}")
            return Kernel(cached[-1], kernels / cached[-1])
        raise KernelUnavailable(f"no package linux-image for kernel {series} is known to apt "
                                "(apt-get update failed or the series does not exist)")
    release = releases[-1]
    dest = kernels / release
    if dest.is_dir():
        return Kernel(release, dest)
    cached = _cached_releases(pattern, kernels)
    try:
        _fetch(release, kernels, log)
    except KernelUnavailable:
        if cached:  # offline: an older kernel of the same series still serves
            log(f"palisade-vm: download of {release} failed; using the cached {cached[-1]}")
            return Kernel(cached[-1], kernels / cached[-1])
        raise
    return Kernel(release, dest)


def _apt_update(log: Callable[[str], None]) -> None:
    log("palisade-vm: apt-get update")
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # a failed update shows as no package below
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False, timeout=APT_TIMEOUT_S)


def _fetch(release: str, kernels: Path, log: Callable[[str], None]) -> None:
    kernels.mkdir(parents=True, exist_ok=True)
    package = f"linux-image-{release}"
    log(f"palisade-vm: downloading {package} into {kernels}")
    with tempfile.TemporaryDirectory(dir=kernels, prefix=".fetch-") as tmp:
        try:
            # apt's sandbox user cannot write into root's cache: download as root, said so once
            proc = subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
                                  cwd=tmp, capture_output=True, text=True, check=False, timeout=APT_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise KernelUnavailable(f"apt-get download {package} did not finish in {APT_TIMEOUT_S} s") from e
        except OSError as e:
            raise KernelUnavailable(f"apt-get cannot run: {e}") from e
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or len(debs) != 1:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise KernelUnavailable(f"apt-get download {package} failed (network?): "
                                    f"{detail[-1] if detail else f'exit {proc.returncode}'}")
        unpacked = Path(tmp) / "root"
        proc = subprocess.run(["dpkg", "-x", str(debs[0]), str(unpacked)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise KernelUnavailable(f"dpkg -x {debs[0].name} failed: {proc.stderr.strip()}")
        kernel = Kernel(release, unpacked)
        if not kernel.vmlinuz.is_file() or not kernel.modules_dir.is_dir():
            raise KernelUnavailable(f"{debs[0].name} has no {kernel.vmlinuz.name} or modules tree")
        os.replace(unpacked, kernels / release)


# ------------------------------------------------------------------ ELF, modules, BTF

def elf_sections(data: bytes) -> dict[str, bytes]:
    """The named sections of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SetupFailed("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    str_off, str_size = headers[shstrndx][4], headers[shstrndx][5]
    names = data[str_off:str_off + str_size]
    out = {}
    for name_off, sh_type, _flags, _addr, off, size in headers:
        name = names[name_off:names.index(b"\0", name_off)].decode()
        out[name] = b"" if sh_type == 8 else data[off:off + size]  # SHT_NOBITS has no bytes in the file
    return out


def module_files(modules_dir: Path) -> dict[str, Path]:
    """Module name (dashes as underscores, as the kernel names them) -> its .ko file."""
    return {p.name.removesuffix(".ko").replace("-", "_"): p for p in modules_dir.rglob("*.ko")}


def _depends(ko: Path) -> list[str]:
    for entry in elf_sections(ko.read_bytes()).get(".modinfo", b"").split(b"\0"):
        if entry.startswith(b"depends="):
            return [d.replace("-", "_") for d in entry[8:].decode().split(",") if d]
    return []


def load_order(modules_dir: Path, wanted: tuple[str, ...] = NINEP_MODULES) -> list[tuple[str, Path]]:
    """`wanted` and everything they depend on, each after its dependencies (built-in ones skipped)."""
    files = module_files(modules_dir)
    builtin_list = modules_dir / "modules.builtin"
    builtin = set()
    if builtin_list.is_file():
        builtin = {Path(line).name.removesuffix(".ko").replace("-", "_")
                   for line in builtin_list.read_text().split()}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            raise SetupFailed(f"module {name} is neither built in nor in {modules_dir}")
        for dep in _depends(files[name]):
            visit(dep)
        order.append((name, files[name]))

    for name in wanted:
        visit(name)
    return order


def extract_btf(bzimage: bytes) -> bytes:
    """The .BTF section of the vmlinux inside a bzImage, i.e. the guest's /sys/kernel/btf/vmlinux.

    The boot protocol header (2.08+) says where the compressed kernel starts and how long
    it is, so no searching for magic bytes: skip the real-mode setup sectors, then read
    payload_offset/payload_length.
    """
    if bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        raise SetupFailed("vmlinuz is not a bzImage of boot protocol 2.08 or later")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start:start + length]
    if payload[:6] == b"\xfd7zXZ\x00":
        vmlinux = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload[:2] == b"\x1f\x8b":
        vmlinux = zlib.decompressobj(wbits=31).decompress(payload)
    else:
        raise SetupFailed(f"vmlinuz payload compressed in a format not handled here (magic {payload[:4].hex()})")
    btf = elf_sections(vmlinux).get(".BTF")
    if not btf:
        raise SetupFailed("the kernel has no .BTF section (built without CONFIG_DEBUG_INFO_BTF)")
    return btf


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_atomic(src: Path, dst: Path) -> None:
    write_atomic(dst, src.read_bytes())


__all__ = ["Kernel", "cache_root", "copy_atomic", "elf_sections", "extract_btf", "load_order", "resolve",
           "sha256"]

"""The guest's initramfs: busybox, the 9p modules of one kernel, init.sh and stage2.sh, as a newc cpio.

The base archive (busybox + modules + init) is built once per (busybox, init.sh, kernel
modules) and cached; each run appends a small uncompressed archive with its command
(the kernel unpacks concatenated archives in order), so the cached part never changes.
"""
from __future__ import annotations

import gzip
import hashlib
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kernel import Kernel, load_order
from vmerrors import SetupFailed

from bpf.core.build import write_atomic

BUSYBOX = Path("/bin/busybox")
INIT = Path(__file__).with_name("init.sh")
STAGE2 = Path(__file__).with_name("stage2.sh")


@dataclass(frozen=True)
class Entry:
    name: str  # path inside the archive, without a leading slash
    mode: int  # file type and permission bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(name: str) -> Entry:
    return Entry(name, stat.S_IFDIR | 0o755)


def regular(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def cpio(entries: list[Entry]) -> bytes:
    """A newc ("070701") archive of `entries`, closed by the TRAILER!!! entry."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = e.name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0)
        out.extend(b"070701" + b"".join(b"%08x" % f for f in fields) + name)
        pad()
        out.extend(e.data)
        pad()
    return bytes(out)


def busybox_is_static() -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "busybox-static"], capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() == "install ok installed" and BUSYBOX.is_file()


def base_image(kernel: Kernel, cache: Path) -> Path:
    """The cached, gzip-compressed base archive for `kernel`, built when its inputs changed."""
    if not busybox_is_static():
        raise SetupFailed("busybox-static is not installed (the initramfs needs a static busybox)")
    modules = load_order(kernel.modules_dir)
    busybox = BUSYBOX.read_bytes()
    init = INIT.read_bytes()
    stage2 = STAGE2.read_bytes()
    h = hashlib.sha256()
    for part in (busybox, init, stage2, kernel.release.encode(), *(name.encode() for name, _ in modules)):
        h.update(hashlib.sha256(part).digest())
    out = cache / "initramfs" / f"{kernel.release}-{h.hexdigest()[:16]}.cpio.gz"
    if out.is_file():
        return out
    entries = [directory(d) for d in ("bin", "dev", "proc", "sys", "newroot", "modules", "palisade")]
    entries.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))  # init's stdio before devtmpfs
    entries.append(regular("bin/busybox", busybox, 0o755))
    entries.append(regular("init", init, 0o755))
    entries.append(regular("stage2.sh", stage2, 0o755))
    entries.append(regular("modules/order", "".join(f"{name}\n" for name, _ in modules).encode()))
    entries.extend(regular(f"modules/{name}.ko", path.read_bytes()) for name, path in modules)
    write_atomic(out, gzip.compress(cpio(entries), compresslevel=6, mtime=0))
    return out


def run_archive(files: dict[str, bytes]) -> bytes:
    """The per-run archive: `files` under /palisade/ (the command, its environment, what to copy)."""
    return cpio([directory("palisade"), *(regular(f"palisade/{name}", data) for name, data in files.items())])

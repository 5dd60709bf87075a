"""Boot a kernel under QEMU (TCG) with the host's root shared read-only, run one command, return its exit code.

The guest's console (ttyS0) is QEMU's stdout, streamed to ours as it comes; the exit
code travels on a second serial port (ttyS1) written to a file, so nothing the command
prints can be mistaken for it. Every temporary file lives in one directory removed on
the way out, and QEMU is killed on a timeout, an exception or a signal.
"""
from __future__ import annotations

import os
import re
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import initramfs
from kernel import Kernel
from vmerrors import BootFailed, BootTimeout, CommandTimeout, QemuMissing, SetupFailed

QEMU = "qemu-system-x86_64"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Host variables a guest command sees unless told otherwise (CI decides whether kernel tests may skip).
PASSED_ENV = ("CI", "TERM", "LANG")


@dataclass(frozen=True)
class VmSpec:
    kernel: Kernel
    command: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...] = ()
    writable: tuple[str, ...] = ()  # host directories the guest gets as writable tmpfs copies
    memory_mb: int = 2048
    cpus: int = 1
    boot_timeout_s: float = 120.0
    timeout_s: float = 1800.0
    verbose: bool = False
    qemu: str | None = None
    extra_cmdline: tuple[str, ...] = field(default=())


def find_qemu(explicit: str | None) -> str:
    exe = explicit or shutil.which(QEMU)
    if not exe or not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise QemuMissing(f"{explicit or QEMU} not found (Debian package qemu-system-x86)")
    return exe


def _cmd_script(spec: VmSpec, colour: bool) -> bytes:
    env = {"PATH": GUEST_PATH, "HOME": "/tmp/home", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
    if not colour:  # the guest's stdout is a serial tty; ours is a pipe or a file: no escape codes
        env.update({"TERM": "dumb", "NO_COLOR": "1", "PY_COLORS": "0"})
    env.update(dict(spec.env))
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append(f"cd {shlex.quote(spec.cwd)} || exit 126")
    lines.append("exec " + " ".join(shlex.quote(a) for a in spec.command))
    return ("\n".join(lines) + "\n").encode()


def _config(spec: VmSpec) -> bytes:
    for w in spec.writable:
        if not w.startswith("/") or any(c.isspace() for c in w):
            raise SetupFailed(f"--writable {w!r}: an absolute path without spaces")
    # the command's directory, when the guest's tmpfs mounts would hide it (a clone under /tmp, as CI makes)
    hidden = any(spec.cwd == d or spec.cwd.startswith(d + "/") for d in ("/tmp", "/var/tmp", "/run"))
    if hidden and any(c.isspace() for c in spec.cwd):
        raise SetupFailed(f"--cwd {spec.cwd!r}: a directory under /tmp, /var/tmp or /run must have no spaces")
    values = {"KMODS": str(spec.kernel.modules_dir), "WRITABLE": " ".join(spec.writable),
              "KEEP": spec.cwd if hidden else ""}
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()).encode()


def qemu_argv(spec: VmSpec, qemu: str, initrd: Path, status: Path) -> list[str]:
    cmdline = ["console=ttyS0", "panic=-1", "rdinit=/init", *spec.extra_cmdline]
    if not spec.verbose:
        cmdline += ["quiet", "loglevel=1"]
    return [
        qemu, "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        # KVM here cannot run stock kernels; multi-threaded TCG oopsed in early boot under load
        "-accel", "tcg,thread=single", "-cpu", "max",
        "-m", str(spec.memory_mb), "-smp", str(spec.cpus),
        "-kernel", str(spec.kernel.vmlinuz), "-initrd", str(initrd), "-append", " ".join(cmdline),
        "-serial", "stdio",  # ttyS0: the console and the command's output
        "-chardev", f"file,id=status,path={status}", "-serial", "chardev:status",  # ttyS1: the exit code
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ]


#: The kernel's last word, printed whatever the log level, when init powers the guest off.
_REBOOT_LINE = re.compile(rb"\[ *\d+\.\d+\] reboot: Restarting system\r?\n?")


class _Stream:
    """Copies the guest console to `out`: the tty's CR LF back into LF, the kernel's reboot line dropped.

    Text after the last newline is written at once, except when it may be the start of a
    kernel message ("["): that is held until its line is complete, to be filtered whole.
    """

    def __init__(self, out: BinaryIO, keep_kernel_lines: bool = False) -> None:
        self.out = out
        self.keep = keep_kernel_lines
        self.held = b""

    def feed(self, chunk: bytes) -> None:
        data = self.held + chunk
        head, nl, tail = data.rpartition(b"\n")
        done, self.held = (head + nl, tail) if nl else (b"", data)
        if self.held and not (self.held.startswith(b"[") or self.held.endswith(b"\r")):
            done, self.held = done + self.held, b""
        self._write(done)

    def close(self) -> None:
        self._write(self.held)
        self.held = b""

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if not self.keep:
            data = _REBOOT_LINE.sub(b"", data)
        self.out.write(data.replace(b"\r\n", b"\n"))
        self.out.flush()


def _status(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").split()
    except FileNotFoundError:
        return []


def boot(spec: VmSpec, cache: Path, out: BinaryIO | None = None, log: Callable[[str], None] = print) -> int:
    """Run `spec.command` in the guest; its exit code, or a VmError for the runner's own failures."""
    qemu = find_qemu(spec.qemu)
    base = initramfs.base_image(spec.kernel, cache)
    sink = out or sys.stdout.buffer
    stream = _Stream(sink, keep_kernel_lines=spec.verbose)
    with tempfile.TemporaryDirectory(prefix="palisade-vm-") as tmp:
        initrd, status = Path(tmp) / "initrd", Path(tmp) / "status"
        with initrd.open("wb") as f:
            data = base.read_bytes()
            # the kernel looks for the next archive only at a 4-byte boundary (it skips NULs)
            f.write(data + b"\0" * (-len(data) % 4))
            f.write(initramfs.run_archive({"cmd.sh": _cmd_script(spec, sink.isatty()), "config": _config(spec)}))
        argv = qemu_argv(spec, qemu, initrd, status)
        if spec.verbose:
            log("palisade-vm: " + " ".join(shlex.quote(a) for a in argv))
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        try:
            return _supervise(proc, spec, status, stream, started, log)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def _supervise(proc: subprocess.Popen[bytes], spec: VmSpec, status: Path, stream: _Stream, started: float,
               log: Callable[[str], None]) -> int:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    command_started: float | None = None
    eof = False
    while not eof:
        words = _status(status)
        if command_started is None and words[:1] == ["start"]:
            command_started = time.monotonic()
            log(f"palisade-vm: {spec.kernel.release} booted in {command_started - started:.1f} s")
        now = time.monotonic()
        if command_started is None and now - started > spec.boot_timeout_s:
            raise BootTimeout(f"the guest did not start the command within {spec.boot_timeout_s:.0f} s")
        if command_started is not None and now - command_started > spec.timeout_s:
            raise CommandTimeout(f"the command did not finish within {spec.timeout_s:.0f} s")
        for _key, _ev in sel.select(timeout=0.2):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                eof = True
                break
            stream.feed(chunk)
    sel.close()
    stream.close()
    rc = proc.wait()
    words = _status(status)
    if words[:1] == ["start"] and len(words) >= 3 and words[1] == "exit":
        log(f"palisade-vm: command exited {words[2]} after {time.monotonic() - (command_started or started):.1f} s")
        return int(words[2])
    if words[:1] == ["fail"]:
        raise BootFailed("guest init failed: " + " ".join(words[1:]))
    if words[:1] == ["start"]:
        raise BootFailed("the guest stopped before the command reported an exit code (kernel panic?)")
    raise BootFailed(f"QEMU exited {rc} before the guest started the command (rerun with --verbose)")

#!/usr/bin/env python3
"""Run one command inside a stock Debian kernel under QEMU, with this machine's root shared read-only.

    .venv/bin/python scripts/vm/run.py --kernel 6.1 -- .venv/bin/python -m pytest -q tests/bpf/core

Installs qemu-system-x86 and busybox-static when missing (root, apt), fetches the newest
linux-image-<series>.0-N-amd64 into the cache (PALISADE_VM_CACHE, default
/var/cache/palisade-vm) once, boots it with TCG, and runs the command in the current
directory of the host's root. Inside: /tmp, /var/tmp, /run, /root are tmpfs, and proc,
sysfs, devtmpfs, bpffs, tracefs, debugfs and cgroup2 are mounted; the rest is read-only.
The command's output is streamed to stdout; progress messages go to stderr.

Exit codes: the guest command's own exit code (0-255), or
  2    bad arguments
  120  QEMU missing and not installable
  121  kernel package could not be resolved, downloaded or unpacked (no network?)
  122  host-side setup failed (busybox, initramfs, guest BTF, CO-RE prebuild)
  123  the VM ended before the command started (guest init failed, panic)
  124  boot timeout: the command had not started within --boot-timeout
  125  command timeout: the command did not finish within --timeout
QEMU is killed and every temporary file removed in each case.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import initramfs
import kernel as kernels
from prebuild import prebuild
from vm import QEMU, VmSpec, boot, find_qemu
from vmerrors import EXIT_USAGE, QemuMissing, SetupFailed, VmError


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _apt_install(packages: list[str]) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    for attempt in range(2):
        if attempt:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False, env=env)
        try:
            if subprocess.run(cmd, capture_output=True, check=False, env=env).returncode == 0:
                return True
        except OSError:
            return False
    return False


def ensure_packages(want_qemu: bool) -> None:
    """Install what is missing of qemu-system-x86 and busybox-static (idempotent)."""
    missing = []
    if want_qemu and shutil.which(QEMU) is None:
        missing.append("qemu-system-x86")
    if not initramfs.busybox_is_static():
        missing.append("busybox-static")
    if not missing:
        return
    if os.geteuid() != 0:
        raise (QemuMissing if "qemu-system-x86" in missing else SetupFailed)(
            f"{', '.join(missing)} not installed, and installing needs root")
    log(f"palisade-vm: installing {' '.join(missing)}")
    if not _apt_install(missing):
        if "qemu-system-x86" in missing and shutil.which(QEMU) is None:
            raise QemuMissing(f"{QEMU} is not installed and apt-get install qemu-system-x86 failed")
        raise SetupFailed("apt-get install busybox-static failed")


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--kernel", default="6.1", help="series (6.1) or release (6.1.0-57-amd64); default 6.1")
    p.add_argument("--memory", type=int, default=2048, help="guest memory in MiB (default 2048)")
    p.add_argument("--cpus", type=int, default=1, help="guest CPUs (default 1; TCG runs them on one thread)")
    p.add_argument("--boot-timeout", type=float, default=120.0, help="seconds until the command starts")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the command may run")
    p.add_argument("--env", type=_env_pair, action="append", default=[], metavar="NAME=VALUE",
                   help="set in the guest command's environment (repeatable)")
    p.add_argument("--writable", action="append", default=[], metavar="DIR",
                   help="host directory the guest sees as a writable tmpfs copy (repeatable)")
    p.add_argument("--cwd", default=os.getcwd(), help="directory the command runs in (default: this one)")
    p.add_argument("--core-objects", action="store_true",
                   help="build the CO-RE objects on the host for the guest kernel and point "
                        "PALISADE_CORE_CACHE in the guest at a writable copy of them")
    p.add_argument("--qemu", help=f"path of {QEMU} (no install attempted)")
    p.add_argument("--no-install", action="store_true", help="never apt-get install missing packages")
    p.add_argument("--verbose", action="store_true", help="kernel messages and the QEMU command line")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("no command given (run.py [options] -- command ...)")
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through boot(): QEMU killed, temporary files removed


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else 0
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if not args.no_install:
            ensure_packages(want_qemu=args.qemu is None)
        find_qemu(args.qemu)  # before fetching a kernel that could not be booted
        cache = kernels.cache_root()
        kern = kernels.resolve(args.kernel, cache, log=log)
        env = list(args.env)
        writable = list(args.writable)
        if args.core_objects:
            core = prebuild(kern, cache)
            env.append(("PALISADE_CORE_CACHE", str(core)))
            writable.append(str(core))
        spec = VmSpec(kernel=kern, command=tuple(args.command), cwd=os.path.abspath(args.cwd), env=tuple(env),
                      writable=tuple(writable), memory_mb=args.memory, cpus=args.cpus,
                      boot_timeout_s=args.boot_timeout, timeout_s=args.timeout, verbose=args.verbose,
                      qemu=args.qemu)
        return boot(spec, cache, log=log)
    except VmError as e:
        log(f"palisade-vm: {type(e).__name__}: {e.message}")
        return e.exit_code
    except KeyboardInterrupt:
        log("palisade-vm: interrupted")
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())

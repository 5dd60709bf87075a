"""What can go wrong around a VM run, one class per failure kind, each with its exit code.

The guest command's own exit code (0-255) is passed through unchanged; the codes below
are the runner's own and are printed with a message naming the cause, so a guest command
that happens to exit 120-125 can still be told apart by that message.
"""
from __future__ import annotations

EXIT_USAGE = 2


class VmError(Exception):
    """Base class: `exit_code` is what run.py exits with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QemuMissing(VmError):
    """qemu-system-x86_64 is not installed and could not be installed."""

    exit_code = 120


class KernelUnavailable(VmError):
    """No kernel package of that series could be resolved, downloaded or extracted (no network?)."""

    exit_code = 121


class SetupFailed(VmError):
    """The host side could not be prepared: busybox, the initramfs, the guest's BTF, CO-RE objects."""

    exit_code = 122


class BootFailed(VmError):
    """The VM ended before the command started (guest init failed, kernel panic, QEMU refused)."""

    exit_code = 123


class BootTimeout(VmError):
    """The guest did not start the command within the boot timeout; QEMU was killed."""

    exit_code = 124


class CommandTimeout(VmError):
    """The command started but did not finish within the timeout; QEMU was killed."""

    exit_code = 125

"""Exceptions of the eBPF engine. `bpf` imports nothing from `reconciler`, so it has its own root."""
from __future__ import annotations

from collections.abc import Sequence

JsonPath = tuple[str | int, ...]


def format_path(path: JsonPath) -> str:
    """`spec.kprobes[0].selectors[1]` from `("spec", "kprobes", 0, "selectors", 1)`."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out or "(document)"


class BpfError(Exception):
    """Root of the engine's errors."""


class PolicyError(BpfError):
    """A TracingPolicy document is malformed; `path` points at the offending node."""

    def __init__(self, path: JsonPath, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{format_path(path)}: {message}")


class Unsupported(BpfError):
    """The policy (as a whole) cannot be enforced by this engine on this kernel; every reason is listed."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("; ".join(self.reasons))


class LoadError(BpfError):
    """The kernel refused a step of loading; whatever was done before it has been rolled back."""


class NotLoaded(BpfError):
    """No policy of that name is loaded (or pinned) here."""

"""Exceptions of the eBPF engine. `bpf` imports nothing from `reconciler`, so it has its own root."""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

JsonPath = tuple[str | int, ...]


class RefusalKind(enum.StrEnum):
    """Why a policy is not in force here, as a label (the reasons say the rest)."""

    UNSUPPORTED = "unsupported"  # this engine cannot enforce it on this kernel
    LOAD_FAILED = "load_failed"  # the kernel (or the node: cgroups, pins) refused a step of loading
    NEEDS_WORKLOADS = "needs_workloads"  # limited to workloads, and loaded without their cgroups
    INVALID = "invalid"  # not a TracingPolicy this engine can read (YAML, schema, placeholders)
    INACTIVE = "inactive"  # it applies to no workload on this node: nothing to load
    MODE_SWITCH = "mode_switch"  # the switch to another ladder state failed; the old mode holds


@dataclass(frozen=True)
class PolicyRefusal:
    """A policy refused, as one value from the engine up to the status and the heartbeat.

    `kind` is the label; `reasons` are the sentences shown, joined by "; " (`text`), as they always were.
    """

    kind: RefusalKind
    reasons: tuple[str, ...]

    @property
    def text(self) -> str:
        return "; ".join(self.reasons)

    def __str__(self) -> str:
        return self.text

    def adding(self, notes: Sequence[str]) -> PolicyRefusal:
        """The same refusal with more to say (e.g. why the bundle's objects did not serve)."""
        return PolicyRefusal(self.kind, (*self.reasons, *notes)) if notes else self


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

    @property
    def refusal(self) -> PolicyRefusal:
        return PolicyRefusal(RefusalKind.UNSUPPORTED, self.reasons)


class LoadError(BpfError):
    """The kernel refused a step of loading; whatever was done before it has been rolled back."""


class NotLoaded(BpfError):
    """No policy of that name is loaded (or pinned) here."""

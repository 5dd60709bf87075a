"""The reconciler's exception hierarchy.

Every error says what was wrong, where, and what to do; the CLI prints the
message and exits with the class's exit code, never a traceback. The base classes
the agent shares live in `wire.errors`.
"""
from __future__ import annotations

from wire.errors import KeyError_, PalisadeError, VerificationError

__all__ = [
    "KeyError_", "PalisadeError", "RewriteRefused", "SourceError", "StateError", "UsageError", "VerificationError",
]


class UsageError(PalisadeError):
    """The command line or its arguments are wrong (exit 2)."""


class SourceError(PalisadeError):
    """The repository or a revision cannot be read (exit 2)."""


class StateError(PalisadeError):
    """The state directory is missing, locked or inconsistent (exit 2)."""


class RewriteRefused(PalisadeError):
    """The tracked branch no longer descends from the last accepted commit (exit 3)."""

    exit_code = 3

"""The reconciler's exception hierarchy.

Every error says what was wrong, where, and what to do; the CLI prints the
message and exits with the class's exit code, never a traceback.
"""
from __future__ import annotations


class PalisadeError(Exception):
    """Base of every error the reconciler raises on purpose."""

    exit_code = 2


class UsageError(PalisadeError):
    """The command line or its arguments are wrong (exit 2)."""


class SourceError(PalisadeError):
    """The repository or a revision cannot be read (exit 2)."""


class StateError(PalisadeError):
    """The state directory is missing, locked or inconsistent (exit 2)."""


class KeyError_(PalisadeError):
    """A signing or public key is missing, unreadable or malformed (exit 2)."""


class VerificationError(PalisadeError):
    """A signature, digest, expiry or version check failed (exit 1)."""

    exit_code = 1


class RewriteRefused(PalisadeError):
    """The tracked branch no longer descends from the last accepted commit (exit 3)."""

    exit_code = 3

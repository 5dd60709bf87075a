"""The errors both sides raise: every CLI prints a `PalisadeError`'s message and exits with its code."""
from __future__ import annotations


class PalisadeError(Exception):
    """Base of every error the reconciler or the agent raises on purpose."""

    exit_code = 2


class KeyError_(PalisadeError):
    """A signing or public key is missing, unreadable or malformed (exit 2)."""


class VerificationError(PalisadeError):
    """A signature, digest, expiry or version check failed (exit 1)."""

    exit_code = 1

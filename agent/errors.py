"""The agent's errors. They extend the shared hierarchy (`wire.errors`) so every CLI prints them the same way."""
from __future__ import annotations

from wire.bundle import WireError
from wire.errors import PalisadeError, VerificationError

__all__ = ["AgentError", "ConfigError", "FetchError", "Unreadable", "VerificationError", "WrongBundle"]


class AgentError(PalisadeError):
    """Something the agent cannot work with (exit 2)."""


class ConfigError(AgentError):
    """The command line or the configuration file is wrong (exit 2)."""


class FetchError(AgentError):
    """The server could not be reached or answered something that is not a usable response.

    `reason` is a short, stable label for metrics (`unreachable`, `http_5xx`,
    `too_large`, `truncated`, `stalled`, ...); the message says the rest.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WrongBundle(WireError):
    """The server answered another bundle than the one asked for (mix-and-match)."""

    reason = "mismatch"


class Unreadable(WireError):
    """A file of the state directory exists but cannot be read (EIO, EACCES, ...)."""

    reason = "unreadable"

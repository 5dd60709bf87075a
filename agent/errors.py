"""The agent's errors. They extend the shared hierarchy (`wire.errors`) so every CLI prints them the same way."""
from __future__ import annotations

from typing import Any, ClassVar

from wire.bundle import WireError
from wire.errors import PalisadeError, VerificationError

__all__ = ["AgentError", "ConfigError", "FetchError", "HttpStatus", "NoIndex", "ResponseTooLarge", "ServerError",
           "Stalled", "TimedOut", "Truncated", "UnexpectedNotModified", "Unreachable", "Unreadable",
           "VerificationError", "WrongBundle"]


class AgentError(PalisadeError):
    """Something the agent cannot work with (exit 2)."""


class ConfigError(AgentError):
    """The command line or the configuration file is wrong (exit 2)."""


class FetchError(AgentError):
    """The server could not be reached or answered something that is not a usable response.

    The class names the failure: `code` is its stable label for metrics, status and the
    heartbeat, whatever the message says (the message says the rest). `retryable`: the
    next attempt may well succeed; `refused`: the response itself is unusable, so once the
    retries are over it is counted like a failed verification. A subclass gives them as
    class keywords (what it does not give it inherits).
    """

    code: str = "fetch"
    retryable: ClassVar[bool] = False
    refused: ClassVar[bool] = False

    def __init_subclass__(cls, *, code: str | None = None, retryable: bool | None = None,
                          refused: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if retryable is not None:
            cls.retryable = retryable
        if refused is not None:
            cls.refused = refused

    @property
    def reason(self) -> str:
        """The label under its older name (`code`)."""
        return self.code


class Unreachable(FetchError, code="unreachable", retryable=True):
    """No connection, or the connection broke (DNS, refused, reset, ...)."""


class TimedOut(FetchError, code="timeout", retryable=True):
    """A connect or a read took longer than its timeout."""


class Stalled(FetchError, code="stalled", retryable=True):
    """No complete response within the request's total deadline (a slow or stalled server)."""


class ServerError(FetchError, code="http_5xx", retryable=True):
    """HTTP 5xx."""


class NoIndex(FetchError, code="no_index", retryable=True):
    """The server has nothing published yet (404 on the index)."""


class HttpStatus(FetchError):
    """Another status the agent cannot use (4xx, 3xx); the label carries the number."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = f"http_{status}"


class UnexpectedNotModified(FetchError, code="unexpected_304"):
    """304 Not Modified to a request that named no copy to compare with."""


class ResponseTooLarge(FetchError, code="too_large", refused=True):
    """A response announced or sent past the limit of what is read."""


class Truncated(FetchError, code="truncated", retryable=True, refused=True):
    """Fewer bytes than announced, or the peer closed before the body was complete."""


class WrongBundle(WireError):
    """The server answered another bundle than the one asked for (mix-and-match)."""

    code = "mismatch"


class Unreadable(WireError):
    """A file of the state directory exists but cannot be read (EIO, EACCES, ...)."""

    code = "unreadable"

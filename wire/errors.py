"""The errors both sides raise: every CLI prints a `PalisadeError`'s message and exits with its code."""
from __future__ import annotations

from typing import Any, ClassVar


class PalisadeError(Exception):
    """Base of every error the reconciler or the agent raises on purpose."""

    exit_code = 2


class KeyError_(PalisadeError):
    """A signing or public key is missing, unreadable or malformed (exit 2)."""


class VerificationError(PalisadeError):
    """A signature, digest, expiry or version check failed (exit 1)."""

    exit_code = 1


class Coded:
    """A refusal whose class names its kind by a stable `code` (what metrics, status and heartbeats count,
    never the message). A kind declares it on its class line, `class Kind(Base, code="...")`; a kind that
    does not inherits its base's."""

    code: ClassVar[str]

    def __init_subclass__(cls, code: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if code is not None:
            cls.code = code


class HeartbeatError(Coded, PalisadeError, ValueError):
    """An agent's heartbeat refused (wire.heartbeat); the class names why (`code`), whatever the message says.
    A ValueError too: callers that refused a bad document as a ValueError keep doing so."""

    code = "malformed"


# The heartbeat's failure kinds, by code: malformed (not UTF-8, not JSON, or not the document wire.heartbeat
# describes), out_of_range (a number beyond its member's bounds: negative, past a signed 64-bit integer),
# size (more than MAX_HEARTBEAT_BYTES), sensor_id (the URL's sensor id is no valid id), sensor_mismatch (the
# document's `sensor` is not the URL's).
class MalformedHeartbeat(HeartbeatError): ...
class HeartbeatOutOfRange(MalformedHeartbeat, code="out_of_range"): ...
class HeartbeatTooLarge(HeartbeatError, code="size"): ...
class BadSensorId(HeartbeatError, code="sensor_id"): ...
class SensorMismatch(HeartbeatError, code="sensor_mismatch"): ...

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


class MalformedHeartbeat(HeartbeatError):
    """Not JSON, not UTF-8, or not the document wire.heartbeat describes (member, type or value)."""


class HeartbeatOutOfRange(MalformedHeartbeat, code="out_of_range"):
    """A number beyond what its member allows (negative, or more than a signed 64-bit integer)."""


class HeartbeatTooLarge(HeartbeatError, code="size"):
    """More bytes than wire.heartbeat.MAX_HEARTBEAT_BYTES."""


class BadSensorId(HeartbeatError, code="sensor_id"):
    """The sensor id of the URL is not a valid id."""


class SensorMismatch(HeartbeatError, code="sensor_mismatch"):
    """The document's `sensor` is not the sensor of the URL."""

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


class HeartbeatError(PalisadeError, ValueError):
    """An agent's heartbeat refused (wire.heartbeat); the class names why (`code`), whatever the message says.
    A ValueError too: callers that refused a bad document as a ValueError keep doing so."""

    code = "malformed"


class MalformedHeartbeat(HeartbeatError):
    """Not JSON, not UTF-8, or not the document wire.heartbeat describes (member, type or value)."""


class HeartbeatOutOfRange(MalformedHeartbeat):
    """A number beyond what its member allows (negative, or more than a signed 64-bit integer)."""

    code = "out_of_range"


class HeartbeatTooLarge(HeartbeatError):
    code = "size"


class BadSensorId(HeartbeatError):
    """The sensor id of the URL is not a valid id."""

    code = "sensor_id"


class SensorMismatch(HeartbeatError):
    """The document's `sensor` is not the sensor of the URL."""

    code = "sensor_mismatch"

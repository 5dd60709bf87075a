"""Strict reading of parsed JSON, for every document that crosses the wire.

`parse_json` refuses what `json.loads` lets through: duplicate keys, floats, NaN/Infinity
and integers beyond a signed 64-bit range (refused by their length before Python builds
them). The readers (`obj`, `text`, `integer`, ...) check one member each and raise
`Invalid` with the JSON path of the bad member; a caller turns that into its own refusal
(`wire.bundle` into a `Malformed` bundle or index).
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

#: Every integer of the wire formats fits in a signed 64-bit integer (SQLite, Prometheus, Go agents);
#: a longer number is refused while parsing, before Python builds it (3.11 refuses >4300 digits itself,
#: with a ValueError that is no refusal).
MAX_INT = 2**63 - 1
_MAX_DIGITS = len(str(MAX_INT))

_T = TypeVar("_T")


class Invalid(ValueError):
    """A member is not what the document's schema says (the message starts with its JSON path)."""


class OutOfRange(Invalid):
    """A number outside what its member allows."""


def format_time(t: _dt.datetime) -> str:
    """RFC 3339 in UTC with second precision, e.g. `2026-11-21T22:41:23Z`."""
    if t.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return t.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> _dt.datetime:
    """An RFC 3339 time with an offset, as an aware UTC datetime."""
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time") from None
    if t.tzinfo is None or "T" not in text:
        raise ValueError(f"{text!r} is not an RFC 3339 time with a UTC offset")
    try:
        return t.astimezone(_dt.UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:00 is past the last representable instant
        raise ValueError(f"{text!r} is out of range") from None


def parse_int(text: str) -> int:
    # json calls this with the literal's text: refuse by length first, so a 5,000-digit number costs nothing
    if len(text.lstrip("-")) > _MAX_DIGITS:
        shown = text if len(text) <= 24 else text[:24] + "…"
        raise OutOfRange(f"number {shown} has {len(text.lstrip('-'))} digits, more than {_MAX_DIGITS}")
    value = int(text)
    if not -MAX_INT <= value <= MAX_INT:
        raise OutOfRange(f"number {text} is out of range (at most {MAX_INT})")
    return value


def parse_json(text: str) -> Any:
    """`json.loads` without duplicate keys, floats, NaN/Infinity or oversized integers (`Invalid`,
    `OutOfRange`); `json.JSONDecodeError`, `RecursionError` and `ValueError` pass through."""

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise Invalid(f"duplicate key {k!r}")
            out[k] = v
        return out

    def no_float(text: str) -> Any:
        raise Invalid(f"number {text} is not an integer (floats are not allowed)")

    def no_constant(text: str) -> Any:
        raise Invalid(f"{text} is not JSON")

    return json.loads(text, object_pairs_hook=no_dupes, parse_float=no_float, parse_constant=no_constant,
                      parse_int=parse_int)


def obj(v: Any, path: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise Invalid(f"{path}: expected an object, got {typename(v)}")
    req = set(required)
    missing = sorted(req - v.keys())
    if missing:
        raise Invalid(f"{path}: missing {', '.join(missing)}")
    unknown = sorted(v.keys() - req - set(optional))
    if unknown:
        raise Invalid(f"{path}: unknown member {', '.join(unknown)}")
    return v


def text(v: Any, path: str, *, pattern: re.Pattern[str] | None = None, empty: bool = False) -> str:
    if not isinstance(v, str):
        raise Invalid(f"{path}: expected a string, got {typename(v)}")
    if not empty and not v:
        raise Invalid(f"{path}: must not be empty")
    if pattern is not None and not pattern.match(v):
        raise Invalid(f"{path}: {v[:80]!r} does not match {pattern.pattern}")
    return v


def integer(v: Any, path: str, *, minimum: int = 0, maximum: int = MAX_INT) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise Invalid(f"{path}: expected an integer, got {typename(v)}")
    if v < minimum:
        raise OutOfRange(f"{path}: {v} is lower than {minimum}")
    if v > maximum:
        raise OutOfRange(f"{path}: {v} is more than {maximum}")
    return v


def boolean(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise Invalid(f"{path}: expected true or false, got {typename(v)}")
    return v


def array(v: Any, path: str, item: Callable[[Any, str], _T]) -> tuple[_T, ...]:
    if not isinstance(v, list):
        raise Invalid(f"{path}: expected an array, got {typename(v)}")
    return tuple(item(x, f"{path}[{i}]") for i, x in enumerate(v))


def strings(v: Any, path: str) -> tuple[str, ...]:
    return array(v, path, text)


def labels(v: Any, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict):
        raise Invalid(f"{path}: expected an object of label: value, got {typename(v)}")
    return tuple(sorted((k, text(x, f"{path}.{k}", empty=True)) for k, x in v.items()))


def time(v: Any, path: str) -> _dt.datetime:
    try:
        return parse_time(text(v, path))
    except Invalid:
        raise
    except ValueError as e:
        raise Invalid(f"{path}: {e}") from None


def typename(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "an integer", str: "a string", list: "an array", dict: "an object"}.get(
        type(v), type(v).__name__
    )

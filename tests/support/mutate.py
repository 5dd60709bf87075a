"""Mutating parsed documents for the hostile-input property tests: every path into a value, and a copy
of the value with one path's target replaced."""
from __future__ import annotations


def paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path into `value` (the empty path, the whole value, included)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def replace(value: object, path: tuple, new: object) -> object:
    """A copy of `value` with what `path` names replaced by `new` (the original is left as it was)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (replace(v, rest, new) if k == head else v) for k, v in value.items()}
    if isinstance(value, list):
        return [(replace(v, rest, new) if i == head else v) for i, v in enumerate(value)]
    return value

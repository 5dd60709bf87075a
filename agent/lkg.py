"""Last-known-good: the verified index and bundle this node last applied, on disk.

Both are kept byte for byte in one file, replaced atomically, so the pair is
always consistent. They are *re-verified* when read: the index signature with
the pinned keys, the bundle against the digest the index gives and its own
signature. A file that was damaged or tampered with fails one of these and is
refused; it is never enforced.

Expiry is not checked on this path on purpose: expiry stops a network attacker
from freezing an agent on an old index unnoticed, but a node whose server is
down must keep enforcing the newest policy it verifiably had rather than
nothing. The agent reports the expired index (`index_expired`, see
`agent.runner`) and keeps enforcing.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import VerifyKey

from wire import strict
from wire.bundle import (
    Bundle,
    Index,
    Malformed,
    WireError,
    parse_bundle,
    parse_index,
    verify_bundle,
    verify_index,
)

from .atomic import write_atomic
from .errors import Unreadable, WrongBundle

__all__ = ["LKG_FILE", "LastKnownGood", "encode", "load", "save"]

LKG_FILE = "last-known-good.json"


@dataclass(frozen=True)
class LastKnownGood:
    index: Index
    bundle: Bundle
    index_bytes: bytes
    bundle_bytes: bytes


def encode(index_bytes: bytes, bundle_bytes: bytes) -> bytes:
    doc = {"index": base64.b64encode(index_bytes).decode(), "bundle": base64.b64encode(bundle_bytes).decode()}
    return json.dumps(doc).encode()


def save(state_dir: Path, index_bytes: bytes, bundle_bytes: bytes) -> None:
    write_atomic(Path(state_dir) / LKG_FILE, encode(index_bytes, bundle_bytes))


def load(state_dir: Path, pubkeys: Iterable[VerifyKey]) -> LastKnownGood | None:
    """The verified last-known-good, None if there is none; a WireError (the kind in its class) if it does not
    verify or cannot be read."""
    path = Path(state_dir) / LKG_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Unreadable(f"last-known-good {path}: {e.strerror}") from None
    try:
        # read as strictly as the documents it holds (wire.strict); the two members are base64 text
        doc = strict.obj(strict.parse_json(raw.decode("utf-8")), "last-known-good", ("index", "bundle"))
        index_bytes = base64.b64decode(strict.text(doc["index"], "index"), validate=True)
        bundle_bytes = base64.b64decode(strict.text(doc["bundle"], "bundle"), validate=True)
    except (ValueError, RecursionError, binascii.Error) as e:
        # ValueError covers strict.Invalid, bad UTF-8, bad JSON and a number json will not build
        raise Malformed(f"last-known-good {path} is damaged: {str(e)[:200]}") from None
    keys = list(pubkeys)
    try:
        unverified = parse_index(index_bytes)
        # checked at its own issue time: everything but expiry (see the module docstring)
        index = verify_index(index_bytes, keys, now=unverified.issued)
        bundle = _bundle_in(index, bundle_bytes, keys)
    except WireError as e:
        raise type(e)(f"last-known-good {path} refused: {e}") from None
    return LastKnownGood(index, bundle, index_bytes, bundle_bytes)


def _bundle_in(index: Index, data: bytes, keys: list[VerifyKey]) -> Bundle:
    version = parse_bundle(data).version  # unverified: only to find the index entry to check against
    entry = index.entry(version)
    if entry is None:
        raise WrongBundle(f"bundle v{version} is not listed in the index")
    return verify_bundle(data, keys, expected_sha256=entry.sha256, expected_size=entry.size)

"""Reading Ed25519 keys (PyNaCl) from palisade's small text files: the verify side the agent needs.

    # keyid <sha256 hex of the raw public key>
    -----BEGIN PALISADE ED25519 PUBLIC KEY-----
    <base64 of the 32-byte key>
    -----END PALISADE ED25519 PUBLIC KEY-----

A signing key file is the same with `SIGNING KEY` and the 32-byte seed; writing keys and
loading the signing key (which checks the file's mode) is the reconciler's (`reconciler.keys`).
Lines starting with `#` are comments.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from pathlib import Path

from nacl.signing import VerifyKey

from .bundle import keyid
from .errors import KeyError_

__all__ = ["PUBLIC_LABEL", "SIGNING_LABEL", "keyid", "load_public_key", "load_public_keys", "unarmor"]

SIGNING_LABEL = "PALISADE ED25519 SIGNING KEY"
PUBLIC_LABEL = "PALISADE ED25519 PUBLIC KEY"


def load_public_key(path: Path) -> VerifyKey:
    """The public key in `path` (a `.pub` file written by `palisade keygen`)."""
    return VerifyKey(unarmor(Path(path), PUBLIC_LABEL))


def load_public_keys(paths: Iterable[Path]) -> list[VerifyKey]:
    return [load_public_key(p) for p in paths]


def unarmor(path: Path, label: str) -> bytes:
    """The 32 raw bytes of the key file `path` holding a key of kind `label`; KeyError_ says what is wrong."""
    what = "signing key" if label == SIGNING_LABEL else "public key"
    try:
        if path.stat().st_size > 64 * 1024:
            raise KeyError_(f"{what} {path}: the file is too large to be a key")
        text = path.read_text("ascii")
    except OSError as e:
        raise KeyError_(f"{what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KeyError_(f"{what} {path}: not a palisade key file (binary content)") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if len(lines) != 3 or lines[0] != begin or lines[2] != end:
        other = PUBLIC_LABEL if label == SIGNING_LABEL else SIGNING_LABEL
        if f"-----BEGIN {other}-----" in lines:
            raise KeyError_(f"{what} {path}: this file holds a {other.split()[-2].lower()} key, not a {what}")
        raise KeyError_(f"{what} {path}: expected the lines {begin!r}, base64, {end!r}")
    try:
        raw = base64.b64decode(lines[1], validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_(f"{what} {path}: the key is not valid base64") from None
    if len(raw) != 32:
        raise KeyError_(f"{what} {path}: the key is {len(raw)} bytes, expected 32")
    return raw

"""Ed25519 signing keys (PyNaCl) as small text files.

    -----BEGIN PALISADE ED25519 SIGNING KEY-----
    <base64 of the 32-byte seed>
    -----END PALISADE ED25519 SIGNING KEY-----

and the same with `PUBLIC KEY` for the 32-byte public key. Lines starting with
`#` are comments (the key id is written there for humans). The signing key file
is created with mode 0600 and, like OpenSSH, refused when others may read it.

Stdlib and PyNaCl only: the agent loads its pinned public keys with this module.
"""
from __future__ import annotations

import base64
import binascii
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from .errors import KeyError_

SIGNING_KEY_FILE = "palisade.key"
PUBLIC_KEY_FILE = "palisade.pub"
_PRIVATE = "PALISADE ED25519 SIGNING KEY"
_PUBLIC = "PALISADE ED25519 PUBLIC KEY"


def keyid(key: VerifyKey | SigningKey) -> str:
    """sha256 hex of the raw public key (the `keyid` of signatures)."""
    from .bundle import keyid as _keyid

    return _keyid(key)


@dataclass(frozen=True)
class KeyPair:
    signing_key_path: Path
    public_key_path: Path
    keyid: str


def generate(out_dir: Path, *, force: bool = False) -> KeyPair:
    """Write a new key pair into `out_dir`; refuses to replace existing files unless `force`."""
    out_dir = Path(out_dir)
    key_path, pub_path = out_dir / SIGNING_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    if not force:
        existing = [str(p) for p in (key_path, pub_path) if p.exists() or p.is_symlink()]
        if existing:
            verb = "exists" if len(existing) == 1 else "exist"
            raise KeyError_(f"{' and '.join(existing)} already {verb}; use --force to replace the key pair")
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise KeyError_(f"cannot create {out_dir}: {e.strerror}") from None
    if not out_dir.is_dir():
        raise KeyError_(f"{out_dir} is not a directory")
    sk = SigningKey.generate()
    kid = keyid(sk)
    _write(key_path, _armor(_PRIVATE, bytes(sk), kid), 0o600)
    _write(pub_path, _armor(_PUBLIC, bytes(sk.verify_key), kid), 0o644)
    return KeyPair(key_path, pub_path, kid)


def load_signing_key(path: Path) -> SigningKey:
    """The signing key in `path`; KeyError_ says what is wrong with the file."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise KeyError_(f"signing key {path}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise KeyError_(
            f"signing key {path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open; "
            f"it must be readable by its owner only (chmod 600 {path})"
        )
    return SigningKey(_unarmor(path, _PRIVATE))


def load_public_key(path: Path) -> VerifyKey:
    """The public key in `path` (a `.pub` file written by `palisade keygen`)."""
    return VerifyKey(_unarmor(Path(path), _PUBLIC))


def load_public_keys(paths: Iterable[Path]) -> list[VerifyKey]:
    return [load_public_key(p) for p in paths]


def _armor(label: str, raw: bytes, kid: str) -> bytes:
    b64 = base64.b64encode(raw).decode("ascii")
    return f"# keyid {kid}\n-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n".encode("ascii")


def _unarmor(path: Path, label: str) -> bytes:
    what = "signing key" if label == _PRIVATE else "public key"
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
        other = _PUBLIC if label == _PRIVATE else _PRIVATE
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


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create the file with its final mode from the start (no window where a secret is readable),
    through a temporary file and a rename so --force never leaves half a key."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise KeyError_(f"cannot write {path}: {e.strerror}") from None

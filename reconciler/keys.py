"""Ed25519 signing keys (PyNaCl) as small text files.

    -----BEGIN PALISADE ED25519 SIGNING KEY-----
    <base64 of the 32-byte seed>
    -----END PALISADE ED25519 SIGNING KEY-----

and the same with `PUBLIC KEY` for the 32-byte public key. Lines starting with
`#` are comments (the key id is written there for humans). The signing key file
is created with mode 0600 and, like OpenSSH, refused when others may read it.

Reading public keys is the wire contract's (`wire.keys`, which the agent uses); it is re-exported here.
"""
from __future__ import annotations

import base64
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from wire.keys import PUBLIC_LABEL, SIGNING_LABEL, keyid, load_public_key, load_public_keys, unarmor

from .errors import KeyError_

__all__ = [
    "PUBLIC_KEY_FILE", "SIGNING_KEY_FILE", "KeyPair", "generate", "keyid", "load_public_key", "load_public_keys",
    "load_signing_key",
]

SIGNING_KEY_FILE = "palisade.key"
PUBLIC_KEY_FILE = "palisade.pub"
_PRIVATE = SIGNING_LABEL
_PUBLIC = PUBLIC_LABEL


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
    return SigningKey(unarmor(path, _PRIVATE))


def _armor(label: str, raw: bytes, kid: str) -> bytes:
    b64 = base64.b64encode(raw).decode("ascii")
    return f"# keyid {kid}\n-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n".encode("ascii")


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

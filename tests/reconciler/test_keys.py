"""Ed25519 key files: generation, permissions, loading and clear refusals."""
from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from reconciler import keys
from reconciler.errors import KeyError_
from wire.bundle import keyid


def test_generate_writes_a_private_key_only_the_owner_can_read(tmp_path: Path) -> None:
    pair = keys.generate(tmp_path / "k")
    assert stat.S_IMODE(pair.signing_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.public_key_path.stat().st_mode) == 0o644
    sk = keys.load_signing_key(pair.signing_key_path)
    pk = keys.load_public_key(pair.public_key_path)
    assert keyid(sk) == keyid(pk) == pair.keyid
    assert pk.verify(sk.sign(b"payload")) == b"payload"
    assert f"# keyid {pair.keyid}" in pair.public_key_path.read_text()
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["palisade.key", "palisade.pub"]  # no temp left


def test_existing_keys_are_kept_unless_forced(tmp_path: Path) -> None:
    first = keys.generate(tmp_path)
    before = first.signing_key_path.read_bytes()
    with pytest.raises(KeyError_, match="already exist; use --force"):
        keys.generate(tmp_path)
    assert first.signing_key_path.read_bytes() == before
    second = keys.generate(tmp_path, force=True)
    assert second.keyid != first.keyid
    assert keyid(keys.load_signing_key(second.signing_key_path)) == second.keyid


def test_a_lone_public_key_also_blocks_generation(tmp_path: Path) -> None:
    (tmp_path / "palisade.pub").write_text("x")
    with pytest.raises(KeyError_, match=r"palisade.pub already exists"):
        keys.generate(tmp_path)


def test_a_readable_signing_key_is_refused(tmp_path: Path) -> None:
    pair = keys.generate(tmp_path)
    os.chmod(pair.signing_key_path, 0o644)
    with pytest.raises(KeyError_, match="permissions 0644 are too open"):
        keys.load_signing_key(pair.signing_key_path)


def _armored(label: str, raw: bytes) -> str:
    return f"-----BEGIN {label}-----\n{base64.b64encode(raw).decode()}\n-----END {label}-----\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected the lines"),
        ("hello\n", "expected the lines"),
        (_armored("PALISADE ED25519 PUBLIC KEY", b"x" * 31), "the key is 31 bytes, expected 32"),
        ("-----BEGIN PALISADE ED25519 PUBLIC KEY-----\n%%%\n-----END PALISADE ED25519 PUBLIC KEY-----\n",
         "not valid base64"),
        (_armored("PALISADE ED25519 SIGNING KEY", b"x" * 32), "holds a signing key, not a public key"),
    ],
)
def test_bad_public_key_files_say_what_is_wrong(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "palisade.pub"
    path.write_text(text)
    with pytest.raises(KeyError_, match=f"public key {path}: .*{reason}"):
        keys.load_public_key(path)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match="No such file"):
        keys.load_public_key(tmp_path / "nope.pub")
    binary = tmp_path / "bin.pub"
    binary.write_bytes(b"\x00\xff" * 10)
    with pytest.raises(KeyError_, match="binary content"):
        keys.load_public_key(binary)


def test_public_key_given_as_signing_key_is_refused(tmp_path: Path) -> None:
    pair = keys.generate(tmp_path)
    copy = tmp_path / "copy.key"
    copy.write_bytes(pair.public_key_path.read_bytes())
    copy.chmod(0o600)
    with pytest.raises(KeyError_, match="holds a public key, not a signing key"):
        keys.load_signing_key(copy)

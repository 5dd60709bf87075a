"""Git SSH commit signatures, verified by git itself against a list of reviewers.

Reviewers sign with SSH keys (`gpg.format=ssh`). To check commits we write an
allowed-signers file (`PRINCIPAL namespaces="git" KEY`) from the reviewer list of
the revision that governs them, and ask git for `%G?`/`%GF` with that file; git
runs `ssh-keygen -Y verify`. The verdict is mapped back to a reviewer by the key
fingerprint, so principals never need to be unique or pretty.

Status mapping from git's `%G?`:
``N`` unsigned; ``B`` bad (the signature does not match the commit);
``U`` a valid signature by a key not in the allowed signers (not a reviewer);
``G`` good: a reviewer's key; anything else (``E``: cannot be checked, e.g. an
OpenPGP signature or a missing tool) is reported as ``unverifiable``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from reconciler.errors import SourceError
from reconciler.repository.git import Git
from reconciler.repository.model import Reviewer


class Status(StrEnum):
    GOOD = "good"
    UNSIGNED = "unsigned"
    BAD = "bad-signature"
    NOT_REVIEWER = "not-reviewer"
    UNVERIFIABLE = "unverifiable"


@dataclass(frozen=True)
class Signature:
    """The verdict on one commit's signature; `reviewer` is set exactly when `status` is GOOD."""

    commit: str
    status: Status
    fingerprint: str | None = None
    reviewer: Reviewer | None = None

    def describe(self) -> str:
        short = self.commit[:12]
        if self.status is Status.GOOD and self.reviewer is not None:
            return f"commit {short} is signed by reviewer {self.reviewer.name} <{self.reviewer.email}>"
        if self.status is Status.UNSIGNED:
            return f"commit {short} is not signed"
        if self.status is Status.BAD:
            return f"commit {short} carries a signature that does not verify (altered after signing?)"
        if self.status is Status.NOT_REVIEWER:
            return f"commit {short} is signed by key {self.fingerprint}, which is not a reviewer's key"
        return f"commit {short} carries a signature git cannot check with SSH (reviewers sign with SSH keys)"


_KEY_TYPES = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
                        r"|sk-ecdsa-sha2-nistp256@openssh\.com)$")
_SAFE_PRINCIPAL = re.compile(r"^[A-Za-z0-9._%+@-]+$")


def fingerprint(key: str) -> str | None:
    """OpenSSH's SHA256 fingerprint of a public key line (`TYPE BASE64 [comment]`); None if malformed."""
    parts = key.split()
    if len(parts) < 2 or not _KEY_TYPES.match(parts[0]):
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    # the blob starts with its own length-prefixed type name; a mismatch means a pasted wrong key
    if len(blob) < 4 or blob[4 : 4 + int.from_bytes(blob[:4], "big")] != parts[0].encode():
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def allowed_signers(reviewers: Iterable[Reviewer]) -> str:
    """The allowed-signers file text for `reviewers`; malformed keys are left out (validation reports them)."""
    lines = []
    for i, r in enumerate(reviewers):
        if fingerprint(r.key) is None:
            continue
        principal = r.email if _SAFE_PRINCIPAL.match(r.email) else f"reviewer-{i}"
        key = " ".join(r.key.split()[:2])
        lines.append(f'{principal} namespaces="git" {key}')
    return "".join(line + "\n" for line in lines)


def verify(repo: Path, commit: str, reviewers: Sequence[Reviewer]) -> Signature:
    """The verdict on one commit's signature against `reviewers`."""
    return verify_many(repo, [commit], reviewers)[commit]


def verify_many(repo: Path, commits: Sequence[str], reviewers: Sequence[Reviewer]) -> dict[str, Signature]:
    """Verdicts for several commits with one allowed-signers file and one git process.

    Keys of the result are the commit names exactly as passed.
    """
    if not commits:
        return {}
    by_fp: dict[str, Reviewer] = {}
    for r in reviewers:
        fp = fingerprint(r.key)
        if fp is not None:
            by_fp.setdefault(fp, r)
    shas = [_resolve(repo, name) for name in commits]
    with tempfile.TemporaryDirectory(prefix="palisade-signers-") as tmp:
        signers = Path(tmp, "allowed_signers")
        signers.write_text(allowed_signers(reviewers), encoding="utf-8")
        # --no-walk prints exactly the commits given (on stdin: no argument-length limit), one
        # record each; fields are NUL-separated, records end with RS (0x1e)
        log = Git(Path(repo)).text(
            "log", "--no-walk=unsorted", "--stdin", "--format=%H%x00%G?%x00%GF%x1e", "--",
            config={"gpg.format": "ssh", "gpg.ssh.allowedSignersFile": str(signers), "log.showSignature": "false"},
            stdin="".join(sha + "\n" for sha in dict.fromkeys(shas)), doing="read signatures",
        )
    found: dict[str, Signature] = {}
    for rec in log.split("\x1e"):
        rec = rec.strip("\n")
        if not rec:
            continue
        sha, code, fp = [*rec.split("\x00"), "", ""][:3]
        found[sha] = _verdict(sha, code, fp or None, by_fp)
    out: dict[str, Signature] = {}
    for name, sha in zip(commits, shas, strict=True):
        if sha not in found:
            raise SourceError(f"{repo}: no signature record for {name}")
        out[name] = found[sha]
    return out


def _verdict(sha: str, code: str, fp: str | None, by_fp: dict[str, Reviewer]) -> Signature:
    if code == "N":
        return Signature(sha, Status.UNSIGNED)
    if code == "B":
        return Signature(sha, Status.BAD, fp)
    if code == "G" and fp is not None and fp in by_fp:
        return Signature(sha, Status.GOOD, fp, by_fp[fp])
    if code in ("G", "U") and fp is not None:
        # U: the signature is sound but the key is not in the allowed signers
        return Signature(sha, Status.NOT_REVIEWER, fp)
    return Signature(sha, Status.UNVERIFIABLE, fp)


def _resolve(repo: Path, name: str) -> str:
    if re.fullmatch(r"[0-9a-f]{40}", name):
        return name
    return Git(Path(repo)).commit(name)

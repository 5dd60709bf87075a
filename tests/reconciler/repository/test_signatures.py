"""Commit signatures verified by git against reviewers' SSH keys (real keys, real signed commits)."""
from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import SourceError
from reconciler.repository import signatures
from reconciler.repository.model import Reviewer
from reconciler.repository.signatures import Status
from support.gitrepo import GitRepo, Person, make_key

ALICE = Person("Alice", "alice@example.com")


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    key = make_key(tmp_path, "k")
    assert signatures.fingerprint(key.public) == key.fingerprint


@pytest.mark.parametrize(
    "line",
    [
        "",
        "ssh-ed25519",
        "ssh-ed25519 not*base64",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP8= old",
        # an RSA blob pasted under the ed25519 type
        "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==",
    ],
)
def test_malformed_keys_have_no_fingerprint_and_stay_out_of_allowed_signers(line: str) -> None:
    assert signatures.fingerprint(line) is None
    assert signatures.allowed_signers([Reviewer("X", "x@example.com", line)]) == ""


def test_allowed_signers_uses_safe_principals(tmp_path: Path) -> None:
    key = make_key(tmp_path, "k")
    text = signatures.allowed_signers([
        Reviewer("A", "alice@example.com", key.public),
        Reviewer("B", "odd name@example.com", key.public),
    ])
    kind, blob = key.public.split()[:2]
    assert text == (f'alice@example.com namespaces="git" {kind} {blob}\n'
                    f'reviewer-1 namespaces="git" {kind} {blob}\n')


def test_each_status_is_told_apart(tmp_path: Path) -> None:
    alice, mallory = make_key(tmp_path / "keys", "alice"), make_key(tmp_path / "keys", "mallory")
    reviewers = [Reviewer("Alice", ALICE.email, alice.public)]
    repo = GitRepo.init(tmp_path / "r")
    unsigned = repo.commit("plain", allow_empty=True)
    by_mallory = repo.commit("mallory", allow_empty=True, sign=mallory)
    good = repo.commit("alice", allow_empty=True, sign=alice)
    bad = repo.tamper(good, message="changed after signing")

    got = signatures.verify_many(repo.path, [unsigned, by_mallory, good, bad, "HEAD"], reviewers)
    assert got[unsigned].status is Status.UNSIGNED
    assert got[by_mallory].status is Status.NOT_REVIEWER and got[by_mallory].fingerprint == mallory.fingerprint
    assert got[good].status is Status.GOOD and got[good].reviewer == reviewers[0]
    assert got[bad].status is Status.BAD and got[bad].reviewer is None
    assert got["HEAD"] == got[bad]
    # with nobody allowed, Alice's valid signature is simply not a reviewer's
    assert signatures.verify(repo.path, good, []).status is Status.NOT_REVIEWER


def test_unknown_revision_is_a_source_error(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "r")
    repo.commit("c", allow_empty=True)
    with pytest.raises(SourceError, match="does not name a commit"):
        signatures.verify(repo.path, "no-such-branch", [])

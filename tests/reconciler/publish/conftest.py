"""Fixtures of the publish tests: a real policy repository and a fresh signing key."""
from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from support.policyrepo import PolicyRepo


@pytest.fixture()
def policy(tmp_path: Path) -> PolicyRepo:
    return PolicyRepo.create(tmp_path)


@pytest.fixture()
def key() -> SigningKey:
    return SigningKey.generate()

"""What a kernel test does when the machine cannot run it: skip, but fail in CI (CI=true)."""
from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(problem: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"kernel test cannot run in CI: {problem}")
    pytest.skip(problem)

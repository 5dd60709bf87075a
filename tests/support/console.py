"""The project's console scripts as the tests run them: the ones installed next to the interpreter
running the tests (the project venv), else found on PATH."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def script(name: str) -> str:
    """The path of console script `name` (`palisade`, `palisade-agent`); the test fails if it is not installed."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"the {name} console script is not installed (pip install -e .)")
    return found

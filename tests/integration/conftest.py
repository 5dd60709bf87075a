"""Fixtures of the operator command tests (helpers in operator_support.py); a module's own fixture of
the same name wins over these."""
from __future__ import annotations

from operator_support import fleet, repo

__all__ = ["fleet", "repo"]

"""Fixtures of the agent tests (helpers in agent_support.py)."""
from __future__ import annotations

from agent_support import proxy, served

__all__ = ["proxy", "served"]

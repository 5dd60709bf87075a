"""Fixtures of the agent tests (helpers in agent_support.py)."""
from __future__ import annotations

from agent_support import cgroup, enforcer, proxy, served

__all__ = ["cgroup", "enforcer", "proxy", "served"]

"""A reconciler API on a loopback port with an empty bundle store, and agent heartbeats posted to it
over real HTTP, for the operator command tests (readiness, impact, events, generate)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app
from support.policyrepo import PolicyRepo


@dataclass(frozen=True)
class FleetServer:
    url: str
    state: Path  # the state directory whose fleet.db the server writes

    def heartbeat(self, sensor: str, labels: dict[str, str], *, policies: Sequence[dict[str, Any]] = (),
                  observations: Sequence[dict[str, Any]] = (), drift: dict[str, Any] | None = None) -> None:
        body = {"sensor": sensor, "labels": labels, "version": 1, "stage": "default", "commit": "ab" * 20,
                "policies": list(policies), "drift": drift or {"detected": 0, "healed": 0, "unhealed": 0,
                                                               "findings": []},
                "counters": {}, "observations": list(observations)}
        r = httpx.post(f"{self.url}/v1/agents/{sensor}/heartbeat", json=body, timeout=10)
        assert r.status_code == 204, r.text


@contextlib.contextmanager
def fleet_server(tmp_path: Path) -> Iterator[FleetServer]:
    state = tmp_path / "state"
    (state / "store").mkdir(parents=True)
    with BackgroundServer(create_app(state / "store")) as srv:
        yield FleetServer(srv.url, state)


@pytest.fixture()
def repo(tmp_path: Path) -> PolicyRepo:
    """A real git policy repository (example-repo's documents) for the operator commands to read."""
    return PolicyRepo.create(tmp_path)


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[FleetServer]:
    """A fleet server no agent has reported to yet."""
    with fleet_server(tmp_path) as f:
        yield f


def policy_status(name: str, origin: tuple[str, str], status: str = "loaded", reason: str | None = None,
                  mode: str = "observe") -> dict[str, Any]:
    """One entry of a heartbeat's `policies`, as agent/heartbeat.py writes it."""
    return {"name": name, "status": status, "mode": mode, "reason": reason,
            "origin": {"kind": origin[0], "name": origin[1]}, "version": 1}

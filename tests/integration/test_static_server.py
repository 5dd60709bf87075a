"""Bundles from a static server: `palisade publish --to DIR`, Debian's nginx serving DIR on loopback, a
real agent (`palisade-agent run`, no engine) pulling from nginx and heartbeating to a real `palisade serve`.

Without nginx the test skips; under CI=true it fails (tests/support/nginx.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from agentproc import AgentProc

from reconciler.keys import generate
from support.nginx import Nginx, nginx_serving
from support.policyrepo import PolicyRepo
from support.serve import running

__all__ = ["nginx_serving"]

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _publish(state: Path, to: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", "publish", "--state", str(state), "--to", str(to),
                           "-o", "json"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def _store_version(state: Path) -> int:
    try:
        return int(json.loads((state / "store" / "index.json").read_bytes())["version"])
    except (OSError, ValueError, KeyError):
        return 0


def _reported(url: str, sensor: str) -> dict[str, Any] | None:
    agents = httpx.get(f"{url}/v1/agents", timeout=10).json()["agents"]
    return next((a for a in agents if a["id"] == sensor), None)


def test_an_agent_pulls_from_nginx_and_heartbeats_to_the_reconciler(
        tmp_path: Path, nginx_serving: Callable[[Path], Nginx]) -> None:
    repo = PolicyRepo.create(tmp_path)
    pair = generate(tmp_path / "keys")
    state, mirror = tmp_path / "state", tmp_path / "www"
    with running(repo.path, state, pair.signing_key_path) as serve:
        _wait(lambda: _store_version(state) >= 1, 30, "v1 in the store")
        out = _publish(state, mirror)
        assert out.returncode == 0, out.stderr
        first = json.loads(out.stdout)
        assert first["version"] == 1 and first["written"][-2:] == ["v1/bundles/1", "v1/index"]
        again = json.loads(_publish(state, mirror).stdout)  # idempotent: nothing to write the second time
        assert again["written"] == [] and again["unchanged"] == len(first["written"])

        web = nginx_serving(mirror)
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump({"engine": False, "bundles": {"url": web.url, "poll": 1},
                                          "intervals": {"heartbeat": 1, "retryMax": 1}}))
        agent = AgentProc(serve.url, pair.public_key_path, tmp_path / "agent", "web-1", labels="role=web",
                          config=config)
        try:
            agent.wait(lambda st: st["version"] == 1, 30, "v1 from nginx")
            # the heartbeat went to the reconciler, the bundle came from nginx
            _wait(lambda: (_reported(serve.url, "web-1") or {}).get("version") == 1, 30, "the heartbeat of v1")
            assert web.wait_access(lambda line: line.startswith("GET /v1/bundles/1 200"), 5, "the bundle")
            # polling, not long-polling: the ETag comes back and nginx answers 304; `wait` is never sent
            web.wait_access(lambda line: line.startswith("GET /v1/index 304 inm=") and "inm=-" not in line, 10,
                            "a 304 to If-None-Match")
            assert not [line for line in web.access_log() if "wait=" in line]

            # v2, mirrored with its bundle spoiled (same size, one byte flipped): the agent refuses it and
            # keeps enforcing v1
            repo.change("web back to observe", [("enforcement/web-lockdown.yaml", "state: enforce_ready",
                                                  "state: observe")])
            _wait(lambda: _store_version(state) >= 2, 30, "v2 in the store")
            assert _publish(state, mirror).returncode == 0
            bundle = mirror / "v1" / "bundles" / "2"
            data = bytearray(bundle.read_bytes())
            data[len(data) // 2] ^= 0x01
            bundle.write_bytes(bytes(data))
            st = agent.wait(lambda st: st["refusals"].get("digest", 0) >= 1, 30, "the tampered bundle refused")
            assert st["version"] == 1
            assert "bundle refused" in st["lastError"]
            assert (_reported(serve.url, "web-1") or {}).get("version") == 1

            # publish does not write over a bundle with other bytes (bundles are immutable): exit 2, named
            clash = _publish(state, mirror)
            assert clash.returncode == 2 and str(bundle) in clash.stderr and "Traceback" not in clash.stderr
            bundle.unlink()
            out = _publish(state, mirror)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["written"] == ["v1/bundles/2"]  # the index was already there
            agent.wait(lambda st: st["version"] == 2, 30, "v2 from nginx, by polling")
            _wait(lambda: (_reported(serve.url, "web-1") or {}).get("version") == 2, 30, "the heartbeat of v2")
        finally:
            assert agent.stop() == 0, agent.log
        assert "Traceback" not in agent.log, agent.log

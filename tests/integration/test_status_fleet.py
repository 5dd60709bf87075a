"""`palisade status` shows the fleet: each sensor, its version, stage, health and when it was last seen."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.policyrepo import PolicyRepo

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    policy = PolicyRepo.create(tmp_path)
    subprocess.run([str(BIN / "palisade"), "keygen", "--out", str(tmp_path / "k")], check=True, capture_output=True)
    url, state = f"http://127.0.0.1:{_port()}", tmp_path / "state"
    proc = subprocess.Popen([str(BIN / "palisade"), "serve", "--repo", str(policy.path), "--state", str(state),
                             "--key", str(tmp_path / "k" / "palisade.key"), "--listen", url.removeprefix("http://")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/status", timeout=1).json().get("version") == 1:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url, state
    finally:
        proc.terminate()
        proc.wait(10)


def _heartbeat(url: str, sensor: str, **body: object) -> None:
    r = httpx.post(f"{url}/v1/agents/{sensor}/heartbeat", json={"labels": {"role": "web"}, **body}, timeout=5)
    assert r.status_code == 204, r.text


def test_status_lists_each_sensor_with_version_stage_health(server: tuple[str, Path]) -> None:
    url, state = server
    _heartbeat(url, "node-1", version=1, stage="canary",
               policies=[{"name": "web-exec-allowlist", "status": "loaded", "mode": "enforced"}])
    _heartbeat(url, "node-2", version=1, stage="web",
               policies=[{"name": "no-kernel-modules", "status": "refused", "reason": "no tracepoint"}])
    _heartbeat(url, "node-3", version=1, stage="web", drift={"unhealed": 2})
    # the agent's own word: its state directory is full (read through the server as through the state)
    _heartbeat(url, "node-4", version=1, stage="web", health={"state": "degraded", "problems": [
        {"kind": "disk", "reason": "ENOSPC", "detail": "no space left", "since": "2026-12-01T10:00:00Z"}]})
    for where in (["--server", url], ["--state", str(state)]):
        r = subprocess.run([str(BIN / "palisade"), "status", *where, "-o", "json"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        fleet = {a["id"]: a for a in json.loads(r.stdout)["fleet"]}
        assert {k: (v["version"], v["stage"], v["health"]) for k, v in fleet.items()} == {
            "node-1": (1, "canary", "ok"), "node-2": (1, "web", "degraded"), "node-3": (1, "web", "drift"),
            "node-4": (1, "web", "degraded")}
        text = subprocess.run([str(BIN / "palisade"), "status", *where], capture_output=True, text=True).stdout
        row = next(line for line in text.splitlines() if line.startswith("node-2"))
        assert row.split()[:4] == ["node-2", "v1", "web", "degraded"] and "1 refused" in row and "ago" in row


def test_a_damaged_index_in_the_state_is_exit_2_with_the_reason(tmp_path: Path) -> None:
    from nacl.signing import SigningKey

    from reconciler.publish.reconcile import Reconciler

    policy = PolicyRepo.create(tmp_path)
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, SigningKey.generate()) as rec:
        rec.run_once()
    (state / "store" / "index.json").write_text('{"broken')
    r = subprocess.run([str(BIN / "palisade"), "status", "--state", str(state)], capture_output=True, text=True)
    assert r.returncode == 2 and "index.json" in r.stderr and "malformed" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list((state / "store").glob(".*"))  # a reader tidies nothing

"""`palisade-agent status`: what this node enforces and why, from the running agent's status file."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from agent_support import Proxy, Served, make_agent

ROOT = Path(__file__).resolve().parents[2]
MAIN = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"


def _status(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", MAIN, "status", "--state", str(state), *extra],
                          capture_output=True, text=True, cwd=ROOT)


def test_status_names_policy_origin_commit_and_state(served: Served, tmp_path: Path) -> None:
    state = tmp_path / "agent"

    async def run() -> None:
        agent = make_agent(served.url, served, state)
        await agent.sync_once()
        await agent.client.aclose()

    asyncio.run(run())
    text = _status(state)
    assert text.returncode == 0, text.stderr
    head, *rows = text.stdout.splitlines()
    commit = served.store.index()  # the commit of v1, as the ledger recorded it
    assert commit is not None
    assert "sensor node-canary-1" in head and "stage canary" in head and "bundle v1" in head
    row = next(r for r in rows if r.startswith("web-exec-allowlist"))
    assert "pack/web-lockdown" in row and "group:canary" in row and "enforced" in row and row.endswith("loaded")
    doc = json.loads(_status(state, "-o", "json").stdout)
    assert doc["version"] == 1 and len(doc["commit"]) == 40


def test_status_without_an_agent_is_a_clear_error(tmp_path: Path) -> None:
    out = _status(tmp_path)
    assert out.returncode == 2 and "has `palisade-agent run` started there?" in out.stderr
    assert "Traceback" not in out.stderr


def test_status_shows_the_last_refused_bundle_with_reason_and_time(served: Served, proxy: Proxy,
                                                                   tmp_path: Path) -> None:
    state = tmp_path / "agent"

    async def run() -> None:
        agent = make_agent(proxy.url, served, state)
        await agent.sync_once()
        v = served.relax(1)
        data = served.store.bundle_bytes(v)
        assert data is not None
        proxy.truncate(f"/v1/bundles/{v}", data)
        assert (await agent.sync_once()).outcome == "refused"
        await agent.client.aclose()

    asyncio.run(run())
    text = _status(state)
    # degraded: no bundle transfer has worked since (a verification refusal alone would not be)
    assert text.returncode == 1, text.stderr
    assert "transfer (truncated)" in text.stdout
    line = next(r for r in text.stdout.splitlines() if r.startswith("last refused: "))
    assert line.startswith("last refused: bundle at 20") and "(truncated)" in line
    doc = json.loads(_status(state, "-o", "json").stdout)
    assert doc["health"]["lastRefusal"]["what"] == "bundle"
    assert doc["health"]["lastRefusal"]["reason"] == "truncated"
    assert doc["refusals"] == {"truncated": 1}

"""`palisade-agent status`: what this node enforces and why, from the running agent's status file."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from agent_support import Served, make_agent

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

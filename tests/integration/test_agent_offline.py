"""`palisade-agent run` against a real `palisade serve`-style server that goes away and comes back.

The engine is switched off (--no-engine): these tests are about pulling,
verifying, persisting and reporting; the kernel tests are in test_agent_kernel.py.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from agentproc import AgentProc, free_port, policies

from reconciler import keys
from reconciler.publish.reconcile import Reconciler
from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app
from reconciler.state.fleet import Fleet
from support.policyrepo import PolicyRepo

pytestmark = pytest.mark.slow


def test_server_down_restart_from_last_known_good_then_catch_up(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    pair = keys.generate(tmp_path / "keys")
    rec = Reconciler(str(repo.path), tmp_path / "rstate", keys.load_signing_key(pair.signing_key_path))
    rec.run_once()
    port = free_port()
    server = BackgroundServer(create_app(rec.store.root), port=port).start()
    url = f"http://127.0.0.1:{port}"
    state = tmp_path / "agent"
    agent = AgentProc(url, pair.public_key_path, state, "web-1", "--no-engine", labels="role=web")
    try:
        st = agent.wait(lambda s: s["version"] == 1, 15, "v1 applied")
        assert policies(st)["web-exec-allowlist"] == ("loaded", "enforce_ready")
        # the heartbeat reached the reconciler's fleet table
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and [a.version for a in Fleet.open(tmp_path / "rstate").agents()] != [1]:
            time.sleep(0.1)
        (rec_agent,) = Fleet.open(tmp_path / "rstate").agents()
        assert (rec_agent.id, rec_agent.version, rec_agent.stage) == ("web-1", 1, "web")

        # server down: the agent keeps running and enforcing v1
        server.stop()
        time.sleep(2)
        assert agent.proc.poll() is None
        assert agent.status()["version"] == 1  # type: ignore[index]

        # restarted while the server is down: last-known-good at once
        assert agent.stop() == 0
        (state / "status.json").unlink()
        t0 = time.monotonic()
        agent = AgentProc(url, pair.public_key_path, state, "web-1", "--no-engine", labels="role=web")
        st = agent.wait(lambda s: s["version"] == 1, 15, "last-known-good enforced")
        assert policies(st)["web-exec-allowlist"] == ("loaded", "enforce_ready")
        assert time.monotonic() - t0 < 10
        agent.wait_log("enforcing last-known-good v1", 5)

        # a publish while the agent cannot see it; then the server returns and the agent catches up
        repo.change("web back to observe", [("enforcement/web-lockdown.yaml", "state: enforce_ready",
                                              "state: observe")])
        assert rec.run_once().published == (2,)
        server = BackgroundServer(create_app(rec.store.root), port=port).start()
        st = agent.wait(lambda s: s["version"] == 2, 40, "caught up with v2")
        assert policies(st)["web-exec-allowlist"] == ("loaded", "observe")
        assert httpx.get(url + "/v1/index").status_code == 200
        assert agent.stop(signal.SIGTERM) == 0
    finally:
        agent.stop(signal.SIGKILL)
        server.stop()
        rec.close()


def test_bad_flags_give_a_message_and_exit_2(tmp_path: Path) -> None:
    agent = AgentProc("not-a-url", tmp_path / "missing.pub", tmp_path / "s", "n1", "--no-engine")
    assert agent.proc.wait(20) == 2
    assert "Traceback" not in agent.log
    assert "server" in agent.log

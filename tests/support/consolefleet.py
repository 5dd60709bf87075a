"""A real `palisade serve` with real agents reporting to it, for the console tests.

    with ConsoleFleet.start(tmp, agents=[("web-1", {"role": "web"}), ("db-1", {"role": "db"})]) as fleet:
        fleet.wait_reporting(2)                 # both agents heartbeated
        fleet.url                               # http://127.0.0.1:PORT (the console at /ui/)
        fleet.publish("web back to observe", [("enforcement/web-lockdown.yaml", "enforce_ready", "observe")])

The repository is example-repo/ (support.policyrepo); the agents are `palisade-agent run --no-engine`
subprocesses (they pull, verify and hold the policies in memory, and heartbeat every second).
Everything is stopped on the way out; a server that exited badly or logged a traceback fails the test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from reconciler import keys
from support.policyrepo import PolicyRepo
from support.serve import Serve

ROOT = Path(__file__).resolve().parents[2]
_AGENT = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Agent:
    sensor: str
    proc: subprocess.Popen[str]
    state: Path
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@dataclass
class ConsoleFleet:
    tmp: Path
    repo: PolicyRepo
    pubkey: Path
    server: Serve
    token: str | None = None
    agents: list[Agent] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def state(self) -> Path:
        return self.server.state

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @classmethod
    @contextmanager
    def start(cls, tmp: Path, agents: Sequence[tuple[str, Mapping[str, str]]] = (), *extra: str,
              token: str | None = None) -> Iterator[ConsoleFleet]:
        """`palisade serve` (with `extra` flags; `token` written to a --token-file) and `agents` (sensor id,
        labels) reporting to it."""
        repo = PolicyRepo.create(tmp)
        pair = keys.generate(tmp / "signing")
        args = list(extra)
        if token is not None:
            (tmp / "token").write_text(token + "\n")
            args += ["--token-file", str(tmp / "token")]
        server = Serve(repo.path, tmp / "state", pair.signing_key_path, *args)
        fleet = cls(tmp, repo, pair.public_key_path, server, token)
        try:
            fleet.wait_version(1)
            for sensor, labels in agents:
                fleet.add_agent(sensor, labels)
            yield fleet
        finally:
            for a in fleet.agents:
                a.stop()
            code = server.stop()
            assert code == 0, server.log
            assert "Traceback" not in server.log, server.log

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=15, **kw)

    def wait_version(self, version: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = httpx.get(self.url + "/v1/index", timeout=10)
            if r.status_code == 200 and json.loads(r.content)["version"] >= version:
                return
            time.sleep(0.1)
        raise AssertionError(f"v{version} was not served within {timeout}s:\n{self.server.log}")

    def add_agent(self, sensor: str, labels: Mapping[str, str], engine: Mapping[str, Any] | None = None) -> Agent:
        """A `palisade-agent run --no-engine` with `labels`, heartbeating every second; with `engine` (more of
        its configuration: workloads, pinRoot), the real eBPF engine instead."""
        home = self.tmp / "agents" / sensor
        home.mkdir(parents=True)
        config = home / "agent.yaml"
        config.write_text(json.dumps({"labels": dict(labels), "intervals": {"heartbeat": 1, "wait": 5, "drift": 1},
                                      **(engine or {})}))
        log = home / "agent.log"
        proc = subprocess.Popen(
            [sys.executable, "-c", _AGENT, "run", "--server", self.url, "--pubkey", str(self.pubkey),
             "--state", str(home / "state"), "--sensor-id", sensor, "--config", str(config),
             *(() if engine is not None else ("--no-engine",))],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        agent = Agent(sensor, proc, home / "state", log)
        self.agents.append(agent)
        return agent

    def agents_json(self) -> list[dict[str, Any]]:
        r = self.get("/v1/agents")
        assert r.status_code == 200, r.text
        return list(r.json()["agents"])

    def wait_reporting(self, n: int, version: int | None = None, timeout: float = 40) -> list[dict[str, Any]]:
        """The fleet view once `n` agents reported (at `version`, if given)."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            got = self.agents_json()
            if len(got) >= n and (version is None or all(a["version"] == version for a in got)):
                return got
            for a in self.agents:
                if a.proc.poll() is not None:
                    raise AssertionError(f"agent {a.sensor} exited {a.proc.returncode}:\n{a.log.read_text()}")
            time.sleep(0.2)
        raise AssertionError(f"{n} agents (version {version}) did not report within {timeout}s: {got}")

    def publish(self, message: str, edits: list[tuple[str, str, str]]) -> None:
        """A commit to the repository's main branch (the server watches it and publishes the next version)."""
        self.repo.change(message, edits)

    def status_json(self) -> dict[str, Any]:
        """`palisade status --server URL -o json`, as an operator runs it."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-m", "reconciler.cli", "status", "--server", self.url, "-o", "json"],
                             cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode in (0, 1), out.stderr
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

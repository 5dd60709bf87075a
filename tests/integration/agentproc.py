"""`palisade-agent run` as a subprocess, for the agent's integration tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_MAIN = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"


class AgentProc:
    def __init__(self, server: str, pubkey: Path, state: Path, sensor: str, *extra: str,
                 labels: str | None = None, config: Path | None = None) -> None:
        argv = [sys.executable, "-c", _MAIN, "run", "--server", server, "--pubkey", str(pubkey), "--state",
                str(state), "--sensor-id", sensor, *extra]
        if labels:
            argv += ["--labels", labels]
        if config:
            argv += ["--config", str(config)]
        self.state = state
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def status(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads((self.state / "status.json").read_text())
            return doc
        except (OSError, ValueError):
            return None

    def wait(self, cond: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st is not None and cond(st):
                return st
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited ({self.proc.returncode}) waiting for {what}:\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; status {self.status()}\n{self.log[-4000:]}")

    def wait_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged:\n{self.log[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def policies(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {p["name"]: (p["status"], p["mode"]) for p in st["policies"]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def args_of(*items: Sequence[str]) -> list[str]:
    return [x for item in items for x in item]

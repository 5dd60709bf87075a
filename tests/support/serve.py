"""A real `palisade serve` for tests: the console command in a subprocess on a loopback port.

`Serve` starts it and waits for its "listening on URL" line; `running(...)` is the same as a
context manager that stops it (SIGTERM) on the way out and fails the test if it exited
badly or logged a traceback. `heartbeat` posts one agent report to it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


class Serve:
    """A `palisade serve` subprocess and what it wrote to stderr."""

    def __init__(self, repo: Path | str, state: Path, key: Path, *extra: str, start_timeout: float = 30,
                 env: dict[str, str] | None = None) -> None:
        """`env`: variables set for the server on top of the test's (test hooks such as
        PALISADE_TEST_SLOW_WRITES)."""
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "serve", "--repo", str(repo), "--state", str(state),
             "--key", str(key), "--listen", "127.0.0.1:0", *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[str] = []
        self._got_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_url(start_timeout)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._got_line:
                self.lines.append(line)
                self._got_line.notify_all()
        with self._got_line:  # end of stream: the process is gone
            self._got_line.notify_all()

    def _wait_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._got_line:
            while True:
                m = re.search(r"listening on (http://\S+)", "".join(self.lines))
                if m:
                    return m.group(1)
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    break
                self._got_line.wait(min(left, 0.5))
        self.proc.kill()
        self.proc.wait(10)
        raise AssertionError(f"palisade serve did not start:\n{self.log}")

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        """Its exit code once it exits by itself (within `timeout` seconds), with all it wrote read."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL, as a host that loses power: no handler runs, the kernel releases its locks."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(5)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        self._reader.join(5)
        return code


@contextmanager
def running(repo: Path | str, state: Path, key: Path, *extra: str) -> Iterator[Serve]:
    """`palisade serve` for the duration of the block; a bad exit or a traceback fails the test."""
    s = Serve(repo, state, key, *extra)
    try:
        yield s
    finally:
        code = s.stop()
        assert code == 0, s.log
        assert "Traceback" not in s.log, s.log


def heartbeat(url: str, sensor: str, **body: Any) -> None:
    """One agent report, as an agent posts it; the server must store it (204)."""
    r = httpx.post(f"{url}/v1/agents/{sensor}/heartbeat", json=body, timeout=10)
    assert r.status_code == 204, r.text

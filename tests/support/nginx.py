"""Debian's nginx serving a directory on a loopback port, for the static bundle-source tests.

`Nginx` writes its own configuration (prefix, pid, temp and log paths under the test's directory,
`daemon off`, one worker, an access log that records each request's status and If-None-Match), starts
`nginx` in the foreground and waits until the port answers; `stop` ends it (SIGQUIT, then SIGKILL)
and the `nginx_serving` fixture does so on the way out. nginx cannot listen on port 0, so a free port
is picked and the start retried on another if a racing process took it. Without nginx the tests skip,
and fail under CI=true (`make kernel-tools` installs it).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)

_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format tagged '$request_method $request_uri $status inm=$http_if_none_match ims=$http_if_modified_since';
    access_log {prefix}/access.log tagged;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ try_files $uri =404; }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """One nginx master (and its worker) serving `root` on 127.0.0.1, configured under `prefix`."""

    def __init__(self, root: Path, prefix: Path, *, attempts: int = 5) -> None:
        if NGINX is None:
            raise FileNotFoundError("nginx is not installed")
        self.root, self.prefix = root, prefix
        prefix.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            self.port = _free_port()
            (prefix / "nginx.conf").write_text(_CONF.format(prefix=prefix, port=self.port, root=root))
            with (prefix / "stderr.log").open("ab") as err:
                # a session of its own, so the master and its worker can be killed together if need be
                self.proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                                             stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            if self._wait_listening(10):
                self.url = f"http://127.0.0.1:{self.port}"
                return
            self.stop()
            if "Address already in use" not in self.errors:
                break
        raise AssertionError(f"nginx did not start:\n{self.errors}")

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    @property
    def errors(self) -> str:
        logs = (self.prefix / "stderr.log", self.prefix / "error.log")
        return "".join(p.read_text(errors="replace") for p in logs if p.exists())

    def access_log(self) -> list[str]:
        log = self.prefix / "access.log"
        return log.read_text().splitlines() if log.exists() else []

    def wait_access(self, cond: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first access-log line that satisfies `cond` (nginx writes a line once a request is answered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.access_log():
                if cond(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {what} in nginx's access log:\n" + "\n".join(self.access_log()[-30:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: the worker finishes, master removes the pid file
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def nginx_serving(tmp_path: Path) -> Iterator[Callable[[Path], Nginx]]:
    """`start(root)`: nginx serving `root`; every one started is stopped after the test."""
    if NGINX is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (scripts/kernel-tools.sh installs it); CI must run this test")
        pytest.skip("nginx is not installed (make kernel-tools)")
    started: list[Nginx] = []

    def start(root: Path) -> Nginx:
        n = Nginx(root, tmp_path / f"nginx-{len(started)}")
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()

"""The Events and Fleet pages with an agent running the real eBPF engine: a forbidden exec in the workload's
cgroup is killed by the kernel, the agent reports it with its next heartbeat, and the open Events page shows
it, highlighted as a kill, without being reloaded. The sensor is the canary (example-repo enforces
web-lockdown there from the first commit); its pins go to a private bpffs directory, removed at the end."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf import syscall
from bpf.engine import remove_all
from support import cgroups
from support.browser import Browser, browser  # noqa: F401  (the module-scoped fixture)
from support.consolefleet import ConsoleFleet

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

FORBIDDEN = ["/bin/sh", "-c", "echo ran"]
FORBIDDEN_REAL = os.path.realpath(FORBIDDEN[0])  # what the kernel reports running (Debian: /usr/bin/dash)


def _run_in(cg: Path, argv: list[str]) -> int:
    def enter() -> None:
        (cg / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.run(argv, preexec_fn=enter, capture_output=True, timeout=30).returncode


@pytest.fixture()
def workload(require_kernel: None) -> Iterator[tuple[Path, Path]]:
    cg = syscall.cgroup2_root() / f"palisade-console-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    pins = Path("/sys/fs/bpf") / f"palisade-console-test-{uuid.uuid4().hex[:8]}"
    try:
        yield cg, pins
    finally:
        from agent import sensor

        remove_all(pins)
        sensor.remove_pins(pins)
        cgroups.remove(cg)


def test_a_kernel_kill_shows_on_the_open_events_page(tmp_path: Path, workload: tuple[Path, Path],
                                                     browser: Browser) -> None:  # noqa: F811
    cg, pins = workload
    with ConsoleFleet.start(tmp_path) as fleet:
        fleet.add_agent("node-canary-1", {}, engine={
            "workloads": [{"name": "web", "namespace": "default", "labels": {"app": "web"}, "cgroup": str(cg)}],
            "pinRoot": str(pins)})
        fleet.wait_reporting(1, version=1, timeout=90)
        browser.load(fleet.url + "/ui/events?policy=web-exec-allowlist", ready="main#content")
        browser.wait(lambda: browser.text("#live") == "live", 10, "the live stream to open")
        browser.mark()
        deadline = time.monotonic() + 60
        while _run_in(cg, FORBIDDEN) != -signal.SIGKILL:  # the engine enforces once v1 is loaded
            assert time.monotonic() < deadline, "the forbidden exec was never killed"
            time.sleep(0.2)
        browser.wait(lambda: FORBIDDEN_REAL in browser.texts("#events tr.event.kill td.binary code"), 30,
                     "the kill on the open page")
        assert not browser.reloaded()
        row = browser.driver.execute_script(
            "var tr = document.querySelector('#events tr.event.kill');"
            "return [tr.getAttribute('data-sensor'), tr.querySelector('td.action').innerText,"
            " tr.querySelector('td.workload').innerText];")
        assert row[0] == "node-canary-1" and row[1] == "sigkill" and "web" in row[2]
        browser.assert_no_errors("the live events page")
        browser.screenshot("events-kernel-kill")
        # the fleet page agrees with palisade status for the engine-run sensor
        (st,) = fleet.status_json()["fleet"]
        browser.load(fleet.url + "/ui/", ready="#fleet")
        # (policies needing kprobes are refused on this kernel: the sensor may well be degraded, as status says)
        assert browser.text("tr[data-sensor=node-canary-1] td.health") == st["health"]
        assert browser.attrs("tr[data-sensor=node-canary-1] td.refused", "data-count") == [str(st["refused"])]
        assert browser.text("tr[data-sensor=node-canary-1] td.version") == f"v{st['version']}"
        assert browser.text("tr[data-sensor=node-canary-1] td.groups") == "canary"

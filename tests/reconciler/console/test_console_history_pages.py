"""The Units, Rollouts, Ledger and Audit pages in a real browser (chromium through Selenium), against a real
`palisade serve` on a reconciler state with history (tests/support/consolestate.py): each page loads without
console errors, shows the numbers `palisade readiness / impact / rollout status / ledger / audit -o json`
give for the same state, renders the XSS probe (a commit message, an observed binary) as inert text, updates
live after a publish, and its screenshot is not blank. One server and one browser for the module."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.browser import Browser, browser  # noqa: F401  (the module-scoped fixture)
from support.consolestate import XSS, ConsoleState
from support.policyrepo import DEV
from support.serve import Serve

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConsoleState, Serve]]:
    s = ConsoleState.build(tmp_path_factory.mktemp("history"))
    server = Serve(s.repo.path, s.state, s.key)
    try:
        yield s, server
    finally:
        code = server.stop()
        assert code == 0, server.log
        assert "Traceback" not in server.log, server.log


def _cli(*argv: str) -> Any:
    """A palisade command's JSON, as an operator runs it beside the server."""
    out = subprocess.run([sys.executable, "-m", "reconciler.cli", *argv, "-o", "json"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


_CELLS = """return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr')).map(function (tr) {
  return Array.from(tr.children).map(function (td) { return td.innerText.trim(); }); });"""


def _cells(b: Browser, table: str) -> list[list[str]]:
    return list(b.driver.execute_script(_CELLS, table))


def _inert(b: Browser) -> None:
    assert b.count("main img") == 0
    time.sleep(0.3)  # an onerror would fire as soon as the (absent) image failed to load
    assert b.alerts() == []


def test_units_and_a_units_readiness_and_impact(served: tuple[ConsoleState, Serve],
                                                browser: Browser) -> None:  # noqa: F811
    s, server = served
    browser.load(server.url + "/ui/units", ready="table.units")
    units = _cli("units", "--repo", str(s.repo.path), "--rev", s.accepted)
    rows = _cells(browser, "table.units")
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (u["name"], "fleet" if not u["scope"] else next(f"{k}:{v}" for k, v in u["scope"].items()), u["state"])
        for u in units]
    browser.screenshot("units")

    where = ["--scope", "group:web", "--repo", str(s.repo.path), "--rev", s.accepted, "--state", str(s.state)]
    browser.driver.find_element("css selector", 'a[href="/ui/units/pack:web-lockdown@group:web"]').click()
    browser.wait(lambda: browser.count("#readiness"), 15, "the unit page")
    browser.assert_no_errors("the unit page")
    ready = _cli("readiness", "pack/web-lockdown", *where)
    assert browser.text(".readiness-class") == ready["readiness"] == "Enforced"
    shown = browser.texts("#readiness li.condition .ctype")
    assert shown == sorted((c["type"] for c in ready["conditions"]),
                           key=lambda t: {"blocking": 0, "caution": 1, "ok": 2}[
                               next(c["severity"] for c in ready["conditions"] if c["type"] == t)])
    impact = _cli("impact", "pack/web-lockdown", *where)
    assert browser.text("#impact .would-act") == str(impact["wouldAct"]) == "25"
    assert [r[:2] for r in _cells(browser, "table.top-binaries")] == \
        [[str(b["count"]), b["binary"]] for b in impact["topBinaries"]]
    assert XSS in browser.text("table.top-binaries")  # the observed binary, as text
    assert browser.count("pre.yaml .y-key") > 5
    assert "approved by Alice Reviewer <alice@example.com>" in browser.text("#last-change")
    _inert(browser)
    browser.screenshot("unit-web-lockdown")

    browser.load(server.url + "/ui/units/rule:no-ptrace-attach@group:web", ready="#impact")
    assert "no data does not mean safe" in browser.text("#impact .nodata")
    assert browser.text(".readiness-class") == _cli("readiness", "rule/no-ptrace-attach", *where)["readiness"]


def test_rollouts_page_shows_rollout_status(served: tuple[ConsoleState, Serve],
                                            browser: Browser) -> None:  # noqa: F811
    s, server = served
    browser.load(server.url + "/ui/rollouts", ready="table.stages")
    doc = _cli("rollout", "status", "--state", str(s.state))
    rows = _cells(browser, "table.stages")
    assert [r[:5] for r in rows] == [[st["name"], f"v{st['pinned']}", str(st["agents"]), str(st["reporting"]),
                                      str(st["atPinned"])] for st in doc["stages"]]
    assert [r[6] for r in rows] == [st["state"] for st in doc["stages"]]
    assert browser.text(".rollout-state").startswith(f"{doc['state']} v{doc['target']}")
    assert browser.count("svg.versions polyline") == 3 and browser.count("svg.versions line.publish") == 3
    assert browser.count("table.history tbody tr") == len(_cli("rollout", "history", "--state", str(s.state)))
    browser.screenshot("rollouts")


def test_ledger_and_audit_pages_and_the_probe(served: tuple[ConsoleState, Serve],
                                              browser: Browser) -> None:  # noqa: F811
    s, server = served
    browser.load(server.url + "/ui/ledger", ready="table.ledger")
    ledger = _cli("ledger", "--state", str(s.state))
    rows = _cells(browser, "table.ledger")
    assert [(r[1], r[3], r[4]) for r in rows] == [(e["commit"][:12], e["result"], f"v{e['version']}"
                                                   if e["version"] else "") for e in ledger]
    assert rows[0][2] == XSS  # the rejected commit's message, as text
    f = ledger[0]["findings"][0]
    assert f"{f['file']}:{f['line']}" in rows[0][7]
    _inert(browser)
    browser.screenshot("ledger")

    browser.load(server.url + "/ui/audit/egress-guard", ready="svg.timeline")
    audit = _cli("audit", "egress-guard", "--state", str(s.state))
    assert browser.count("svg.timeline .lane-label") == len({i["sensor"] for i in audit["sensors"]})
    assert browser.count("svg.timeline rect.period") == len(audit["sensors"])
    assert browser.count("svg.timeline g.step") == len(audit["steps"])
    assert XSS in browser.text("table.rejected") and XSS in browser.text("table.steps")
    _inert(browser)
    browser.screenshot("audit-egress-guard")


def test_the_ledger_updates_live_after_a_publish(served: tuple[ConsoleState, Serve],
                                                 browser: Browser) -> None:  # noqa: F811
    s, server = served
    browser.load(server.url + "/ui/ledger", ready="table.ledger")
    browser.wait(lambda: browser.text("#live") == "live", 10, "the live stream to open")
    before = browser.count("table.ledger tbody tr")
    browser.mark()
    # undo the rejected step and relax a rule: accepted without approval, published as v4
    s.repo.edit("enforcement/egress-guard.yaml", "    - scope: {group: db}\n      state: enforce_ready",
                "    - scope: {group: db}\n      state: observe")
    s.repo.edit("rules/kernel-hardening.yaml", "state: enforce_ready", "state: observe")
    s.repo.git.commit("Relax ptrace attach to observe", author=DEV)
    # the server compiles v4's CO-RE objects first: a second from the host's cache, far longer when cold and busy
    browser.wait(lambda: browser.count("table.ledger tbody tr") == before + 1, 120, "the new row without a reload")
    assert not browser.reloaded()
    assert _cells(browser, "table.ledger")[0][3:5] == ["accepted", "v4"]
    browser.assert_no_errors("the live ledger page")

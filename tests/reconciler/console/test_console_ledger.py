"""The Ledger and Audit pages' view models on a real reconciler state (tests/support/consolestate.py): the
rows `palisade ledger -o json` prints with their findings as file:line, the audit `palisade audit -o json`
answers, drawn as a timeline with a lane per sensor; commit messages are shown as text."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.console.ledger import audit_page, lanes, ledger_page, render_audit, render_ledger, timeline_svg
from reconciler.errors import UsageError
from reconciler.state.statedir import StateView
from support.consolestate import XSS, ConsoleState, console_state

__all__ = ["console_state"]
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    main([*argv, "-o", "json"])
    return json.loads(capsys.readouterr().out)


def test_the_rows_are_palisade_ledgers(console_state: ConsoleState, capsys: pytest.CaptureFixture[str]) -> None:
    page = ledger_page(StateView(console_state.state))
    assert [e.to_json() for e in page.entries] == _cli(capsys, "ledger", "--state", str(console_state.state))
    assert (page.accepted, page.rejected) == (3, 1)
    assert page.messages[console_state.rejected] == XSS
    rejected = page.entries[0]
    assert rejected.commit == console_state.rejected and str(rejected.result) == "rejected"
    html = render_ledger(page)
    f = rejected.findings[0]
    assert f"<code class=\"where\">{f.file}:{f.line}</code>" in html and f.file == "enforcement/egress-guard.yaml"
    assert XSS not in html and html.count(ESCAPED) == 2  # the rejected commit and v2
    assert 'href="/ui/audit/web-lockdown"' in html


def test_the_audit_is_palisade_audits(console_state: ConsoleState, capsys: pytest.CaptureFixture[str]) -> None:
    for subject in ("web-lockdown", "egress-guard"):
        page = audit_page(StateView(console_state.state), subject)
        assert page.audit.to_json() == _cli(capsys, "audit", subject, "--state", str(console_state.state))
    web = audit_page(StateView(console_state.state), "web-lockdown")
    assert [(s.version, s.approvers) for s in web.audit.steps] == [
        (1, ()), (3, ("Alice Reviewer <alice@example.com>",))]
    assert [lane.sensor for lane in web.lanes] == ["node-canary-1", "web-1", "web-2"]
    assert [(i.state, i.stop is None) for i in web.lanes[1].periods] == [("enforce_ready", False), ("enforced", True)]


def test_the_timeline_has_a_lane_per_sensor_and_a_mark_per_change(console_state: ConsoleState) -> None:
    page = audit_page(StateView(console_state.state), "web-lockdown")
    svg = timeline_svg(page)
    assert svg.count('class="lane-label"') == 3
    assert svg.count('<rect class="period') == sum(len(lane.periods) for lane in page.lanes) == 6
    assert svg.count('class="step approved"') == 1 and svg.count('class="step"') == 1
    assert svg.count('class="period state-enforced"') == 3
    assert all(150 <= float(x) <= 880 for x in re.findall(r' x="([-\d.]+)"', svg) if float(x) != 142)


def test_a_rejected_commits_message_is_text(console_state: ConsoleState) -> None:
    page = audit_page(StateView(console_state.state), "egress-guard")
    assert [r["subject"] for r in page.audit.rejected] == [XSS]
    assert page.audit.steps[1].subject == XSS
    html = render_audit(page)
    assert XSS not in html and ESCAPED in html
    svg = timeline_svg(page)
    assert svg.count('class="rejected-commit"') == 1 and ESCAPED in svg  # marked on the timeline too


def test_an_unknown_subject(console_state: ConsoleState) -> None:
    with pytest.raises(UsageError, match="not a pack, rule or policy"):
        audit_page(StateView(console_state.state), "nothing-like-it")


def test_a_large_fleet_shares_lanes_by_history(console_state: ConsoleState) -> None:
    page = audit_page(StateView(console_state.state), "web-lockdown")
    shared = lanes(page.audit.sensors, most=1)
    # web-1 and web-2 ran the same states over the same times; the canary enforced earlier
    assert [(lane.label, lane.others) for lane in shared] == [("node-canary-1", ()), ("web-1 +1", ("web-2",))]
    assert 'web-1 +1<title>web-1, web-2</title>' in timeline_svg(replace(page, lanes=shared))

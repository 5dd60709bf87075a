"""The Rollouts page's view model on a real reconciler state (tests/support/consolestate.py): the stages,
pins, gates and bake that `palisade rollout status --state -o json` prints, the ledger's rollout rows, and
the plot of sensors per version drawn from the controller's record."""
from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import replace
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.console.rollouts import Gate, plot_svg, render_rollouts, rollout_page, version_plot
from reconciler.rollout.db import SensorVersion
from reconciler.state.statedir import StateView
from support.consolestate import XSS, ConsoleState, console_state

__all__ = ["console_state"]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    main([*argv, "-o", "json"])
    return json.loads(capsys.readouterr().out)


def test_the_status_is_rollout_status(console_state: ConsoleState, capsys: pytest.CaptureFixture[str]) -> None:
    page = rollout_page(StateView(console_state.state))
    doc = _cli(capsys, "rollout", "status", "--state", str(console_state.state))
    assert (page.state, page.target, page.stable, page.started, page.halt_reason) == \
        (doc["state"], doc["target"], doc["stable"], doc["started"], doc["haltReason"]) == \
        ("progressing", 3, 2, doc["started"], None)
    assert dict(page.pins) == doc["pins"]
    assert page.change == "tightening, stage by stage" and list(page.change_reasons) == \
        doc["classification"]["reasons"]
    assert len(page.stages) == len(doc["stages"]) == 3
    for mine, theirs in zip(page.stages, doc["stages"], strict=True):
        assert (mine.name, mine.pinned, mine.agents, mine.reporting, mine.at_pinned, mine.state) == \
            (theirs["name"], theirs["pinned"], theirs["agents"], theirs["reporting"], theirs["atPinned"],
             theirs["state"])
        assert [(g.name, g.value, g.limit, g.ok) for g in mine.gates] == \
            [(g["gate"], g["value"], g["limit"], g["ok"]) for g in theirs["gates"]]
        if theirs["bakeLeftSeconds"] is None:
            assert mine.bake_left is None
        else:  # the two reads are a moment apart
            assert mine.bake_left is not None and abs(mine.bake_left - theirs["bakeLeftSeconds"]) <= 5
    web = page.stages[1]
    assert (web.name, web.state, web.pinned) == ("web", "baking", 3) and 7000 < (web.bake_left or 0) <= 7200
    html = render_rollouts(page)
    assert "maxEnforcementActionsPerNode 0 ≤ 20" in html and "minReportingRatio 1 ≥ 0.90" in html


def test_history_is_the_ledgers_rollout_rows(console_state: ConsoleState,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    page = rollout_page(StateView(console_state.state))
    rows = _cli(capsys, "rollout", "history", "--state", str(console_state.state))
    assert [(h.kind, h.subject, h.actor) for h in page.history] == [(r["kind"], r["subject"], r["actor"])
                                                                      for r in rows]
    assert [h.kind for h in page.history][:2] == ["rollout-promoted", "rollout-started"]


def test_the_plot_counts_sensors_per_version(console_state: ConsoleState) -> None:
    page = rollout_page(StateView(console_state.state))
    now = {s.version: s.points[-1][1] for s in page.plot.series}
    assert now == {1: 0, 2: 1, 3: 3}  # db-1 still runs v2; the canary, web-1 and web-2 run v3
    assert [v for v, _ in page.plot.published] == [1, 2, 3] and page.plot.most == 4
    svg = plot_svg(page.plot)
    assert svg.count("<polyline") == 3 and svg.count('class="publish"') == 3
    assert all(0 <= float(x) <= 720 for x in re.findall(r'x1="([-\d.]+)"', svg))


def test_a_step_line_from_runs() -> None:
    t0 = _dt.datetime(2026, 11, 21, 12, 0, tzinfo=_dt.UTC)

    def at(m: int) -> _dt.datetime:
        return t0 + _dt.timedelta(minutes=m)

    runs = [SensorVersion("a", 1, at(0), at(10), 0, 0), SensorVersion("b", 1, at(0), at(20), 0, 0),
            SensorVersion("a", 2, at(10), None, 0, 0), SensorVersion("b", 2, at(20), None, 0, 0)]
    plot = version_plot(runs, [(1, at(0)), (2, at(9))], at(30))
    assert [(s.version, s.points) for s in plot.series] == [
        (1, ((at(0), 2), (at(10), 1), (at(20), 0))),
        (2, ((at(0), 0), (at(10), 1), (at(20), 2))),
    ]
    empty = plot_svg(version_plot([], [], at(30)))
    assert "no sensor has reported a version yet" in empty


def test_a_halt_and_a_failed_gate_are_shown(console_state: ConsoleState) -> None:
    page = rollout_page(StateView(console_state.state))
    failed = Gate("maxEnforcementActionsPerNode", 9, 5, False, f"node-canary-1: 9 actions ({XSS})")
    halted = replace(page, state="halted", halt_reason=f"canary: gate maxEnforcementActionsPerNode failed: {XSS}",
                     stages=(replace(page.stages[0], gates=(failed,)), *page.stages[1:]))
    html = render_rollouts(halted)
    assert '<p class="halt">HALTED: canary: gate maxEnforcementActionsPerNode failed: &lt;img' in html
    assert '<span class="gate failed" title="node-canary-1: 9 actions (&lt;img' in html
    assert "maxEnforcementActionsPerNode 9 ≤ 5 FAILED" in html and XSS not in html

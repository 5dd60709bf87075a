"""The Units pages' view models on a real reconciler state (tests/support/consolestate.py): the same units,
readiness and impact numbers as `palisade units`, `readiness --state` and `impact --state` print for it, and
the policies' YAML highlighted without changing a character."""
from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.requests import Request

from reconciler.cli import main
from reconciler.console import units
from reconciler.console.ledger import ledger_handler
from reconciler.console.rollouts import rollouts_handler
from reconciler.console.sources import ConsoleSources
from reconciler.console.units import UnknownUnit, render_unit, render_units, unit_detail, units_page
from reconciler.console.yamlview import Kind, highlight, tokens
from reconciler.state.statedir import StateView
from support.consolestate import XSS, ConsoleState, console_state

__all__ = ["console_state"]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    main([*argv, "-o", "json"])
    return json.loads(capsys.readouterr().out)


def test_every_unit_as_palisade_units_lists_it(console_state: ConsoleState,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    page = units_page(StateView(console_state.state))
    assert page.commit == console_state.accepted and page.version == 3
    cli = _cli(capsys, "units", "--repo", str(console_state.repo.path), "--rev", console_state.accepted)
    assert [{"kind": u.key.kind, "name": u.key.name, "scope": u.key.scope.to_json(), "state": str(u.state),
             "appliesTo": u.applies_to, "policies": [p.name for p in u.policies]} for u in page.units] == cli
    html = render_units(page)
    assert 'href="/ui/units/pack:web-lockdown@group:web"' in html and html.count("<tr>") == len(cli) + 1
    assert "<code>baseline-privilege-changes</code>, <code>baseline-process-lifecycle</code>" in html


@pytest.mark.parametrize(("ident", "ref", "scope"), [
    ("pack:web-lockdown@group:web", "pack/web-lockdown", "group:web"),  # enforced, observed would-act
    ("pack:egress-guard@sensor:db-legacy-7", "pack/egress-guard", "sensor:db-legacy-7"),  # nobody reports it
    ("rule:no-ptrace-attach@group:web", "rule/no-ptrace-attach", "group:web"),  # loaded nowhere, no data
])
def test_readiness_and_impact_are_the_clis(console_state: ConsoleState, capsys: pytest.CaptureFixture[str],
                                           ident: str, ref: str, scope: str) -> None:
    s = console_state
    d = unit_detail(StateView(s.state), ident)
    where = ["--repo", str(s.repo.path), "--rev", s.accepted, "--state", str(s.state)]
    ready = _cli(capsys, "readiness", ref, "--scope", scope, *where)
    mine = d.readiness.to_json()
    for key in ("unit", "state", "nextState", "readiness", "entered", "readyAt", "agentsInScope", "loadedOn"):
        assert mine[key] == ready[key], key
    # the window's message counts minutes up to "now": the two calls may straddle a minute
    assert [(c["type"], c["severity"], c["details"]) for c in mine["conditions"]] == \
        [(c["type"], c["severity"], c["details"]) for c in ready["conditions"]]
    assert [c["message"] for c in mine["conditions"] if c["type"] != "ObservationWindow"] == \
        [c["message"] for c in ready["conditions"] if c["type"] != "ObservationWindow"]
    impact = _cli(capsys, "impact", ref, "--scope", scope, *where)
    shown = d.impact.to_json()
    for key in ("policies", "events", "wouldAct", "unknown", "noData", "perSensor", "topBinaries"):
        assert shown[key] == impact[key], key
    assert list(d.agents_in_scope) == impact["agentsInScope"]
    html = render_unit(d)
    assert str(d.readiness.readiness) in html
    if d.impact.no_data:
        assert "no data does not mean safe" in html
    else:
        assert f'<span class="would-act">{d.impact.would_act}</span>' in html


def test_the_probe_binary_is_text(console_state: ConsoleState) -> None:
    d = unit_detail(StateView(console_state.state), "pack:web-lockdown@group:web")
    assert d.impact.top_binaries[0].binary == XSS and d.impact.would_act == 25
    html = render_unit(d)
    assert XSS not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_who_wrote_and_approved_the_last_step(console_state: ConsoleState,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    d = unit_detail(StateView(console_state.state), "pack:web-lockdown@group:web")
    audit = _cli(capsys, "audit", "web-lockdown", "--state", str(console_state.state))
    last = [st for st in audit["steps"] if any(c["scope"] == "group:web" for c in st["changes"])][-1]
    assert d.last_step is not None and d.last_step.to_json() == last
    assert (d.last_step.version, d.last_step.approvers) == (3, ("Alice Reviewer <alice@example.com>",))
    html = render_unit(d)
    assert "approved by <span class=\"approvers\">Alice Reviewer &lt;alice@example.com&gt;</span>" in html
    probe = unit_detail(StateView(console_state.state), "pack:egress-guard@sensor:db-legacy-7")
    assert probe.last_step is not None and probe.last_step.subject == XSS
    assert XSS not in render_unit(probe)


def test_an_unknown_unit(console_state: ConsoleState) -> None:
    with pytest.raises(UnknownUnit, match="no unit 'pack:web-lockdown@group:db'"):
        unit_detail(StateView(console_state.state), "pack:web-lockdown@group:db")


def test_yaml_tokens_keep_every_character(console_state: ConsoleState) -> None:
    page = units_page(StateView(console_state.state))
    texts = [p.yaml for u in page.units for p in u.policies]
    texts.append("a: 'it''s' # note\nb: [1, \"x\", {k: null}]\nc: |\n  <b>block</b>\n  more\nd: -3.5\n---\n")
    for text in texts:
        toks = tokens(text)
        assert ["".join(t.text for t in line) for line in toks] == text.splitlines()
    last = tokens(texts[-1])
    assert [t.kind for t in last[0]] == [Kind.KEY, Kind.PUNCT, Kind.PLAIN, Kind.STRING, Kind.PLAIN, Kind.COMMENT]
    assert Kind.NUMBER in {t.kind for t in last[1]} and Kind.NULL in {t.kind for t in last[1]}
    assert [t.kind for t in last[3]] == [Kind.STRING]  # inside the block scalar
    html = highlight(texts[-1])
    assert '<span class="y-key">a</span>' in html and "&lt;b&gt;block&lt;/b&gt;" in html and "<b>" not in html


def test_a_state_with_nothing_accepted(tmp_path: Any) -> None:
    with pytest.raises(units.NothingAccepted):
        units_page(StateView(tmp_path))
    sources = ConsoleSources(StateView(tmp_path), index=lambda: None)
    request = Request({"type": "http", "method": "GET", "path": "/ui/units", "query_string": b"", "headers": []})
    for handler, says in ((units.units_handler, "has not processed any commit"),
                          (rollouts_handler, "no reconciler state"), (ledger_handler, "has not processed any commit")):
        resp = handler(request, sources)
        assert resp.status_code == 200 and says in bytes(resp.body).decode()

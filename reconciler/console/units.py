"""The Units pages: every pack and rule × scope × state at the last accepted commit (`/ui/units`), and one
unit (`/ui/units/{id}`) with the policies it renders, its readiness and its impact preview.

The view models read what `palisade units`, `palisade readiness --state` and `palisade impact --state`
read — the reconciler's mirror at the last accepted commit, the ledger's acceptances, the fleet's
heartbeats and observations — and compute with the same functions, so the page shows the numbers the
CLI prints for the same state. Everything shown (policy, pack and binary names, sensor ids, YAML) is
text from the repository or the agents, and goes through `el()`.
"""
from __future__ import annotations

import datetime as _dt
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from reconciler.analysis import audit as _audit
from reconciler.analysis import impact as _impact
from reconciler.analysis import readiness as _readiness
from reconciler.console.answer import answer
from reconciler.console.html import Markup, el, join, table
from reconciler.console.layout import html_response, page
from reconciler.console.sources import ConsoleSources
from reconciler.console.yamlview import highlight
from reconciler.errors import PalisadeError, UsageError
from reconciler.findings import has_errors
from reconciler.repository import loader, render, source, summary
from reconciler.repository.model import PolicyRepository, UnitKey
from reconciler.state.fleet import AgentRecord, Fleet, ObservationRow
from reconciler.state.ledger import Ledger
from reconciler.state.statedir import StateView
from wire.bundle import Bundle, format_time
from wire.values import State

#: The impact preview's period, as `palisade impact`'s default (--days 7).
IMPACT_DAYS = 7.0


class UnknownUnit(PalisadeError):
    """The page names a unit that is not on the ladder at the last accepted commit (404)."""


class NothingAccepted(PalisadeError):
    """No commit has been accepted yet: there is no repository state to show."""


@dataclass(frozen=True)
class PolicyView:
    name: str
    sha256: str
    yaml: str


@dataclass(frozen=True)
class UnitView:
    id: str  # the URL path segment of /ui/units/{id}
    key: UnitKey
    state: State
    applies_to: str  # who the scope covers, in words (as `palisade units`)
    policies: tuple[PolicyView, ...]


@dataclass(frozen=True)
class UnitsPage:
    commit: str
    version: int | None
    packs: int
    rules: int
    units: tuple[UnitView, ...]


@dataclass(frozen=True)
class UnitDetail:
    unit: UnitView
    commit: str
    readiness: _readiness.Report
    impact: _impact.Impact
    agents_in_scope: tuple[str, ...]
    last_step: _audit.Step | None  # the last accepted change of it at this scope: who wrote and approved it


def unit_id(key: UnitKey) -> str:
    """`pack:web-lockdown@group:web`, percent-encoded for a path segment."""
    return quote(f"{key.kind}:{key.name}@{key.scope.key}", safe=":@")


@dataclass(frozen=True)
class _Revision:
    commit: str
    version: int | None
    repo: PolicyRepository
    rendered: tuple[render.RenderedPolicy, ...]


_CACHE: OrderedDict[tuple[str, str, _dt.date], _Revision] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _revision(state: StateView, git_repo: Path | None, today: _dt.date) -> _Revision:
    """The repository at the last accepted commit, loaded and rendered (kept per commit: commits never change)."""
    if not state.has_ledger():
        raise NothingAccepted("the reconciler has not processed any commit yet")
    with Ledger.open(state, readonly=True) as ledger:
        last = ledger.last_accepted()
    if last is None:
        raise NothingAccepted("no commit has been accepted yet")
    repo = Path(git_repo) if git_repo is not None else state.mirror
    key = (str(repo), last.commit, today)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    loaded = loader.load(source.from_git(repo, last.commit), today)
    if has_errors(loaded.findings):
        raise NothingAccepted(f"the accepted commit {last.commit[:12]} no longer loads")
    rev = _Revision(last.commit, last.version, loaded.repository, render.render(loaded.repository, today))
    with _CACHE_LOCK:
        _CACHE[key] = rev
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
    return rev


def _units(rev: _Revision) -> tuple[UnitView, ...]:
    by_origin: dict[tuple[str, str, str], list[render.RenderedPolicy]] = {}
    for p in rev.rendered:
        by_origin.setdefault((p.origin_kind, p.origin_name, p.scope.key), []).append(p)
    out = []
    for row in summary.rows(rev.repo, rev.rendered):
        k = row.unit
        mine = by_origin.get((k.kind, k.name, k.scope.key), [])
        out.append(UnitView(unit_id(k), k, row.state, row.sensors,
                            tuple(PolicyView(p.name, p.sha256, p.yaml) for p in sorted(mine, key=lambda p: p.name))))
    return tuple(out)


def units_page(state: StateView, *, git_repo: Path | None = None, now: _dt.datetime | None = None) -> UnitsPage:
    """Every unit on the ladder at the last accepted commit, as `palisade units --rev COMMIT` lists them."""
    now = now or _dt.datetime.now(_dt.UTC)
    rev = _revision(state, git_repo, now.date())
    return UnitsPage(rev.commit, rev.version, len(rev.repo.packs), len(rev.repo.rules), _units(rev))


def unit_detail(state: StateView, ident: str, *, git_repo: Path | None = None, now: _dt.datetime | None = None,
                fleet: Fleet | None = None, agents: Callable[[], Sequence[AgentRecord]] | None = None,
                bundle: Callable[[int], Bundle | None] | None = None) -> UnitDetail:
    """One unit with its readiness (as `palisade readiness --state`) and impact preview (as `palisade impact
    --state`, its default 7 days). The console passes its open `fleet` and cached `agents()`."""
    from reconciler.checks import history

    now = now or _dt.datetime.now(_dt.UTC)
    rev = _revision(state, git_repo, now.date())
    wanted = unquote(ident)
    unit = next((u for u in _units(rev) if unquote(u.id) == wanted), None)
    if unit is None:
        raise UnknownUnit(f"no unit {wanted!r} at the last accepted commit {rev.commit[:12]}")
    config = rev.repo.config
    if config is None:
        raise NothingAccepted(f"the accepted commit {rev.commit[:12]} has no palisade.yaml")
    repo = Path(git_repo) if git_repo is not None else state.mirror
    with Ledger.open(state, readonly=True) as ledger:
        accepted = ledger.acceptances()
    entered = history.entered_at(repo, rev.commit, {unit.key: unit.state}, accepted=accepted)[unit.key]
    policies = _readiness.unit_policies(rev.repo, unit.key, now.date())
    since = now - _dt.timedelta(days=IMPACT_DAYS)
    # two queries, as the two commands make them: a query sums each binary's rows over its own period
    scoped_agents, rows, recent = _fleet(state, fleet, agents, tuple(policies), (entered, since))
    pack = rev.repo.pack(unit.key.name) if unit.key.kind == "pack" else None
    report = _readiness.assess(
        unit.key, unit.state, entered=entered, min_observation=config.min_observation, now=now,
        policies=policies, agents=scoped_agents, groups=rev.repo.groups, observations=rows,
        enforcement_capable=pack.enforcement_capable if pack is not None else True)
    sensors = [a.id for a in scoped_agents if _readiness.in_scope(unit.key.scope, a, rev.repo.groups)]
    effects = {name: _impact.policy_effect(doc) for name, doc in policies.items()}
    preview = _impact.preview(unit.key, effects, recent, since=since, until=now + _dt.timedelta(seconds=1),
                              sensors=sensors)
    return UnitDetail(unit, rev.commit, report, preview, tuple(sensors), _last_step(state, unit.key, bundle, agents))


def _last_step(state: StateView, key: UnitKey, bundle: Callable[[int], Bundle | None] | None,
               agents: Callable[[], Sequence[AgentRecord]] | None) -> _audit.Step | None:
    """The newest change `palisade audit NAME` lists for the unit at its scope."""
    try:
        a = _audit.gather(state, key.name, bundle=bundle, agents=agents)
    except UsageError:  # no published bundle carries it
        return None
    return next((s for s in reversed(a.steps) if any(c.scope == key.scope.key for c in s.changes)), None)


def _fleet(state: StateView, fleet: Fleet | None, agents: Callable[[], Sequence[AgentRecord]] | None,
           policies: tuple[str, ...], since: tuple[_dt.datetime, _dt.datetime]
           ) -> tuple[Sequence[AgentRecord], list[ObservationRow], list[ObservationRow]]:
    """Agents, and the observations of `policies` from each of two times on (the queries `palisade readiness`
    and `palisade impact` make)."""
    if fleet is None and not state.has_fleet():
        return [], [], []
    f = fleet if fleet is not None else Fleet.open(state)
    try:
        first, second = (f.query(policies=policies, since=t, limit=100_000) for t in since)
        return (agents() if agents is not None else f.agents()), first, second
    finally:
        if fleet is None:
            f.close()


# ---------------------------------------------------------------------------
# Rendering


_STATE_CLASS = {State.OBSERVE: "state-observe", State.ENFORCE_READY: "state-ready", State.ENFORCED: "state-enforced"}


def _state_badge(state: State) -> Markup:
    return el("span", {"class": f"badge {_STATE_CLASS.get(state, '')}"}, str(state))


def render_units(page: UnitsPage) -> Markup:
    rows = [[el("a", {"href": f"/ui/units/{u.id}"}, u.key.name), u.key.kind, u.key.scope.key, _state_badge(u.state),
             u.applies_to, join([el("code", None, p.name) for p in u.policies], ", ") if u.policies else "—"]
            for u in page.units]
    head = el("p", {"class": "summary"},
              f"{len(page.units)} unit(s) from {page.packs} pack(s) and {page.rules} rule(s) at the last accepted "
              f"commit ", el("code", None, page.commit[:12]),
              f" (bundle v{page.version})" if page.version is not None else "")
    return join([head, table(["Unit", "Kind", "Scope", "State", "Applies to", "Policies"], rows, class_="grid units")])


_SEVERITY_CLASS = {"blocking": "sev-blocking", "caution": "sev-caution", "ok": "sev-ok"}
_ORDER = {"blocking": 0, "caution": 1, "ok": 2}


def _readiness_panel(r: _readiness.Report) -> Markup:
    step = f"{r.state} → {r.next_state}" if r.next_state is not None else str(r.state)
    items = []
    for c in sorted(r.conditions, key=lambda c: _ORDER[str(c.severity)]):
        details = el("ul", {"class": "details"}, *[el("li", None, d) for d in c.details]) if c.details else ""
        items.append(el("li", {"class": f"condition {_SEVERITY_CLASS[str(c.severity)]}"},
                        el("span", {"class": "severity"}, str(c.severity)), " ",
                        el("strong", {"class": "ctype"}, c.type), ": ",
                        el("span", {"class": "cmessage"}, c.message), details))
    return el("section", {"class": "panel readiness", "id": "readiness"},
              el("h2", None, "Readiness"),
              el("p", None, el("span", {"class": f"readiness-class rc-{r.readiness}"}, str(r.readiness)), " ",
                 step, "; in this state since ", format_time(r.entered), ", window ends ", format_time(r.ready_at)),
              el("p", None, f"{len(r.loaded_on)} of {len(r.agents_in_scope)} agent(s) in scope have it loaded"),
              el("ul", {"class": "conditions"}, *items))


def _impact_panel(imp: _impact.Impact) -> Markup:
    head = el("h2", None, "Impact preview")
    period = el("p", {"class": "period"}, f"{format_time(imp.since)} .. {format_time(imp.until)}, policies ",
                ", ".join(imp.policies) or "(none)")
    if imp.no_data:
        return el("section", {"class": "panel impact", "id": "impact"}, head, period,
                  el("p", {"class": "nodata"}, "No data — no data does not mean safe. ", _impact.NO_DATA))
    parts = [head, period,
             el("p", {"class": "totals"},
                el("span", {"class": "events"}, str(imp.events)), " event(s) observed; ",
                el("span", {"class": "would-act"}, str(imp.would_act)), " would have been acted on if enforced",
                f"; {imp.unknown} of unknown outcome" if imp.unknown else ""),
             el("h3", None, "Per sensor"),
             table(["Sensor", "Events", "Would act", "Unknown"],
                   [[s.sensor, str(s.events), str(s.would_act), str(s.unknown)] for s in imp.per_sensor],
                   class_="grid compact per-sensor")]
    parts.append(el("h3", None, "Top binaries that would have been acted on"))
    if imp.top_binaries:
        parts.append(table(["Count", "Binary", "Sensors", "Workloads"],
                           [[str(b.count), el("code", None, b.binary), ", ".join(b.sensors), ", ".join(b.workloads)]
                            for b in imp.top_binaries], class_="grid compact top-binaries"))
    else:
        parts.append(el("p", None, "nothing observed would have been acted on"))
    if imp.unknown_binaries:
        parts.append(el("h3", None, "Binaries whose outcome is unknown"))
        parts.append(table(["Count", "Binary"], [[str(b.count), el("code", None, b.binary)]
                                                 for b in imp.unknown_binaries],
                           class_="grid compact unknown-binaries"))
    return el("section", {"class": "panel impact", "id": "impact"}, *parts)


def _last_change(s: _audit.Step | None) -> Markup:
    if s is None:
        return el("p", {"class": "last-change"}, "No published bundle has carried it yet.")
    return el("p", {"class": "last-change", "id": "last-change"}, "Last change: ",
              el("strong", None, f"v{s.version}"), " ", el("code", {"title": s.commit}, s.commit[:12]), " ",
              el("span", {"class": "subject"}, s.subject), " — by ", el("span", {"class": "author"}, s.author),
              "; approved by ", el("span", {"class": "approvers"}, ", ".join(s.approvers) or "nobody"),
              f" ({format_time(s.committed)})" if s.committed else "")


def render_unit(d: UnitDetail) -> Markup:
    u = d.unit
    policies = [el("section", {"class": "policy"},
                   el("h3", None, el("code", None, p.name), " ", el("span", {"class": "sha"}, p.sha256[:12])),
                   highlight(p.yaml)) for p in u.policies]
    return join([
        el("p", {"class": "crumbs"}, el("a", {"href": "/ui/units"}, "Units"), " / ", u.key.kind),
        el("p", {"class": "unit-head"}, el("strong", None, u.key.kind, " ", u.key.name), " at ",
           el("code", None, u.key.scope.key), " ", _state_badge(u.state)),
        el("p", None, "Applies to ", u.applies_to, "; audit trail: ",
           el("a", {"href": f"/ui/audit/{quote(u.key.name, safe='')}"}, "who changed and approved it")),
        _last_change(d.last_step),
        el("div", {"class": "panels"}, _readiness_panel(d.readiness), _impact_panel(d.impact)),
        el("h2", None, "Rendered policies"),
        join(policies) if policies else el("p", None, "it renders no policy"),
    ])


# ---------------------------------------------------------------------------
# Pages


def units_handler(request: Request, sources: ConsoleSources) -> Response:
    """/ui/units"""
    return answer("Units", "Units", lambda: render_units(units_page(sources.state, now=sources.now())),
                  NothingAccepted)


def unit_handler(request: Request, sources: ConsoleSources) -> Response:
    """/ui/units/{id}"""
    ident = str(request.path_params["id"])
    try:
        detail = unit_detail(sources.state, ident, now=sources.now(),
                             fleet=sources.fleet() if sources.state.has_fleet() else None, agents=sources.agents,
                             bundle=sources.bundle)
    except UnknownUnit as e:
        raise HTTPException(404, str(e)) from None
    except NothingAccepted as e:
        return html_response(page("Unit", "Units", el("p", {"class": "empty"}, str(e))))
    return html_response(page(f"{detail.unit.key.kind} {detail.unit.key.name}", "Units", render_unit(detail)))

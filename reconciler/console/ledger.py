"""The Ledger page (`/ui/ledger`): every commit the reconciler processed, accepted or rejected, with its
findings as file:line; and a unit's audit trail (`/ui/audit/{unit}`): the changes that carried it, who
wrote and who approved each, and when each sensor started and stopped enforcing it at each state, drawn
as a timeline (one lane per sensor, marks for commits and approvals) above the same facts as tables.

The ledger rows are `palisade ledger`'s (`Ledger.entries`); the audit is `palisade audit`'s
(`reconciler.analysis.audit.gather`). Commit subjects, authors and approvers are whatever was written
in git: all of it goes through `el()`.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from reconciler.analysis import audit as _audit
from reconciler.console.html import Markup, el, join, table
from reconciler.console.layout import html_response, page
from reconciler.console.sources import ConsoleSources
from reconciler.console.timeaxis import TimeAxis
from reconciler.errors import StateError, UsageError
from reconciler.findings import Finding
from reconciler.repository.git import Git
from reconciler.state.ledger import Ledger, LedgerEntry
from reconciler.state.statedir import StateView
from wire.bundle import format_time, parse_time

LEDGER_ROWS = 200
#: More sensors than this on an audit timeline share lanes by identical history.
MAX_LANES = 50


@dataclass(frozen=True)
class LedgerPage:
    entries: tuple[LedgerEntry, ...]  # newest first
    messages: Mapping[str, str]  # commit -> subject line, from the reconciler's mirror (empty if unreadable)
    accepted: int
    rejected: int
    subjects: tuple[str, ...]  # packs and rules of the published bundles, for links to their audit


@dataclass(frozen=True)
class Lane:
    """One row of the timeline: a sensor's enforcement periods, earliest first; in a large fleet, the sensors
    whose periods are all the same share a row (`others` beside the first)."""

    sensor: str
    periods: tuple[_audit.Interval, ...]
    others: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.sensor + (f" +{len(self.others)}" if self.others else "")


@dataclass(frozen=True)
class AuditPage:
    audit: _audit.Audit
    lanes: tuple[Lane, ...]
    now: _dt.datetime


def ledger_page(state: StateView, *, limit: int = LEDGER_ROWS) -> LedgerPage:
    """The newest `limit` processed commits (as `palisade ledger --limit`) and the totals over all of them."""
    with Ledger.open(state, readonly=True) as ledger:
        entries = ledger.entries()
    last = next((e for e in entries if str(e.result) == "accepted" and e.version is not None), None)
    subjects: tuple[str, ...] = ()
    if last is not None and last.version is not None:
        subjects = _origins(state, last.version)
    shown = tuple(entries[:limit])
    return LedgerPage(shown, _messages(state, [e.commit for e in shown]),
                      sum(str(e.result) == "accepted" for e in entries),
                      sum(str(e.result) == "rejected" for e in entries), subjects)


def _messages(state: StateView, commits: list[str]) -> dict[str, str]:
    """Each commit's subject line, in one `git log` over the mirror."""
    if not commits or not (state.mirror / "HEAD").exists():
        return {}
    out = Git(state.mirror).try_text("log", "--no-walk=unsorted", "--format=%H %s", "--stdin",
                                     stdin="\n".join(dict.fromkeys(commits)))
    pairs = (line.split(" ", 1) for line in (out or "").splitlines())
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


def _origins(state: StateView, version: int) -> tuple[str, ...]:
    from wire.bundle import parse_bundle

    try:
        bundle = parse_bundle(state.store.bundle(version).read_bytes())
    except (OSError, ValueError):
        return ()
    return tuple(sorted({p.origin.name for p in bundle.policies}))


def audit_page(state: StateView, subject: str, *, now: _dt.datetime | None = None,
               sources: ConsoleSources | None = None) -> AuditPage:
    """`palisade audit SUBJECT --state` as a page; a UsageError for an unknown subject (404). With the
    console's `sources`, bundles and sensors come from its caches."""
    a = _audit.gather(state, subject, bundle=sources.bundle if sources else None,
                      agents=sources.agents if sources else None)
    return AuditPage(a, lanes(a.sensors), now or _dt.datetime.now(_dt.UTC))


def lanes(intervals: Sequence[_audit.Interval], most: int = MAX_LANES) -> tuple[Lane, ...]:
    """A lane per sensor; past `most` sensors, one per distinct history (what each policy ran at, when)."""
    by_sensor: dict[str, list[_audit.Interval]] = {}
    for i in intervals:
        by_sensor.setdefault(i.sensor, []).append(i)
    each = [Lane(s, tuple(sorted(p, key=lambda i: i.start))) for s, p in sorted(by_sensor.items())]
    if len(each) <= most:
        return tuple(each)
    shared: dict[tuple[tuple[str, str, _dt.datetime, _dt.datetime | None], ...], list[Lane]] = {}
    for lane in each:
        shared.setdefault(tuple((i.policy, i.state, i.start, i.stop) for i in lane.periods), []).append(lane)
    return tuple(Lane(g[0].sensor, g[0].periods, tuple(x.sensor for x in g[1:])) for g in shared.values())


# ---------------------------------------------------------------------------
# Rendering


def _finding(f: Finding) -> Markup:
    return el("li", {"class": f"finding finding-{f.severity}"}, el("code", {"class": "where"}, f"{f.file}:{f.line}"),
              " ", el("span", {"class": "code"}, f"{f.severity}[{f.code}]"), " ", el("span", {"class": "message"},
                                                                                   f.message))


def render_ledger(page: LedgerPage) -> Markup:
    rows = []
    for e in page.entries:
        findings = el("ul", {"class": "findings"}, *[_finding(f) for f in e.findings]) if e.findings else "—"
        rows.append([format_time(e.processed), el("code", {"title": e.commit}, e.commit[:12]),
                     el("span", {"class": "message"}, page.messages.get(e.commit, "")),
                     el("span", {"class": f"badge result-{e.result}"}, str(e.result)),
                     "" if e.version is None else f"v{e.version}", e.author, ", ".join(e.approvers) or "—", findings])
    links = el("p", {"class": "subjects"}, "Audit trails: ",
               *[el("a", {"href": f"/ui/audit/{quote(s, safe='')}", "class": "subject"}, s) for s in page.subjects])
    return join([el("p", {"class": "summary"}, f"{page.accepted} accepted, {page.rejected} rejected commit(s)"),
                 links if page.subjects else "",
                 table(["Processed", "Commit", "Message", "Result", "Version", "Author", "Approvers", "Findings"], rows,
                       class_="grid ledger") if rows else el("p", None, "the ledger is empty")])


_LANE, _TOP, _LEFT, _RIGHT, _W = 28, 48, 150, 880, 900


def timeline_svg(page: AuditPage) -> Markup:
    """Lanes per sensor with its enforcement periods coloured by state; above them, a mark per change
    (filled when a reviewer approved it)."""
    a = page.audit
    starts = [i.start for i in a.sensors]
    committed = [s.committed for s in a.steps if s.committed is not None]
    # years of history before any sensor reported would squeeze the lanes: the axis begins with them, and
    # older changes sit on its left edge
    times = starts + [t for t in committed if t >= min(starts)] if starts else committed
    axis = TimeAxis.spanning(times, page.now, _LEFT, _RIGHT)
    bottom = _TOP + _LANE * max(len(page.lanes), 1)
    parts: list[Markup] = [axis.draw(_TOP - 10, bottom)]
    for s in a.steps:
        if s.committed is None:
            continue
        x = axis.x(s.committed)
        approved = bool(s.approvers)
        title = (f"v{s.version} {s.commit[:12]} {s.subject} — by {s.author}; approved by "
                 f"{', '.join(s.approvers) or 'none'}; " + "; ".join(c.text() for c in s.changes))
        parts.append(el("g", {"class": "step approved" if approved else "step"},
                        el("title", None, title),
                        el("line", {"class": "step-line", "x1": x, "x2": x, "y1": _TOP - 10, "y2": bottom}),
                        el("circle", {"class": "step-mark", "cx": x, "cy": _TOP - 18, "r": 6}),
                        el("text", {"class": "step-label", "x": x, "y": _TOP - 28, "text-anchor": "middle"},
                           f"v{s.version}")))
    for r in a.rejected:
        if not r.get("committed"):
            continue
        x = axis.x(parse_time(str(r["committed"])))
        parts.append(el("g", {"class": "rejected-commit"},
                        el("title", None, f"rejected {str(r['commit'])[:12]} {r['subject']} — by {r['author']}: "
                                          f"{r.get('finding') or ''}"),
                        el("line", {"class": "rejected-line", "x1": x, "x2": x, "y1": _TOP - 10, "y2": bottom}),
                        el("text", {"class": "rejected-mark", "x": x, "y": _TOP - 14, "text-anchor": "middle"}, "✕")))
    for n, lane in enumerate(page.lanes):
        y = _TOP + _LANE * n
        parts.append(el("text", {"class": "lane-label", "x": _LEFT - 8, "y": y + _LANE / 2 + 4, "text-anchor": "end"},
                        lane.label,
                        el("title", None, ", ".join((lane.sensor, *lane.others[:30]))
                           + (f" and {len(lane.others) - 30} more" if len(lane.others) > 30 else ""))))
        parts.append(el("line", {"class": "lane", "x1": _LEFT, "x2": _RIGHT, "y1": y + _LANE, "y2": y + _LANE}))
        for i in lane.periods:
            x1, x2 = axis.x(i.start), axis.x(i.stop or page.now)
            stop = format_time(i.stop) if i.stop else "now"
            parts.append(el("rect", {"class": f"period state-{i.state}", "x": x1, "y": y + 5,
                                     "width": max(round(x2 - x1, 1), 2.0), "height": _LANE - 10},
                            el("title", None, f"{lane.label}: {i.policy} {i.state} {format_time(i.start)} → {stop}")))
    if not page.lanes:
        parts.append(el("text", {"class": "empty", "x": (_LEFT + _RIGHT) / 2, "y": _TOP + _LANE / 2 + 4,
                                 "text-anchor": "middle"}, "no sensor reported running it"))
    for n, state in enumerate(("observe", "enforce_ready", "enforced")):
        x = _LEFT + 130 * n
        parts.append(el("rect", {"class": f"swatch state-{state}", "x": x, "y": bottom + 24, "width": 12,
                                 "height": 10}))
        parts.append(el("text", {"class": "legend", "x": x + 16, "y": bottom + 33}, state))
    height = bottom + 44
    return el("svg", {"class": "timeline", "viewBox": f"0 0 {_W} {height}", "role": "img",
                      "aria-label": "when each sensor enforced it, and the changes", "xmlns": "http://www.w3.org/2000/svg"},
              *parts)


def render_audit(page: AuditPage) -> Markup:
    a = page.audit
    steps = table(["Version", "Commit", "Committed", "Subject", "Author", "Approved by", "Changes"],
                  [[f"v{s.version}", el("code", {"title": s.commit}, s.commit[:12]),
                    format_time(s.committed) if s.committed else "?", s.subject, s.author,
                    ", ".join(s.approvers) or "none",
                    el("ul", {"class": "changes"}, *[el("li", None, c.text()) for c in s.changes])] for s in a.steps],
                  class_="grid steps")
    periods = table(["Sensor", "Policy", "State", "Start", "Stop", "Versions"],
                    [[i.sensor, i.policy, el("span", {"class": f"badge state-{i.state}"}, i.state),
                      format_time(i.start), format_time(i.stop) if i.stop else "now",
                      ", ".join(f"v{v}" for v in i.versions)] for i in a.sensors], class_="grid compact periods")
    parts = [el("p", {"class": "crumbs"}, el("a", {"href": "/ui/ledger"}, "Ledger"), " / audit"),
             el("p", {"class": "summary"}, f"{len(a.steps)} change(s), carried by ",
                str(len(a.versions)), " bundle version(s), ", str(len({i.sensor for i in a.sensors})),
                " sensor(s) ran it"),
             timeline_svg(page),
             el("h2", None, "Changes"), steps if a.steps else el("p", None, "no change"),
             el("h2", None, "Enforcement by sensor"), periods if a.sensors else el("p", None, "no sensor ran it")]
    if a.rejected:
        parts += [el("h2", None, "Rejected commits"),
                  table(["Commit", "Committed", "Subject", "Author", "Finding"],
                        [[el("code", None, str(r["commit"])[:12]), str(r["committed"] or "?"), str(r["subject"]),
                          str(r["author"]), str(r.get("finding") or "")] for r in a.rejected],
                        class_="grid compact rejected")]
    return join(parts)


def ledger_handler(request: Request, sources: ConsoleSources) -> Response:
    """/ui/ledger"""
    if not sources.state.has_ledger():
        body = el("p", {"class": "empty"}, "The reconciler has not processed any commit yet.")
    else:
        body = render_ledger(ledger_page(sources.state))
    return html_response(page("Ledger", "Ledger", body))


def audit_handler(request: Request, sources: ConsoleSources) -> Response:
    """/ui/audit/{unit}"""
    subject = str(request.path_params["unit"])
    try:
        data = audit_page(sources.state, subject, now=sources.now(), sources=sources)
    except UsageError as e:
        raise HTTPException(404, str(e)) from None
    except StateError as e:
        return html_response(page(f"Audit: {subject}", "Ledger", el("p", {"class": "empty"}, str(e))))
    return html_response(page(f"Audit: {subject} ({data.audit.kind})", "Ledger", render_audit(data)))

"""The Fleet page (`/ui/`): every sensor that reported, as the fleet table holds its last heartbeat.

Health is `AgentRecord.condition` with the same stale limit `palisade status` uses (sources.stale_after),
so the page and `palisade status -o json` agree sensor by sensor. Groups are the served bundle's groups
that select the sensor (by id or labels, as the agent itself decides); the stage is what the agent
reported. Filters (query parameters, combined): `health=ok|degraded|drift|stale`, `group=NAME`,
`label=KEY=VALUE` (repeatable), `sensor=TEXT` (part of the id).
"""
from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from reconciler.console.html import Markup, el, join
from reconciler.console.layout import html_response, page
from reconciler.console.sources import ConsoleSources
from reconciler.state.fleet import AgentRecord

__all__ = ["HEALTH", "FleetFilter", "SensorRow", "fleet_page", "fleet_rows"]

HEALTH = ("ok", "degraded", "drift", "stale")
_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class SensorRow:
    """One sensor as the Fleet page shows it."""

    id: str
    labels: tuple[tuple[str, str], ...]
    groups: tuple[str, ...]
    stage: str | None
    version: int | None
    pinned: int | None  # the version the index pins for its stage (None: no index or no pin)
    health: str
    last_seen: _dt.datetime
    refused: tuple[tuple[str, str], ...]  # (policy, reason)
    problems: tuple[str, ...]  # what the agent says degrades it, and unhealed drift


@dataclass(frozen=True)
class FleetFilter:
    health: str | None = None
    group: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    sensor: str | None = None

    @classmethod
    def of(cls, query: Mapping[str, str], labels: Sequence[str]) -> FleetFilter:
        pairs = tuple((k.strip(), v.strip()) for k, _, v in (x.partition("=") for x in labels) if k.strip())
        return cls(query.get("health") or None, query.get("group") or None, pairs, query.get("sensor") or None)

    def keeps(self, row: SensorRow) -> bool:
        if self.health is not None and row.health != self.health:
            return False
        if self.group is not None and self.group not in row.groups:
            return False
        have = dict(row.labels)
        if any(have.get(k) != v for k, v in self.labels):
            return False
        return self.sensor is None or self.sensor in row.id

    def query(self, **change: str | None) -> str:
        """This filter's query string with `change` applied (None removes a key)."""
        items: dict[str, str | None] = {"health": self.health, "group": self.group, "sensor": self.sensor}
        items.update(change)
        pairs = [(k, v) for k, v in items.items() if v]
        pairs += [("label", f"{k}={v}") for k, v in self.labels]
        return "?" + urlencode(pairs) if pairs else "?"


def fleet_rows(sources: ConsoleSources, agents: Sequence[AgentRecord] | None = None) -> list[SensorRow]:
    """Every sensor's row, in id order."""
    now = sources.now()
    agents = sources.agents() if agents is None else agents
    index = sources.index()
    bundle = sources.current_bundle()
    groups = bundle.groups if bundle is not None else ()
    pins = dict(index.stages) if index is not None else {}
    rows = []
    for a in agents:
        problems = [f"{p.kind}: {p.reason} {p.detail}".strip() for p in (a.health.problems if a.health else ())]
        if a.drift.unhealed:
            problems.append(f"{a.drift.unhealed} unhealed drift: " +
                            "; ".join(f"{f.kind} {f.policy}" for f in a.drift.findings[:5]))
        rows.append(SensorRow(
            id=a.id, labels=tuple(sorted(a.labels.items())),
            groups=tuple(g.name for g in groups if g.selects(a.id, a.labels)),
            stage=a.stage, version=a.version, pinned=pins.get(a.stage or "default", pins.get("default")),
            health=a.condition(now, sources.stale_after), last_seen=a.last_seen,
            refused=tuple((p.name, p.reason or "") for p in a.policies if p.refused),
            problems=tuple(problems)))
    return rows


def _ago(t: _dt.datetime, now: _dt.datetime) -> str:
    s = max(0, int((now - t).total_seconds()))
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    if s < 172800:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def _chips(label: str, key: str, values: Sequence[str], current: str | None, f: FleetFilter) -> Markup:
    links = [el("a", {"href": "/ui/" + f.query(**{key: None}), "class": "chip" + (" on" if current is None else "")},
                "all")]
    links += [el("a", {"href": "/ui/" + f.query(**{key: v}), "class": "chip" + (" on" if v == current else ""),
                       "data-value": v}, v) for v in values]
    return el("div", {"class": "chips", "data-filter": key}, el("span", {"class": "chips-label"}, label), links)


def _row(r: SensorRow, now: _dt.datetime) -> Markup:
    version: object = "-" if r.version is None else f"v{r.version}"
    if r.version is not None and r.pinned is not None and r.pinned != r.version:
        version = join([f"v{r.version} ", el("span", {"class": "muted"}, f"(pin v{r.pinned})")])
    refused = el("ul", {"class": "reasons"},
                 (el("li", None, el("b", None, name), f": {reason}" if reason else "") for name, reason in r.refused),
                 (el("li", {"class": "problem"}, p) for p in r.problems)) if r.refused or r.problems else "-"
    return el("tr", {"data-sensor": r.id, "data-health": r.health},
              el("td", {"class": "sensor"}, r.id),
              el("td", {"class": "labels"}, join((el("span", {"class": "label"}, f"{k}={v}") for k, v in r.labels),
                                                 " ") if r.labels else "-"),
              el("td", {"class": "groups"}, ", ".join(r.groups) or "-"),
              el("td", {"class": "stage"}, r.stage or "-"),
              el("td", {"class": "version"}, version),
              el("td", {"class": "health"}, el("span", {"class": f"badge {r.health}"}, r.health)),
              el("td", {"class": "seen"}, el("time", {"datetime": r.last_seen.strftime(_TIME),
                                                      "title": r.last_seen.strftime(_TIME)}, _ago(r.last_seen, now))),
              el("td", {"class": "refused", "data-count": len(r.refused)}, refused))


def _summary(rows: Sequence[SensorRow], total: int, sources: ConsoleSources) -> Markup:
    counts = Counter(r.health for r in rows)
    versions = Counter(r.version for r in rows)
    index = sources.index()
    items = [el("div", {"class": "stat"}, el("span", {"class": "n", "id": "count-sensors"}, len(rows)),
                el("span", {"class": "k"}, "sensors" if len(rows) == total else f"sensors of {total}"))]
    items += [el("div", {"class": f"stat {h}"}, el("span", {"class": "n", "id": f"count-{h}"}, counts.get(h, 0)),
                 el("span", {"class": "k"}, h)) for h in HEALTH]
    items.append(el("div", {"class": "stat"}, el("span", {"class": "n", "id": "served-version"},
                                                 "-" if index is None else f"v{index.version}"),
                    el("span", {"class": "k"}, "served")))
    pins = "" if index is None else ", ".join(f"{k} v{v}" for k, v in sorted(index.stages.items()))
    spread = ", ".join(f"{'none' if v is None else f'v{v}'}: {n}" for v, n in
                       sorted(versions.items(), key=lambda kv: (kv[0] is None, -(kv[0] or 0))))
    return el("section", {"class": "summary"}, el("div", {"class": "stats"}, items),
              el("p", {"class": "muted", "id": "versions"}, f"versions running: {spread or 'none'}",
                 f" · pins: {pins}" if pins else ""))


def fleet_page(request: Request, sources: ConsoleSources) -> Response:
    f = FleetFilter.of(request.query_params, request.query_params.getlist("label"))
    all_rows = fleet_rows(sources)
    rows = [r for r in all_rows if f.keeps(r)]
    now = sources.now()
    bundle = sources.current_bundle()
    groups = sorted({g for r in all_rows for g in r.groups} | {g.name for g in (bundle.groups if bundle else ())})
    label_form = el("form", {"class": "filter", "method": "get", "action": "/ui/"},
                    (el("input", {"type": "hidden", "name": k, "value": v}) for k, v in
                     (("health", f.health), ("group", f.group)) if v),
                    el("input", {"type": "text", "name": "label", "placeholder": "label key=value",
                                 "value": f"{f.labels[0][0]}={f.labels[0][1]}" if f.labels else None}),
                    el("input", {"type": "text", "name": "sensor", "placeholder": "sensor id", "value": f.sensor}),
                    el("button", {"type": "submit"}, "filter"))
    filters = el("section", {"class": "filters"}, _chips("health", "health", HEALTH, f.health, f),
                 _chips("group", "group", groups, f.group, f) if groups else None, label_form)
    if not all_rows:
        listing = el("p", {"class": "empty"}, "No sensor has reported yet.")
    elif not rows:
        listing = el("p", {"class": "empty"}, "No sensor matches this filter.")
    else:
        listing = el("table", {"class": "grid", "id": "fleet"},
                     el("thead", None, el("tr", None, (el("th", None, h) for h in (
                         "sensor", "labels", "groups", "stage", "version", "health", "last seen",
                         "refused policies / problems")))),
                     el("tbody", None, (_row(r, now) for r in rows)))
    body = join([_summary(rows, len(all_rows), sources), filters, listing])
    return html_response(page("Fleet", "Fleet", body))


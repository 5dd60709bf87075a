"""The Events page (`/ui/events`): what the agents reported matching, newest first, live.

The rows are the server's stored observations (the fleet table's `query`, what `/v1/observations` and
`palisade events` answer): per sensor, policy, binary, workload, parent and action, the count and the first
and last heartbeat that carried them. Kills (an enforced SIGKILL or override) are highlighted, and so are
the "would have" ones of `enforce_ready`. Filters (query parameters): `workload`, `sensor`, `policy`
(repeatable), `binary`, `action` (`kill`: acted kills only; `would`: dry-run actions; or a Tetragon action
name such as `sigkill`, `post`), `since` (a duration before now such as 1h, 24h, 7d; default 24h).
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from reconciler.console.html import Markup, el, join
from reconciler.console.layout import html_response, page
from reconciler.console.sources import ConsoleSources
from reconciler.repository.model import parse_duration
from reconciler.state.fleet import ObservationRow

__all__ = ["MAX_ROWS", "EventFilter", "action_class", "action_text", "event_rows", "events_page"]

#: Rows shown at most (newest first); the query reads up to QUERY_LIMIT summed rows.
MAX_ROWS = 500
QUERY_LIMIT = 20_000
_TIME = "%Y-%m-%dT%H:%M:%SZ"
_KILLS = ("sigkill", "override", "signal")


def action_text(action: str | None, acted: bool | None) -> str:
    """The action as `palisade events` prints it: `sigkill`, `would sigkill`, `post`, or `-`."""
    if action is None:
        return "-"
    verb = action.removeprefix("KPROBE_ACTION_").lower()
    return verb if acted or verb in ("post", "nopost") or acted is None else f"would {verb}"


def action_class(action: str | None, acted: bool | None) -> str:
    """`kill` (an enforced kill or override), `would` (one that enforce_ready only reported), or ``."""
    verb = (action or "").removeprefix("KPROBE_ACTION_").lower()
    if verb not in _KILLS:
        return ""
    return "kill" if acted else "would"


@dataclass(frozen=True)
class EventFilter:
    workload: str | None = None
    sensor: str | None = None
    policies: tuple[str, ...] = ()
    binary: str | None = None
    action: str | None = None
    since: str = "24h"

    @classmethod
    def of(cls, q: Mapping[str, str], policies: Sequence[str]) -> EventFilter:
        return cls(q.get("workload") or None, q.get("sensor") or None, tuple(p for p in policies if p),
                   q.get("binary") or None, (q.get("action") or "").lower() or None, q.get("since") or "24h")

    def start(self, now: _dt.datetime) -> _dt.datetime | None:
        """The period's start (None: `since` is not a duration, everything is shown)."""
        try:
            return now - parse_duration(self.since)
        except ValueError:
            return None

    def keeps(self, r: ObservationRow) -> bool:
        if self.action is None:
            return True
        if self.action in ("kill", "would"):
            return action_class(r.action, r.acted) == self.action
        return (r.action or "").removeprefix("KPROBE_ACTION_").lower() == self.action

    def query(self, **change: str | None) -> str:
        """This filter's query string with `change` applied (None removes a key; a policy replaces the list)."""
        policy = change.pop("policy", None)
        items: dict[str, str | None] = {"workload": self.workload, "sensor": self.sensor, "binary": self.binary,
                                        "action": self.action, "since": self.since if self.since != "24h" else None}
        items.update(change)
        pairs: list[tuple[str, str]] = [(k, v) for k, v in items.items() if v]
        pairs += [("policy", policy)] if policy else [("policy", p) for p in self.policies]
        return "?" + urlencode(pairs) if pairs else "?"


def event_rows(sources: ConsoleSources, f: EventFilter) -> list[ObservationRow]:
    """The rows the filter keeps, newest first."""
    rows = sources.fleet().query(policies=f.policies or None, sensor=f.sensor, binary=f.binary,
                                 workload=f.workload, since=f.start(sources.now()), limit=QUERY_LIMIT)
    kept = [r for r in rows if f.keeps(r)]
    kept.sort(key=lambda r: (r.last, r.count), reverse=True)
    return kept


def _link(f: EventFilter, key: str, value: str | None, text: object = None) -> Markup | str:
    if not value:
        return "-"
    return el("a", {"href": "/ui/events" + f.query(**{key: value}), "class": "facet"}, value if text is None else text)


def _row(r: ObservationRow, f: EventFilter) -> Markup:
    kind = action_class(r.action, r.acted)
    return el("tr", {"class": f"event {kind}".strip(), "data-sensor": r.sensor, "data-policy": r.policy},
              el("td", {"class": "when"}, el("time", {"datetime": r.last.strftime(_TIME)}, r.last.strftime(_TIME))),
              el("td", {"class": "sensor"}, _link(f, "sensor", r.sensor)),
              el("td", {"class": "workload"}, _link(f, "workload", r.workload)),
              el("td", {"class": "policy"}, _link(f, "policy", r.policy)),
              el("td", {"class": "binary"}, el("code", None, r.binary),
                 el("span", {"class": "muted"}, f" ← {r.parent}") if r.parent else None),
              el("td", {"class": "action"}, el("span", {"class": f"badge {kind}".strip()},
                                               action_text(r.action, r.acted))),
              el("td", {"class": "count num"}, r.count))


def events_page(request: Request, sources: ConsoleSources) -> Response:
    q = request.query_params
    f = EventFilter.of(q, q.getlist("policy"))
    rows = event_rows(sources, f)
    shown = rows[:MAX_ROWS]
    kills = sum(r.count for r in rows if action_class(r.action, r.acted) == "kill")
    would = sum(r.count for r in rows if action_class(r.action, r.acted) == "would")
    chips = el("div", {"class": "chips", "data-filter": "action"}, el("span", {"class": "chips-label"}, "action"),
               (el("a", {"href": "/ui/events" + f.query(action=v), "class": "chip" + (" on" if f.action == v else "")},
                   label) for v, label in ((None, "all"), ("kill", "killed"), ("would", "would kill"),
                                           ("post", "post"))))
    periods = el("div", {"class": "chips", "data-filter": "since"}, el("span", {"class": "chips-label"}, "since"),
                 (el("a", {"href": "/ui/events" + f.query(since=v), "class": "chip" + (" on" if f.since == v else "")},
                     v) for v in ("1h", "24h", "7d", "30d")))
    form = el("form", {"class": "filter", "method": "get", "action": "/ui/events"},
              (el("input", {"type": "text", "name": k, "placeholder": k, "value": v}) for k, v in
               (("workload", f.workload), ("sensor", f.sensor), ("binary", f.binary))),
              el("input", {"type": "text", "name": "policy", "placeholder": "policy",
                           "value": f.policies[0] if f.policies else None}),
              (el("input", {"type": "hidden", "name": k, "value": v}) for k, v in
               (("action", f.action), ("since", f.since)) if v),
              el("button", {"type": "submit"}, "filter"))
    summary = el("p", {"class": "summary-line"},
                 el("span", {"id": "event-rows"}, len(rows)), " row(s), ",
                 el("span", {"id": "event-total"}, sum(r.count for r in rows)), " event(s); ",
                 el("span", {"class": "kill", "id": "event-kills"}, kills), " killed, ",
                 el("span", {"class": "would", "id": "event-would"}, would), " would have been killed",
                 f" (newest {MAX_ROWS} shown)" if len(rows) > MAX_ROWS else "")
    if not rows:
        listing: Markup = el("p", {"class": "empty"}, "No observations match. No data does not mean safe: "
                                                       "a sensor that does not report shows nothing here.")
    else:
        listing = el("table", {"class": "grid compact", "id": "events"},
                     el("thead", None, el("tr", None, (el("th", None, h) for h in (
                         "last seen", "sensor", "workload", "policy", "binary ← parent", "action", "count")))),
                     el("tbody", None, (_row(r, f) for r in shown)))
    body = join([el("section", {"class": "filters"}, chips, periods, form), summary, listing])
    return html_response(page("Events", "Events", body))

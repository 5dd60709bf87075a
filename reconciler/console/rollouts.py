"""The Rollouts page (`/ui/rollouts`): each stage with its pinned version, agents, gates against their
limits and bake time left, why the rollout holds or halted, the ledger's rollout history, and a plot of
how many sensors ran each version over time.

The status is `reconciler.rollout.status.read_status` — what `palisade rollout status --state` prints —
and the history the ledger rows `palisade rollout history` lists; the plot is drawn from the rollout
controller's record of when each sensor began and stopped running each version (from heartbeats), with
the ledger's publish times as marks.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from reconciler.console.answer import answer
from reconciler.console.html import Markup, el, join, table
from reconciler.console.sources import ConsoleSources
from reconciler.console.timeaxis import TimeAxis
from reconciler.errors import StateError
from reconciler.rollout.db import RolloutDB, SensorVersion
from reconciler.rollout.status import read_status
from reconciler.state.ledger import Ledger, Result
from reconciler.state.statedir import StateView
from wire.bundle import format_time

HISTORY_ROWS = 50


@dataclass(frozen=True)
class Gate:
    name: str  # the staging file's key, e.g. maxEnforcementActionsPerNode
    value: float
    limit: float
    ok: bool
    detail: str

    @property
    def comparison(self) -> str:
        """How the value must stand against the limit: `min*` gates are floors, the others ceilings."""
        return "≥" if self.name.startswith("min") else "≤"


@dataclass(frozen=True)
class Stage:
    name: str
    pinned: int | None
    agents: int
    reporting: int
    at_pinned: int
    bake_left: int | None  # seconds; None: not baking
    state: str
    gates: tuple[Gate, ...]


@dataclass(frozen=True)
class HistoryRow:
    time: _dt.datetime
    kind: str
    subject: str
    stage: str | None
    actor: str | None
    what: str


@dataclass(frozen=True)
class Series:
    """How many sensors ran `version`: the count from each time on (a step line)."""

    version: int
    points: tuple[tuple[_dt.datetime, int], ...]


@dataclass(frozen=True)
class VersionPlot:
    now: _dt.datetime
    series: tuple[Series, ...]
    published: tuple[tuple[int, _dt.datetime], ...]  # version, when the ledger accepted it
    most: int  # the largest count (the y scale)


@dataclass(frozen=True)
class RolloutPage:
    state: str  # idle, progressing, paused, halted, aborted, complete
    target: int | None
    stable: int | None
    started: str | None
    halt_reason: str | None
    abort_reason: str | None
    reason: str
    change: str | None  # "tightening, stage by stage" / "relaxing, fast-tracked to every stage"
    change_reasons: tuple[str, ...]
    pins: tuple[tuple[str, int], ...]
    stages: tuple[Stage, ...]
    history: tuple[HistoryRow, ...]
    plot: VersionPlot


def rollout_page(state: StateView, *, now: _dt.datetime | None = None,
                 sources: ConsoleSources | None = None) -> RolloutPage:
    """The rollout as `palisade rollout status --state` and `rollout history` see it, and the plot. With the
    console's `sources`, the fleet's sensors and the bundle come from its caches."""
    now = (now or _dt.datetime.now(_dt.UTC)).replace(microsecond=0)
    doc = read_status(state, now=now, agents=sources.agents if sources else None,
                      bundle=sources.bundle if sources else None)
    history: list[HistoryRow] = []
    published: list[tuple[int, _dt.datetime]] = []
    if state.has_ledger():
        with Ledger.open(state, readonly=True) as ledger:
            history = [_history_row(e.time, e.kind, e.subject, e.detail, e.actor) for e in ledger.events()
                       if e.kind.startswith("rollout-")][:HISTORY_ROWS]
            published = [(e.version, e.processed) for e in ledger.entries()
                         if e.result is Result.ACCEPTED and e.version is not None]
    runs: list[SensorVersion] = []
    if state.has_rollouts():
        db = RolloutDB.open(state, readonly=True)
        try:
            runs = db.sensor_versions()
        finally:
            db.close()
    cls = doc.get("classification") or None
    return RolloutPage(
        state=str(doc["state"]), target=doc.get("target"), stable=doc.get("stable"), started=doc.get("started"),
        halt_reason=doc.get("haltReason"), abort_reason=doc.get("abortReason"), reason=str(doc.get("reason") or ""),
        change=None if not cls else f"{cls['kind']}, " + ("fast-tracked to every stage" if cls.get("fastTracked")
                                                          else "stage by stage"),
        change_reasons=tuple(cls.get("reasons") or ()) if cls else (),
        pins=tuple(sorted((str(k), int(v)) for k, v in (doc.get("pins") or {}).items())),
        stages=tuple(_stage(s) for s in doc.get("stages") or ()),
        history=tuple(history), plot=version_plot(runs, sorted(published, key=lambda p: p[1]), now))


def _stage(s: Mapping[str, Any]) -> Stage:
    return Stage(str(s["name"]), s.get("pinned"), int(s.get("agents") or 0), int(s.get("reporting") or 0),
                 int(s.get("atPinned") or 0), s.get("bakeLeftSeconds"), str(s.get("state") or ""),
                 tuple(Gate(str(g["gate"]), float(g.get("value") or 0), float(g.get("limit") or 0), bool(g.get("ok")),
                            str(g.get("detail") or "")) for g in s.get("gates") or ()))


def _history_row(time: _dt.datetime, kind: str, subject: str, detail: Mapping[str, Any],
                 actor: str | None) -> HistoryRow:
    what = str(detail.get("reason") or detail.get("result") or "")
    if kind == "rollout-started":
        c = detail.get("classification") or {}
        spread = "fast-tracked to every stage" if detail.get("fastTracked") else "stage by stage"
        what = f"{c.get('kind', '?')} change, {spread}" + (f"; supersedes v{detail['supersedes']}"
                                                           if detail.get("supersedes") else "")
    stage = detail.get("stage")
    return HistoryRow(time, kind, subject, str(stage) if stage else None, actor, what)


def version_plot(runs: Sequence[SensorVersion], published: Sequence[tuple[int, _dt.datetime]],
                 now: _dt.datetime) -> VersionPlot:
    """Sensors per version over time, from the sensors' runs (began, ended) of each version."""
    changes: dict[_dt.datetime, dict[int, int]] = {}
    for r in runs:
        changes.setdefault(r.began, {}).setdefault(r.version, 0)
        changes[r.began][r.version] += 1
        if r.ended is not None:
            changes.setdefault(r.ended, {}).setdefault(r.version, 0)
            changes[r.ended][r.version] -= 1
    versions = sorted({r.version for r in runs})
    counts = dict.fromkeys(versions, 0)
    points: dict[int, list[tuple[_dt.datetime, int]]] = {v: [] for v in versions}
    for t in sorted(changes):
        for v, delta in changes[t].items():
            counts[v] += delta
        for v in versions:
            if not points[v] or points[v][-1][1] != counts[v]:
                points[v].append((t, counts[v]))
    most = max((n for pts in points.values() for _, n in pts), default=0)
    return VersionPlot(now, tuple(Series(v, tuple(points[v])) for v in versions), tuple(published), most)


# ---------------------------------------------------------------------------
# Rendering

_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 720, 240, 40, 700, 12, 200


def plot_svg(plot: VersionPlot) -> Markup:
    """The step lines of `plot` (one colour class per version, cycling) with publish marks."""
    times = [t for s in plot.series for t, _ in s.points] + [t for _, t in plot.published]
    axis = TimeAxis.spanning(times, plot.now, _LEFT, _RIGHT)
    most = max(plot.most, 1)

    def y(n: int) -> float:
        return round(_BOTTOM - (_BOTTOM - _TOP) * n / most, 1)

    parts: list[Markup] = [axis.draw(_TOP, _BOTTOM),
                           el("line", {"class": "axis", "x1": _LEFT, "x2": _RIGHT, "y1": _BOTTOM, "y2": _BOTTOM}),
                           el("text", {"class": "tick", "x": _LEFT - 6, "y": y(most) + 4, "text-anchor": "end"},
                              str(most)),
                           el("text", {"class": "tick", "x": _LEFT - 6, "y": _BOTTOM + 4, "text-anchor": "end"}, "0")]
    for version, when in plot.published:
        x = axis.x(when)
        parts.append(el("line", {"class": "publish", "x1": x, "x2": x, "y1": _TOP, "y2": _BOTTOM},
                        el("title", None, f"v{version} published {format_time(when)}")))
    legend = []
    for i, s in enumerate(plot.series):
        cls = f"series s{i % 8}"
        coords: list[str] = []
        last = 0
        for t, n in s.points:
            x = axis.x(t)
            coords += [f"{x},{y(last)}", f"{x},{y(n)}"]
            last = n
        coords.append(f"{axis.x(plot.now)},{y(last)}")
        parts.append(el("polyline", {"class": cls, "points": " ".join(coords)},
                        el("title", None, f"v{s.version}: {last} sensor(s) now")))
        legend.append(el("text", {"class": f"legend {cls}", "x": _LEFT + 120 + 60 * i, "y": _H - 6}, f"v{s.version}"))
    if plot.series:
        legend.insert(0, el("text", {"class": "legend", "x": _LEFT, "y": _H - 6}, "sensors running"))
    if not plot.series:
        parts.append(el("text", {"class": "empty", "x": (_LEFT + _RIGHT) / 2, "y": (_TOP + _BOTTOM) / 2,
                                 "text-anchor": "middle"}, "no sensor has reported a version yet"))
    return el("svg", {"class": "plot versions", "viewBox": f"0 0 {_W} {_H}", "role": "img",
                      "aria-label": "sensors running each version over time", "xmlns": "http://www.w3.org/2000/svg"},
              *parts, *legend)


def _gate(g: Gate) -> Markup:
    text = f"{g.name} {_num(g.value)} {g.comparison} {_num(g.limit)}"
    return el("span", {"class": "gate ok" if g.ok else "gate failed", "title": g.detail},
              text + ("" if g.ok else " FAILED"))


def _num(v: float) -> str:
    return f"{v:.2f}" if v != int(v) else str(int(v))


def render_rollouts(page: RolloutPage) -> Markup:
    head = [el("p", {"class": "rollout-state"}, el("span", {"class": f"badge rollout-{page.state}"}, page.state),
               f" v{page.target}" if page.target is not None else "",
               f" (stable v{page.stable})" if page.stable is not None and page.stable != page.target else "",
               f", started {page.started}" if page.started else "")]
    if page.halt_reason:
        head.append(el("p", {"class": "halt"}, "HALTED: ", page.halt_reason))
    if page.abort_reason:
        head.append(el("p", {"class": "halt"}, "ABORTED: ", page.abort_reason))
    if page.reason:
        head.append(el("p", {"class": "reason"}, page.reason))
    if page.change:
        head.append(el("p", {"class": "change"}, "change: ", page.change,
                       el("ul", None, *[el("li", None, r) for r in page.change_reasons]) if page.change_reasons
                       else ""))
    stages = table(["Stage", "Pinned", "Agents", "Reporting", "At pin", "Bake left", "State", "Gates"],
                   [[s.name, f"v{s.pinned}" if s.pinned is not None else "—", str(s.agents), str(s.reporting),
                     str(s.at_pinned), "—" if s.bake_left is None else f"{s.bake_left}s", s.state,
                     join([_gate(g) for g in s.gates]) if s.gates else "—"] for s in page.stages],
                   class_="grid stages")
    pins = el("p", {"class": "pins"}, "pins: ", ", ".join(f"{k}=v{v}" for k, v in page.pins) or "none")
    history = table(["Time", "Event", "Subject", "Stage", "By", "What"],
                    [[format_time(h.time), h.kind, h.subject, h.stage or "", h.actor or "—", h.what]
                     for h in page.history], class_="grid compact history")
    return join([*head, el("h2", None, "Stages"), stages, pins,
                 el("h2", None, "Versions over time"), plot_svg(page.plot),
                 el("h2", None, "History"), history if page.history else el("p", None, "no rollout rows yet")])



def rollouts_handler(request: Request, sources: ConsoleSources) -> Response:
    """/ui/rollouts"""
    return answer("Rollouts", "Rollouts", lambda: render_rollouts(rollout_page(sources.state, now=sources.now(),
                                                                                sources=sources)),
                  StateError)

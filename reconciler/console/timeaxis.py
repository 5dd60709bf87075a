"""A time axis for the console's SVG pictures (the fleet's versions over time, audit timelines). Pure.

Maps times to x coordinates in a drawing's width and picks readable ticks, so the pictures
built with `el()` agree on how time reads.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from reconciler.console.html import Markup, el, join

#: Tick spacings a reader can count in, smallest first.
_STEPS = tuple(_dt.timedelta(seconds=s) for s in (
    1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400,
    365 * 86400))


@dataclass(frozen=True)
class TimeAxis:
    start: _dt.datetime
    end: _dt.datetime
    left: float  # x of `start`
    right: float  # x of `end`

    @classmethod
    def spanning(cls, times: list[_dt.datetime], now: _dt.datetime, left: float, right: float) -> TimeAxis:
        """An axis from the earliest of `times` to `now` (at least a minute wide, with a little room before)."""
        start = min([*times, now])
        span = max(now - start, _dt.timedelta(minutes=1))
        return cls(start - span / 40, now + span / 40, left, right)

    def x(self, t: _dt.datetime) -> float:
        span = (self.end - self.start).total_seconds() or 1.0
        frac = (t - self.start).total_seconds() / span
        return round(self.left + max(0.0, min(1.0, frac)) * (self.right - self.left), 1)

    def ticks(self, most: int = 8) -> list[_dt.datetime]:
        span = self.end - self.start
        step = next((s for s in _STEPS if span / s <= most), _STEPS[-1])
        epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
        first = epoch + step * -(-(self.start - epoch) // step)  # the first multiple of step on the axis
        out = []
        t = first
        while t <= self.end:
            out.append(t)
            t += step
        return out

    def label(self, t: _dt.datetime) -> str:
        span = self.end - self.start
        if span <= _dt.timedelta(days=2):
            return t.astimezone(_dt.UTC).strftime("%H:%M:%S" if span < _dt.timedelta(minutes=10) else "%H:%M")
        return t.astimezone(_dt.UTC).strftime("%m-%d %H:%M" if span <= _dt.timedelta(days=14) else "%Y-%m-%d")

    def draw(self, y_top: float, y_bottom: float) -> Markup:
        """Grid lines and labels (UTC) below `y_bottom`."""
        parts = []
        for t in self.ticks():
            x = self.x(t)
            parts.append(el("line", {"class": "grid", "x1": x, "x2": x, "y1": y_top, "y2": y_bottom}))
            parts.append(el("text", {"class": "tick", "x": x, "y": y_bottom + 14, "text-anchor": "middle"},
                            self.label(t)))
        return join(parts)

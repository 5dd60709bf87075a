"""When the reconciler first accepted the commits of the tracked branch: the clock of the ladder.

Commit dates are claims anyone can write (`GIT_COMMITTER_DATE`); the ledger's
times are the reconciler's own. `history` measures observation windows from
these, so a pack backdated three days still waits its window from the moment
the reconciler first published it.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Acceptances:
    """When the reconciler first accepted commits of the tracked branch (from its ledger).

    `accepted` holds (first-parent position, time first accepted) pairs. A commit
    went live when the first accepted commit at or after its position did: a
    rejected commit was never published, and commits from before the reconciler
    started went live when it first accepted anything. Commit dates are claims
    anyone can write; these times are the reconciler's own.
    """

    accepted: tuple[tuple[int, _dt.datetime], ...] = ()

    def live_since(self, position: int) -> _dt.datetime | None:
        """When the commit at first-parent `position` went live (None: nothing accepted at or after it)."""
        return self.live_times(position + 1)[position]

    def live_times(self, count: int) -> list[_dt.datetime | None]:
        """`live_since` of positions 0 .. count-1, in one sweep from the newest."""
        out: list[_dt.datetime | None] = [None] * count
        earliest: _dt.datetime | None = None
        pending = sorted(self.accepted, reverse=True)
        j = 0
        for position in range(count - 1, -1, -1):
            while j < len(pending) and pending[j][0] >= position:
                t = pending[j][1]
                earliest = t if earliest is None else min(earliest, t)
                j += 1
            out[position] = earliest
        return out

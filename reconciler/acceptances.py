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
        times = [t for p, t in self.accepted if p >= position]
        return min(times) if times else None

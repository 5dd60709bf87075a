"""What the console's pages read (`ConsoleSources`): the state directory, the repository as `palisade serve`
got it, the index being served, the reconcile status and the fleet.

The console is a stage below `serve`, so it is handed callables rather than the server's objects:
`index()` is the index the server serves right now (in memory, no disk read), `status()` what
`/v1/status` answers before the server adds its `served` member (it may read the ledger: call it from a
worker thread, as every page handler runs, app.py). Everything else is read from the state directory
read-only, as `palisade status`, `audit` and `readiness` do.
"""
from __future__ import annotations

import datetime as _dt
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import VerificationError
from reconciler.state.fleet import AgentRecord, AgentsReader, Fleet
from reconciler.state.statedir import StateView
from wire.bundle import Bundle, Index, parse_bundle

__all__ = ["DEFAULT_STALE_AFTER", "ConsoleSources"]

log = logging.getLogger("palisade.console")

#: When a sensor counts as stale on the console: what `palisade status` uses (AgentRecord.condition's default),
#: so the two agree on every sensor.
DEFAULT_STALE_AFTER = _dt.timedelta(minutes=2)


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _never() -> bool:
    return False


def _empty() -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True)
class _Cache:
    """The mutable part behind the frozen sources: the shared fleet connection and parsed bundles."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    fleet: list[Fleet] = field(default_factory=list)
    bundles: dict[int, Bundle] = field(default_factory=dict)
    reader: list[AgentsReader] = field(default_factory=list)
    #: sensor id → (its stored row, the record read from it): a row is parsed again only when it changed
    agents: dict[str, tuple[tuple[object, ...], AgentRecord]] = field(default_factory=dict)


@dataclass(frozen=True)
class ConsoleSources:
    """Everything a console page reads.

    state       the reconciler's state directory (read it only: StateView)
    source      the repository `palisade serve --repo` was given; branch its `--branch`
    index       the index served now (None before the first publish)
    status      the reconcile status mapping (what /v1/status answers, less `served`)
    fleet_db    the fleet (reconciler.state.fleet.Fleet) to read, e.g. the server's own; default: opened
                from `state` on first use
    stopping    True once the server is shutting down (live streams end then)
    stale_after a sensor silent this long is `stale` (as `palisade status` counts it)
    now         the clock
    """

    state: StateView
    index: Callable[[], Index | None]
    status: Callable[[], Mapping[str, Any]] = _empty
    source: str | None = None
    branch: str | None = None
    fleet_db: Callable[[], Fleet] | None = None
    stopping: Callable[[], bool] = _never
    stale_after: _dt.timedelta = DEFAULT_STALE_AFTER
    now: Callable[[], _dt.datetime] = _utcnow
    _cache: _Cache = field(default_factory=_Cache, repr=False, compare=False)

    def fleet(self) -> Fleet:
        """The fleet table (thread-safe; one connection shared by every page)."""
        if self.fleet_db is not None:
            return self.fleet_db()
        with self._cache.lock:
            if not self._cache.fleet:
                self._cache.fleet.append(Fleet.open(self.state))
            return self._cache.fleet[0]

    def agents(self) -> list[AgentRecord]:
        """Every sensor's last heartbeat, in id order, as `Fleet.agents()` gives it, parsing again only the
        rows that changed since the last call (`AgentsReader`)."""
        with self._cache.lock:
            if not self._cache.reader:
                if not self.state.has_fleet():
                    return []
                self._cache.reader.append(AgentsReader(self.state.fleet_db))
            reader = self._cache.reader[0]
        return reader.agents()

    def bundle(self, version: int) -> Bundle | None:
        """Bundle `version` from the store (parsed once: bundles never change), None if it is not there.
        Its signature is not checked here: the server checked it when it was written, and the console
        only shows it."""
        with self._cache.lock:
            found = self._cache.bundles.get(version)
        if found is not None:
            return found
        try:
            data = self.state.store.bundle(version).read_bytes()
        except OSError:
            return None
        try:
            found = parse_bundle(data)
        except (VerificationError, ValueError):
            return None
        with self._cache.lock:
            if len(self._cache.bundles) > 64:
                self._cache.bundles.clear()
            self._cache.bundles[version] = found
        return found

    def current_bundle(self) -> Bundle | None:
        """The newest bundle the served index lists."""
        index = self.index()
        return None if index is None else self.bundle(index.version)

    def close(self) -> None:
        with self._cache.lock:
            for f in self._cache.fleet:
                f.close()
            for db in self._cache.reader:
                db.close()
            self._cache.fleet.clear()
            self._cache.reader.clear()

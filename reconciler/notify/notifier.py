"""The notifier of `palisade serve --notify`: detect (events.py) → enqueue (outbox.py) → deliver (deliver.py).

`start()` runs in the reconcile thread once the server leads the state directory (a standby
notifies nothing: the leader does). `observe(ledger)` runs in that thread after every reconcile
pass and every rollout tick (about once a second), so a stale agent is noticed within a second of
its timeout. The first start on a state directory begins at the ledger's end: commits and rollout
events recorded before notifications were configured are history, not news (agents' current
problems are news, and are notified).
"""
from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from reconciler.notify.config import NotifyConfig
from reconciler.notify.deliver import Courier, NotifyMetrics
from reconciler.notify.events import Notification, Observed, Snapshot, detect
from reconciler.notify.outbox import Outbox, Outcome, Recorded
from reconciler.state.fleet import AgentRecord, Fleet
from reconciler.state.statedir import StateDir

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from reconciler.state.ledger import Ledger

__all__ = ["Notifier"]

log = logging.getLogger("palisade.notify")


class Notifier:
    def __init__(self, config: NotifyConfig, state: StateDir, *, stale_after: _dt.timedelta,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], _dt.datetime] | None = None) -> None:
        """Touches no file: `start()` opens the outbox."""
        self.config = config
        self.state = state
        self.stale_after = stale_after
        self.metrics = NotifyMetrics(registry, config.targets) if registry is not None else None
        self._clock = clock or (lambda: _dt.datetime.now(_dt.UTC))
        self.outbox: Outbox | None = None
        self._fleet: Fleet | None = None
        self._couriers: list[Courier] = []
        self._observed = Observed()

    def start(self, ledger: Ledger) -> None:
        self.outbox = Outbox.open(self.state)
        found = self.outbox.observed()
        if found is None:
            last_commit = ledger.entries(limit=1)
            last_event = ledger.events(limit=1)
            found = Observed(last_commit[0].id if last_commit else 0, last_event[0].id if last_event else 0)
            self.outbox.record(found, (), (), self.config.queue_limit)
        self._observed = found
        pending = self.outbox.pending()
        if self.metrics is not None:
            for t in self.config.targets:
                self.metrics.queued.labels(t.name).set(pending.get(t.name, 0))
        if any(pending.values()):
            log.info("notify: %d notification(s) queued from before the restart", sum(pending.values()))
        self._couriers = [Courier(t, self.outbox, self.config.backoff, self.metrics) for t in self.config.targets]
        for c in self._couriers:
            c.start()

    def stop(self) -> None:
        for c in self._couriers:  # all at once: a slow target does not hold up the others' stop
            c.stopping()
        for c in self._couriers:
            c.stop()
        self._couriers = []
        if self._fleet is not None:
            self._fleet.close()
            self._fleet = None
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None

    def observe(self, ledger: Ledger) -> tuple[Notification, ...]:
        """Detect what is new since the last call, enqueue it, wake the couriers; the notifications found."""
        assert self.outbox is not None, "start() first"
        prev = self._observed
        snap = Snapshot(self._clock(), tuple(ledger.entries(after=prev.commit_cursor)),
                        tuple(ledger.events(after=prev.event_cursor)), self._agents(), self.stale_after,
                        self.config.links, self.config.commit_url)
        observed, found = detect(prev, snap)
        if observed == prev:
            return found
        recorded = self.outbox.record(observed, found, self.config.targets, self.config.queue_limit,
                                      now=snap.now)
        self._observed = observed  # only once it is stored: a failed write is detected again next time
        self._count(recorded)
        if recorded.enqueued:
            for c in self._couriers:
                c.wake()
        return found

    def _count(self, r: Recorded) -> None:
        for target, event in r.dropped:
            log.warning("notify %s: queue full (%d undelivered); dropped the oldest, %s",
                        target, self.config.queue_limit, event)
        if self.metrics is None:
            return
        for target, _ in r.enqueued:
            self.metrics.enqueued.labels(target).inc()
        for target, _ in r.dropped:
            self.metrics.count(target, Outcome.DROPPED)
        assert self.outbox is not None
        pending = self.outbox.pending()
        for t in self.config.targets:
            self.metrics.queued.labels(t.name).set(pending.get(t.name, 0))

    def _agents(self) -> tuple[AgentRecord, ...]:
        if self._fleet is None:
            if not self.state.has_fleet():  # made at the first heartbeat; opening it here would make it
                return ()
            self._fleet = Fleet.open(self.state)
        return tuple(self._fleet.agents())

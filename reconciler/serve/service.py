"""The reconcile loop of `palisade serve`: watcher → reconciler → publication.

One thread owns the `Reconciler` (its SQLite connection belongs to the thread
that opened it). It runs a pass at start, then whenever the watcher reports a
change, at every poll interval, and when the index is due for re-signing —
re-signing happens even when the repository is unreachable or its history was
rewritten, because agents must keep trusting the last good bundle. After each
pass it tells the HTTP side to pick up the new index (long-pollers wake at once)
and caches the status document that `/v1/status` serves.
"""
from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from reconciler.errors import PalisadeError, RewriteRefused
from reconciler.metrics import Metrics
from reconciler.serve.watch import Changes

if TYPE_CHECKING:
    from reconciler.publish.reconcile import Reconciler
    from reconciler.serve.publication import Publication
    from wire.bundle import Index

__all__ = ["ReconcileLoop"]

log = logging.getLogger("palisade.serve")

#: Never sleep longer than this between re-sign checks, whatever the index says (clock jumps).
_MAX_SLEEP = 60.0
#: Seconds between rollout controller ticks (reconciler/rollout/controller.py) when no pass runs.
_ROLLOUT_TICK = 1.0


class ReconcileLoop:
    """Runs `make_reconciler()`'s passes in a thread until `stop()`."""

    def __init__(self, make_reconciler: Callable[[], Reconciler], *, publication: Publication,
                 metrics: Metrics, changes: Changes, poll_interval: float) -> None:
        self._make = make_reconciler
        self._pub = publication
        self._metrics = metrics
        self.changes = changes
        self._poll = poll_interval
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._status: dict[str, Any] = {}
        self._refused_head: str | None = None
        self._index: Index | None = None
        self._thread = threading.Thread(target=self._run, name="palisade-reconcile", daemon=True)

    # --- control (any thread) ----------------------------------------------------------

    def start(self) -> None:
        """Open the reconciler in the loop thread; raise here if that fails (lock held, bad state)."""
        self._thread.start()
        self._started.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the pass in progress (it is crash-safe anyway) and close the reconciler."""
        self._stopping.set()
        self.changes.notify()
        self._thread.join(timeout)

    def status(self) -> Mapping[str, Any]:
        """The status as of the last pass (a fresh dict; safe from any thread)."""
        return dict(self._status)

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            rec = self._make()
        except BaseException as e:  # handed to start(), which raises it in the caller's thread
            self._startup_error = e
            self._started.set()
            return
        try:
            rec.rollouts.metrics = self._metrics
            self._status = rec.status()
            self._published()
            self._started.set()
            while not self._stopping.is_set():
                self._pass(rec)
                if self._stopping.is_set():
                    break
                self._wait(rec)
        finally:
            self._started.set()
            rec.close()

    def _pass(self, rec: Reconciler) -> None:
        t0 = time.perf_counter()
        try:
            outcome = rec.run_once()
        except RewriteRefused as e:
            if str(e) != self._refused_head:  # the reason names the refused head: count each head once
                self._refused_head = str(e)
                self._metrics.count_commit("refused")
                log.error("%s", e)
            self._resign(rec)
        except PalisadeError as e:
            self._metrics.reconcile_errors.inc()
            log.error("reconcile failed: %s", e)
            self._resign(rec)
        except Exception:
            self._metrics.reconcile_errors.inc()
            log.exception("reconcile failed unexpectedly")
            self._resign(rec)
        else:
            self._refused_head = None
            for entry in outcome.processed:
                result = str(entry.result)
                if result in ("accepted", "rejected"):
                    self._metrics.count_commit(result)
        finally:
            self._metrics.reconcile_duration.observe(time.perf_counter() - t0)
            self._refresh(rec)

    def _wait(self, rec: Reconciler) -> None:
        """Sleep until the next pass, ticking the rollout controller meanwhile so bakes end on time."""
        deadline = time.monotonic() + self._sleep_time()
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.changes.wait(min(left, _ROLLOUT_TICK)):
                return
            rec.tick()
            self._refresh(rec)

    def _refresh(self, rec: Reconciler) -> None:
        """Take the reconciler's status for /v1/status and tell the server what it published."""
        try:
            self._status = rec.status()
        except Exception:
            log.exception("cannot read the reconcile status")
        self._published()

    def _resign(self, rec: Reconciler) -> None:
        try:
            rec.resign()
        except Exception as e:
            log.error("re-signing the index failed: %s", e)

    def _published(self) -> None:
        # The HTTP side installs the snapshot on its event loop a moment later; remember the index
        # here so the re-sign timer does not read the previous one.
        snap = self._pub.refresh() or self._pub.current
        if snap is not None:
            self._index = snap.index

    def _sleep_time(self) -> float:
        """Until the next poll, or until the index is due for re-signing if that comes first."""
        sleep = min(self._poll, _MAX_SLEEP)
        index = self._index
        if index is not None:
            # Store.resign_if_due re-signs once half the lifetime is left; wake just after that point.
            due = index.issued + (index.expires - index.issued) / 2
            until = (due - _dt.datetime.now(_dt.UTC)).total_seconds() + 0.05
            sleep = min(sleep, max(until, 0.5))  # the floor: no busy loop if re-signing fails
        return sleep

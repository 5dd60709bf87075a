"""The reconcile loop of `palisade serve`: watcher → reconciler → publication.

One thread owns the `Reconciler` (its SQLite connection belongs to the thread
that opened it). It runs a pass at start, then whenever the watcher reports a
change, at every poll interval, and when the index is due for re-signing —
re-signing happens even when the repository is unreachable or its history was
rewritten, because agents must keep trusting the last good bundle. After each
pass it tells the HTTP side to pick up the new index (long-pollers wake at once)
and caches the status document that `/v1/status` serves.

With leader election (`Standby`, `palisade serve --leader-elect`) a server that finds the
state lock held stands by instead of failing: it serves reads (the index and bundles the
leader publishes, status read from the ledger without a lock, the fleet), tries the lock
every `Standby.retry` seconds and writes nothing of the ledger, the store or the rollout
state until it holds it. The lock is an flock, released by the kernel when its holder dies
however it dies, so the standby's next try takes it: it then opens the reconciler (which
settles a publish the dead leader left half done, ledger.py) and leads. Only the agents'
heartbeats are written by both (fleet.db, SQLite WAL: one writer at a time, each waits
for the other).
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from reconciler.errors import PalisadeError, RewriteRefused, StateError, VerificationError
from reconciler.metrics import Metrics
from reconciler.serve.watch import Changes
from reconciler.state.ledger import Ledger, StateInUse, lock_holder
from reconciler.state.statedir import StateView
from reconciler.state.store import Store

if TYPE_CHECKING:
    from reconciler.notify.notifier import Notifier
    from reconciler.publish.reconcile import Reconciler
    from reconciler.serve.publication import Publication
    from wire.bundle import Index

__all__ = ["ReconcileLoop", "Role", "Standby", "read_status"]

log = logging.getLogger("palisade.serve")

#: Never sleep longer than this between re-sign checks, whatever the index says (clock jumps).
_MAX_SLEEP = 60.0
#: Seconds between rollout controller ticks (reconciler/rollout/controller.py) when no pass runs.
_ROLLOUT_TICK = 1.0


class Role(StrEnum):
    """What this server does with the state directory (`role` in /v1/status)."""

    LEADER = "leader"  # holds the lock: reconciles, publishes, runs the rollout controller
    STANDBY = "standby"  # waits for the lock; serves reads meanwhile


@dataclass(frozen=True)
class Standby:
    """Leader election on the state lock: stand by while another process holds it, lead once it is free."""

    state: StateView
    branch: str | None = None  # shown in the standby's status, as the leader shows them
    source: str | None = None
    retry: float = 0.25  # seconds between tries of the lock (an flock try is one syscall)


def read_status(standby: Standby) -> dict[str, Any]:
    """The reconcile status from the state directory alone (the ledger opened read-only, no lock): what a
    standby serves at /v1/status, as the leader last wrote it."""
    from reconciler.publish.reconcile import status
    from reconciler.rollout.status import read_status as rollout_status

    state = standby.state
    try:
        with Ledger.open(state, readonly=True) as ledger:
            doc = status(ledger, Store(state.store.root), branch=standby.branch, source=standby.source)
        if state.has_rollouts():
            doc["rollout"] = rollout_status(state)
    except (StateError, VerificationError) as e:  # nothing led here yet, or the leader is mid-migration
        doc = {"source": standby.source, "branch": standby.branch, "lastError": str(e)}
    return doc


class ReconcileLoop:
    """Runs `make_reconciler()`'s passes in a thread until `stop()`.

    With `standby`, a `make_reconciler()` that finds the state lock held (StateInUse) is tried
    again every `standby.retry` seconds instead of failing, and the loop leads once it succeeds.
    With `notifier` (--notify), it starts once the loop leads and observes the ledger and the fleet
    after every pass and every rollout tick (reconciler/notify/notifier.py).
    """

    def __init__(self, make_reconciler: Callable[[], Reconciler], *, publication: Publication,
                 metrics: Metrics, changes: Changes, poll_interval: float, standby: Standby | None = None,
                 notifier: Notifier | None = None) -> None:
        self._make = make_reconciler
        self._notifier = notifier
        self._standby = standby
        self.role: Role | None = None  # None until start() returns
        self.role_since: _dt.datetime | None = None
        #: Why a standby could not take over (it then shuts the server down; the caller raises this).
        self.failure: BaseException | None = None
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
        """The status as of the last pass, or as the ledger says while standing by (a fresh dict; safe from
        any thread), with this server's role."""
        role, since, standby = self.role, self.role_since, self._standby
        doc = read_status(standby) if role is Role.STANDBY and standby is not None else dict(self._status)
        doc["role"] = str(role) if role is not None else None
        doc["roleSince"] = since.strftime("%Y-%m-%dT%H:%M:%SZ") if since is not None else None
        if role is Role.STANDBY and standby is not None:
            doc["leader"] = {"pid": lock_holder(standby.state)}
        return doc

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        rec = self._open()
        if rec is None:
            return
        if not self._start_notifier(rec):
            return
        try:
            rec.rollouts.metrics = self._metrics
            self._status = rec.status()
            self._set_role(Role.LEADER)
            self._published()
            self._started.set()
            while not self._stopping.is_set():
                self._pass(rec)
                if self._stopping.is_set():
                    break
                self._wait(rec)
        finally:
            self._started.set()
            if self._notifier is not None:
                self._notifier.stop()
            rec.close()

    def _start_notifier(self, rec: Reconciler) -> bool:
        """Open the notification outbox (the leader's, like the ledger); False: it failed, and start() or
        the standby's takeover reports why."""
        if self._notifier is None:
            return True
        try:
            self._notifier.start(rec.ledger)
        except BaseException as e:
            rec.close()
            if self.role is not Role.STANDBY:
                self._startup_error = e
                self._started.set()
            else:
                log.error("cannot take over the state directory: %s", e)
                self.failure = e
                os.kill(os.getpid(), signal.SIGTERM)
            return False
        return True

    def _notify(self, rec: Reconciler) -> None:
        if self._notifier is None:
            return
        try:
            self._notifier.observe(rec.ledger)
        except Exception:  # notifying must never stop reconciling; the next tick tries again
            log.exception("notify: detecting notifications failed")

    def _open(self) -> Reconciler | None:
        """The reconciler, once this server may lead (None: stopped while standing by, or it failed)."""
        while True:
            try:
                return self._make()
            except StateInUse as e:
                if self._standby is None:
                    self._startup_error = e  # handed to start(), which raises it in the caller's thread
                    self._started.set()
                    return None
                if self.role is not Role.STANDBY:
                    log.info("standing by: pid %s leads %s; serving reads, trying the lock every %gs",
                             e.holder or "unknown", self._standby.state.root, self._standby.retry)
                    self._set_role(Role.STANDBY)
                    self._started.set()
                self._pub.refresh()  # follow the leader's index between the server's own store checks
                if self._stopping.wait(self._standby.retry):
                    return None
            except BaseException as e:
                if self.role is not Role.STANDBY:
                    self._startup_error = e
                    self._started.set()
                    return None
                # Serving on as a standby that can never lead would hide the failure: stop the server (its
                # SIGTERM path, as an operator would) and let the caller report why, with a non-zero exit.
                log.error("cannot take over the state directory: %s", e)
                self.failure = e
                os.kill(os.getpid(), signal.SIGTERM)
                return None

    def _set_role(self, role: Role) -> None:
        if role is Role.LEADER and self.role is Role.STANDBY:
            log.warning("leading %s now (the lock was free: the previous leader is gone)",
                        self._standby.state.root if self._standby else "the state directory")
        self.role, self.role_since = role, _dt.datetime.now(_dt.UTC)
        self._metrics.set_leader(role is Role.LEADER)

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
            self._notify(rec)

    def _wait(self, rec: Reconciler) -> None:
        """Sleep until the next pass, ticking the rollout controller meanwhile so bakes end on time."""
        deadline = time.monotonic() + self._sleep_time()
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.changes.wait(min(left, _ROLLOUT_TICK)):
                return
            rec.tick()
            self._refresh(rec)
            self._notify(rec)

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

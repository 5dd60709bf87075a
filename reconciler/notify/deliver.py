"""Delivery: one thread per target POSTs its queue in order, retrying with capped exponential backoff.

A target's oldest pending notification blocks the ones behind it until it is delivered (or
dropped from a full queue): receivers see notifications in the order they happened. A 2xx
delivers; anything else — another status, a timeout, a refused connection — is recorded and
tried again after `Backoff.delay(attempts)`; attempts and the next try are stored, so a restart
continues the same schedule. The notification's id goes in `X-Palisade-Event-Id` (and in the
generic body): a receiver that answered 2xx just before a crash, or after our timeout, can get
the same id again and must treat it as the same notification.
"""
from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from reconciler.notify.config import Backoff, Target
from reconciler.notify.outbox import Outbox, Outcome, Queued
from reconciler.notify.payload import body

__all__ = ["Courier", "NotifyMetrics"]

log = logging.getLogger("palisade.notify")
_IDLE = 5.0  # seconds between queue checks with nothing pending (enqueueing wakes the courier at once)


class NotifyMetrics:
    """Counters per target and outcome, and the queue depth per target, in the server's registry."""

    def __init__(self, registry: CollectorRegistry, targets: tuple[Target, ...]) -> None:
        self.attempts = Counter(
            "palisade_notifications_total",
            "Notification delivery attempts by target and outcome (delivered, failed, timeout, unreachable, "
            "error), and notifications dropped from a full queue (outcome dropped).",
            ["target", "outcome"], registry=registry)
        self.enqueued = Counter("palisade_notifications_enqueued_total", "Notifications queued, by target.",
                                ["target"], registry=registry)
        self.queued = Gauge("palisade_notification_queue", "Undelivered notifications, by target.",
                            ["target"], registry=registry)
        for t in targets:  # zeros from the first scrape
            self.enqueued.labels(t.name)
            self.queued.labels(t.name)
            for o in Outcome:
                self.attempts.labels(t.name, str(o))

    def count(self, target: str, outcome: Outcome) -> None:
        self.attempts.labels(target, str(outcome)).inc()


class Courier:
    """The delivery thread of one target."""

    def __init__(self, target: Target, outbox: Outbox, backoff: Backoff, metrics: NotifyMetrics | None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self._outbox = outbox
        self._backoff = backoff
        self._metrics = metrics
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"palisade-notify-{target.name}", daemon=True)

    def start(self) -> None:
        # httpx logs every request with its URL at INFO, and a webhook URL is a secret.
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").getEffectiveLevel()))
        self._thread.start()

    def wake(self) -> None:
        """Something was enqueued: look at the queue now."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the attempt in flight (at most the target's timeout)."""
        self.stopping()
        self._thread.join(self.target.timeout + 5 if timeout is None else timeout)

    def stopping(self) -> None:
        """Tell the thread to stop, without waiting for it (`stop` waits)."""
        self._stopping.set()
        self._wake.set()

    def _run(self) -> None:
        with httpx.Client(timeout=self.target.timeout, follow_redirects=False,
                          headers={"User-Agent": "palisade-notify/1", "Content-Type": "application/json"}) as http:
            while not self._stopping.is_set():
                try:
                    self._step(http)
                except Exception:  # a bug or a broken outbox must not end deliveries for good
                    log.exception("notify %s: delivery loop failed; retrying", self.target.name)
                    self._stopping.wait(min(self._backoff.maximum, 30.0))

    def _step(self, http: httpx.Client) -> None:
        self._wake.clear()  # before reading: an enqueue after this read wakes the next wait
        q = self._outbox.head(self.target.name)
        if q is None:
            self._wake.wait(_IDLE)
            return
        delay = q.next_attempt - self._clock()
        if delay > 0:
            # Wait out the backoff; a wake (new row) changes nothing for the head, so only stop interrupts.
            self._stopping.wait(delay)
            return
        self._attempt(http, q)

    def _attempt(self, http: httpx.Client, q: Queued) -> None:
        n = q.notification
        status: int | None = None
        error: str | None = None
        t0 = time.perf_counter()
        try:
            r = http.post(self.target.url, content=body(self.target.kind, n),
                          headers={"X-Palisade-Event": str(n.kind), "X-Palisade-Event-Id": n.id})
            status = r.status_code
            outcome = Outcome.DELIVERED if 200 <= status < 300 else Outcome.FAILED
            if outcome is Outcome.FAILED:
                error = f"HTTP {status}"
        except httpx.TimeoutException as e:
            outcome, error = Outcome.TIMEOUT, f"no answer within {self.target.timeout:g}s ({type(e).__name__})"
        except (httpx.ConnectError, httpx.NetworkError) as e:
            outcome, error = Outcome.UNREACHABLE, self._scrub(f"{type(e).__name__}: {e}")
        except httpx.HTTPError as e:
            outcome, error = Outcome.ERROR, self._scrub(f"{type(e).__name__}: {e}")
        seconds = time.perf_counter() - t0
        retry_at = None if outcome is Outcome.DELIVERED else self._clock() + self._backoff.delay(q.attempts + 1)
        self._outbox.settle(q, outcome, status=status, error=error, seconds=round(seconds, 4), retry_at=retry_at,
                            now=_dt.datetime.now(_dt.UTC))
        if self._metrics is not None:
            self._metrics.count(self.target.name, outcome)
            self._metrics.queued.labels(self.target.name).set(self._outbox.pending().get(self.target.name, 0))
        if outcome is Outcome.DELIVERED:
            log.debug("notify %s: delivered %s", self.target.name, n.id)
        elif q.attempts == 0 or (q.attempts + 1) % 10 == 0:  # the first failure, then every tenth: no log flood
            log.warning("notify %s: %s not delivered (attempt %d): %s; retrying with backoff",
                        self.target.name, n.id, q.attempts + 1, error)

    def _scrub(self, text: str) -> str:
        """An error's text without the URL (a secret) in it."""
        return text.replace(self.target.url, f"<{self.target.name} URL>")

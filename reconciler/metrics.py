"""Prometheus metrics of `palisade serve`.

Each `Metrics` owns its own `CollectorRegistry` (never the process-global
default one), so a test can run several servers in one process and each
`/metrics` shows only its own numbers.
"""
from __future__ import annotations

import datetime as _dt
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE", "RESULTS", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The outcomes a processed commit can have (the `result` label).
RESULTS = ("accepted", "rejected", "refused")

# From a small repository on a fast disk (tens of ms) to a thousand-policy one (seconds).
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The reconciler's and the HTTP API's metrics, in one private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconcile_duration = Histogram(
            "palisade_reconcile_duration_seconds",
            "Time of one reconcile pass (fetch, validate, render, sign, publish), in seconds.",
            registry=self.registry, buckets=_DURATION_BUCKETS,
        )
        self.commits = Counter(
            "palisade_commits_processed_total",
            "Commits of the tracked branch processed, by result (accepted, rejected, refused).",
            ["result"], registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "palisade_reconcile_errors_total",
            "Reconcile passes that failed before processing a commit (unreadable repository, fetch failure, ...).",
            registry=self.registry,
        )
        self.bundle_version = Gauge(
            "palisade_bundle_version", "Newest published bundle version (0 before the first publish).",
            registry=self.registry,
        )
        self.index_serial = Gauge(
            "palisade_index_serial", "Serial of the published index (grows at every write).",
            registry=self.registry,
        )
        self.index_expiry = Gauge(
            "palisade_index_expiry_timestamp_seconds", "Expiry time of the published index, in unix seconds.",
            registry=self.registry,
        )
        self.leader = Gauge(
            "palisade_reconciler_leader",
            "1 while this server leads its state directory (holds the lock: reconciles and publishes), "
            "0 while it stands by (serves reads, waits for the lock).",
            registry=self.registry,
        )
        self.http_requests = Counter(
            "palisade_http_requests_total", "HTTP requests served, by route template, method and status code.",
            ["route", "method", "code"], registry=self.registry,
        )
        # The rollout controller's (reconciler/rollout/controller.py).
        self.rollout_stage_version = Gauge(
            "palisade_rollout_stage_version", "Bundle version pinned for each rollout stage.",
            ["stage"], registry=self.registry,
        )
        self.rollout_promotions = Counter(
            "palisade_rollout_promotions_total", "Rollout promotions, by the stage that received the version.",
            ["stage"], registry=self.registry,
        )
        self.rollout_halts = Counter(
            "palisade_rollout_halts_total", "Rollouts halted and rolled back, by the failed gate (or abort).",
            ["reason"], registry=self.registry,
        )
        self.rollout_duration = Histogram(
            "palisade_rollout_duration_seconds", "Time from publish to the last stage's promotion, in seconds.",
            registry=self.registry, buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200),
        )
        # The webhook receivers' (reconciler/serve/hooks.py); `reason` is a Refusal, `result` push or ignored.
        self.webhook_deliveries = Counter(
            "palisade_webhook_deliveries_total",
            "Verified webhook deliveries, by receiver and result (push: reconcile now; ignored: nothing to do).",
            ["receiver", "result"], registry=self.registry,
        )
        self.webhook_refusals = Counter(
            "palisade_webhook_refusals_total",
            "Webhook deliveries refused, by receiver (empty for an unknown one) and reason "
            "(bad_signature, replayed, rate_limited, ...).",
            ["receiver", "reason"], registry=self.registry,
        )
        for result in RESULTS:
            self.commits.labels(result)  # export zeros, so rate() works from the first scrape
        # `.labels()` takes a lock and builds a key each time; the request path caches the children.
        self._http_children: dict[tuple[str, str, int], Counter] = {}
        self._lock = threading.Lock()

    def count_request(self, route: str, method: str, code: int) -> None:
        key = (route, method, code)
        child = self._http_children.get(key)
        if child is None:
            with self._lock:
                child = self._http_children.setdefault(key, self.http_requests.labels(route, method, str(code)))
        child.inc()

    def count_commit(self, result: str) -> None:
        if result not in RESULTS:
            raise ValueError(f"unknown commit result {result!r}")
        self.commits.labels(result).inc()

    def count_hook(self, receiver: str, result: str) -> None:
        self.webhook_deliveries.labels(receiver, result).inc()

    def count_hook_refusal(self, receiver: str, reason: str) -> None:
        self.webhook_refusals.labels(receiver, reason).inc()

    def set_index(self, *, version: int, serial: int, expires: _dt.datetime) -> None:
        self.bundle_version.set(version)
        self.index_serial.set(serial)
        self.index_expiry.set(expires.timestamp())

    def set_leader(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

"""Prometheus metrics of `palisade-agent run`, in a private registry, served on a loopback port.

A private registry (never the process-global one) lets a fleet simulation run
many agents in one process, each counting on its own.
"""
from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.exposition import generate_latest

from .health import Health, ProblemKind

__all__ = ["AgentMetrics"]



class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.applied_version = Gauge("palisade_agent_applied_version",
                                     "Bundle version this node enforces (0: none yet).", registry=r)
        self.policies = Gauge("palisade_agent_policies", "Selected policies by status and mode.",
                              ["status", "mode"], registry=r)
        self.verification_failures = Counter(
            "palisade_agent_verification_failures_total",
            "Index or bundle refused, by reason (signature, expired, replay, rollback, digest, size, "
            "malformed, too_large, truncated).", ["reason"], registry=r)
        self.fetch_failures = Counter("palisade_agent_fetch_failures_total",
                                      "Failed requests to the reconciler, by reason.", ["reason"], registry=r)
        self.applies = Counter("palisade_agent_applies_total", "Bundles applied.", registry=r)
        self.drift_detected = Counter("palisade_agent_drift_detected_total", "Drift findings, by kind.",
                                      ["kind"], registry=r)
        self.drift_healed = Counter("palisade_agent_drift_healed_total", "Drift findings healed, by kind.",
                                    ["kind"], registry=r)
        self.events = Counter("palisade_agent_events_total", "Events seen, by type and action.",
                              ["type", "action"], registry=r)
        self.heartbeat_failures = Counter("palisade_agent_heartbeat_failures_total",
                                          "Heartbeats that did not reach the reconciler.", registry=r)
        self.lkg_starts = Counter("palisade_agent_lkg_starts_total",
                                  "Starts that enforced last-known-good from disk.", registry=r)
        self.transfer_stalls = Counter("palisade_agent_transfer_stalls_total",
                                       "Requests that missed their total deadline, by what was fetched "
                                       "(index, bundle, heartbeat).", ["what"], registry=r)
        self.index_expiry = Gauge("palisade_agent_index_expiry_timestamp_seconds",
                                  "Expiry of the index this node holds (Unix time).", registry=r)
        self.disk_errors = Counter("palisade_agent_disk_errors_total",
                                   "Writes the state directory refused, by file kind (state, events) and errno.",
                                   ["kind", "errno"], registry=r)
        self.events_dropped = Counter("palisade_agent_events_dropped_total",
                                      "Events the event log could not write (disk errors).", registry=r)
        self.callouts = Counter("palisade_agent_callouts_total",
                                "GetUrl/DnsLookup requests of policies, by action and outcome (agent/callouts.py).",
                                ["action", "outcome"], registry=r)
        self.degraded = Gauge("palisade_agent_degraded",
                              "1 while any problem holds (disk, transfer, index_expired), else 0.", registry=r)
        self.problems = Gauge("palisade_agent_problems", "Problems holding now, by kind.", ["kind"], registry=r)
        for kind in ProblemKind:
            self.problems.labels(kind).set(0)

    def set_policies(self, rows: Iterable[tuple[str, str]]) -> None:
        """(status, mode) per selected policy."""
        self.policies.clear()
        for status, mode in rows:
            self.policies.labels(status, mode).inc()

    def set_health(self, health: Health) -> None:
        held = health.problems()
        self.degraded.set(1 if held else 0)
        for kind in ProblemKind:
            self.problems.labels(kind).set(sum(1 for p in held if p.kind == kind))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics in a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)

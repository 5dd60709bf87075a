"""The agent: pull → verify → select → apply → persist, and the loops around it.

`Agent.sync_once()` is one pass of the pipeline and is what the fleet
simulation and most tests drive; `Agent.run()` is the node agent: enforce
last-known-good from disk at once, then long-poll the index forever, heartbeat
and check drift on their own intervals, until asked to stop (SIGTERM). With the
engine, what is loaded is pinned in bpffs and outlives this process; a
restarted agent adopts it (the enforcer's `loaded()` lists it) so the first
apply finds nothing to change.

Anything that fails verification is refused with the reason, counted, written
as an event, and changes nothing: the trust floor, the last-known-good copy and
what is enforced stay as they were.

Nothing the server does can freeze the agent silently, and no disk fault stops
it enforcing (see `agent.health`):
- every transfer has a total deadline and is retried with backoff (`agent.client`);
  a stall is a `transfer` problem until a transfer succeeds;
- the held index's expiry is checked on the clock, not only when a new index
  arrives: an expired index is an `index_expired` problem, the ETag is dropped so
  the next request asks for the whole index, and the last verified bundle stays
  enforced (expiry is there to stop a freeze going unnoticed, not to switch
  enforcement off: an attacker who can block the network must not gain that);
- index requests are paced (`client.Pacer`): at least `min_poll` seconds apart (but at once after a
  new bundle was applied, which only the reconciler's key can cause);
- a state directory that cannot be written (full, read-only, I/O errors) is a
  `disk` problem: what could not be written is kept in memory and written when
  the disk takes it again (`atomic.StateFiles`); the status also goes to a
  runtime copy (`runtime_status_path`) so `palisade-agent status` can say so.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime as _dt
import enum
import errno
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nacl.signing import VerifyKey

from wire.bundle import Bundle, Index, WireError, format_time, keyid, sha256_hex, verify_bundle, verify_index

from . import heartbeat, lkg, trust
from .apply import ApplyReport, Enforcer, PolicyStatus, apply, plan
from .atomic import StateFiles, write_atomic
from .callouts import Callouts
from .client import MIN_POLL, Client, Pacer
from .config import AgentConfig
from .drift import HEALABLE, DriftReport, Finding, compare
from .errors import FetchError, Stalled, WrongBundle
from .events import EventLog
from .health import Health, ProblemKind
from .metrics import AgentMetrics
from .objects import OBJECTS_DIR, ObjectStore
from .select import Desired, select, stage_of
from .workloads import WorkloadIndex

__all__ = ["RUNTIME_DIR", "STATUS_FILE", "Agent", "Artifact", "DiskFile", "SyncOutcome", "SyncResult",
           "runtime_status_path"]

log = logging.getLogger("palisade.agent")
_R = TypeVar("_R")

STATUS_FILE = "status.json"
#: Where the status goes too when the state directory cannot be written ($PALISADE_RUNTIME_DIR overrides).
RUNTIME_DIR = "/run/palisade-agent"


def runtime_status_path(state: Path) -> Path:
    """The runtime copy of `<state>/status.json` (on another file system, normally a tmpfs)."""
    base = Path(os.environ.get("PALISADE_RUNTIME_DIR") or RUNTIME_DIR)
    return base / f"status-{hashlib.sha256(str(Path(state).absolute()).encode()).hexdigest()[:16]}.json"


def _disk_reason(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, "EIO")


class SyncOutcome(enum.StrEnum):
    """What one pass of the pipeline did."""

    APPLIED = "applied"  # a new bundle (or a new selection of it) applied
    CURRENT = "current"  # a newer index of the bundle already applied
    UNCHANGED = "unchanged"  # the index is the one held (304)
    REFUSED = "refused"  # something failed verification or transfer: nothing changed


class Artifact(enum.StrEnum):
    """What the agent refused (the `what` of a refusal in status, health and events)."""

    INDEX = "index"
    BUNDLE = "bundle"
    OBJECT = "object"
    LKG = "lkg"


class DiskFile(enum.StrEnum):
    """Which writes a disk problem is about (the `kind` label of the disk-error metric)."""

    STATE = "state"  # the state directory's files
    EVENTS = "events"  # the event log


@dataclass(frozen=True)
class SyncResult:
    """What one pass did, and the bundle version enforced after it."""

    outcome: SyncOutcome
    version: int | None = None
    reason: str | None = None
    report: ApplyReport | None = None


@dataclass
class _Applied:
    index: Index
    index_bytes: bytes
    bundle: Bundle
    bundle_bytes: bytes
    stage: str
    desired: tuple[Desired, ...]
    statuses: tuple[PolicyStatus, ...]
    applied_at: _dt.datetime


@dataclass
class Counters:
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    applies: int = 0
    heartbeats_failed: int = 0
    drift_detected: int = 0
    drift_healed: int = 0


class Agent:
    """One node's agent. `persist=False` keeps trust state and last-known-good in memory only
    (the fleet simulation runs a thousand of these in one process)."""

    def __init__(self, cfg: AgentConfig, *, enforcer: Enforcer, client: Client, pubkeys: Sequence[VerifyKey],
                 metrics: AgentMetrics | None = None, events: EventLog | None = None, persist: bool = True,
                 clock: Callable[[], _dt.datetime] | None = None, min_poll: float = MIN_POLL,
                 callouts: Callouts | None = None) -> None:
        self.cfg = cfg
        #: Sends the GetUrl/DnsLookup requests events name (agent/callouts.py); None: none are sent.
        self.callouts = callouts
        self.enforcer = enforcer
        self.client = client
        self.pubkeys = list(pubkeys)
        self.metrics = metrics
        self.events = events
        self.persist = persist
        self._clock = clock or (lambda: _dt.datetime.now(_dt.UTC))
        self.labels = cfg.label_map
        self.counters = Counters()
        self.etag: str | None = None
        self.last_modified: str | None = None  # the index's, for a source that gives no ETag
        self.applied: _Applied | None = None
        self.last_error: str | None = None
        self.trust = trust.TrustState()
        self.health = Health()
        self.files = StateFiles()
        self.min_poll = min_poll
        # the runtime status copy may exist (the state directory refused the status; True at start: a copy
        # left by an earlier run goes at the first status the state directory takes)
        self._runtime_copy = True
        #: The health the last status file showed (a recovery seen off the apply path rewrites it).
        self._shown_health: dict[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop `run` runs on
        client.observe(self._on_transfer)
        if events is not None:
            events.on_error, events.on_recovered = self._on_events_error, self._on_events_recovered
        self._bundles: dict[tuple[int, str], tuple[Bundle, bytes]] = {}
        #: The verified CO-RE objects of the bundles (agent/objects.py), kept by digest.
        self.objects = ObjectStore(cfg.state / OBJECTS_DIR if persist else None)
        self.workloads = WorkloadIndex(cfg.workloads)  # events carry process.pod of their workload
        self.observations = heartbeat.Observations(cfg.workloads)
        self.last_drift: tuple[Finding, ...] = ()  # what the last check could not heal
        self._open_drift: set[tuple[str, str, str]] = set()
        self._beat_now = asyncio.Event()
        # Every call into the enforcer runs on this one thread: the engine (libbpf objects, ring buffers) is not
        # meant to be driven from several threads, and applies, drift checks and event reads must not interleave.
        self._engine_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="palisade-engine")
        self._apply_lock = asyncio.Lock()
        if persist:
            try:
                cfg.state.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as e:  # a read-only or full parent: run from memory, say so
                self._disk_failed(cfg.state, e)
            self.trust, problem = trust.load(cfg.state)
            if problem:
                log.warning("%s", problem)

    async def _in_engine(self, fn: Callable[..., _R], *args: Any) -> _R:
        if not self.enforcer.blocking:
            # in memory and quick: a thread hand-off (GIL switch interval) would cost more than the call
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._engine_thread, functools.partial(fn, *args))

    # ------------------------------------------------------------------ start

    def start_from_lkg(self) -> bool:
        """Verify last-known-good from disk and enforce it now. False if there is none or it is refused."""
        if not self.persist:
            return False
        try:
            saved = lkg.load(self.cfg.state, self.pubkeys)
        except WireError as e:
            self._refuse(Artifact.LKG, e)
            return False
        if saved is None:
            return False
        # the signed copy is a floor the unsigned trust file can never undercut
        self.trust = self.trust.raised(saved.index.serial, saved.index.version)
        self._apply_bundle(saved.index, saved.index_bytes, saved.bundle, saved.bundle_bytes, save_lkg=False)
        if self.metrics:
            self.metrics.lkg_starts.inc()
        log.info("enforcing last-known-good v%d from disk", saved.bundle.version)
        return True

    # ------------------------------------------------------------------ one pass

    async def sync_once(self, wait: float | None = None) -> SyncResult:
        """Pull the index (long-polling `wait` seconds), verify, fetch and verify the bundle, apply."""
        # An expired index is no base for "not modified": ask for the whole index again.
        expired = self.index_expired()
        etag, modified = (None, None) if expired else (self.etag, self.last_modified)
        try:
            reply = await self.client.index(etag, wait, modified)
        except FetchError as e:
            if e.refused:
                return self._refuse(Artifact.INDEX, e)
            raise
        if reply.data is None:
            self.etag, self.last_modified = reply.etag, reply.last_modified
            return SyncResult(SyncOutcome.UNCHANGED, self.version)
        try:
            index = verify_index(reply.data, self.pubkeys, now=self._clock(), min_serial=self.trust.serial,
                                 min_version=self.trust.version)
        except WireError as e:
            # Wait for something newer than this bad copy rather than fetching it again and again.
            self.etag, self.last_modified = reply.etag, reply.last_modified
            return self._refuse(Artifact.INDEX, e)
        try:
            version, bundle, bundle_bytes = await self._choose(index)
        except WireError as e:
            # The etag is kept as it was: the index is fetched again (after the loop's backoff) and the
            # bundle with it, so a bundle spoiled in transit is retried, not skipped until the next publish.
            return self._refuse(Artifact.BUNDLE, e)
        except FetchError as e:
            if e.refused:
                return self._refuse(Artifact.BUNDLE, e)
            raise
        if self.enforcer.wants_objects:
            try:
                await self.objects.fetch(self.client, bundle, select(bundle, self.cfg.sensor_id, self.labels))
            except WireError as e:  # bytes the bundle does not sign: refused like a tampered bundle
                return self._refuse(Artifact.OBJECT, e)
            except FetchError as e:
                if e.refused:
                    return self._refuse(Artifact.OBJECT, e)
                raise
        self.trust = trust.TrustState(max(self.trust.serial, index.serial), max(self.trust.version, index.version),
                                      tuple(keyid(k) for k in self.pubkeys))
        # A disk that refuses the floor keeps it in memory (written when it can): enforcement goes on.
        self._persist(trust.TRUST_FILE, trust.encode(self.trust), 0o600)
        self.etag, self.last_modified = reply.etag, reply.last_modified
        cur = self.applied
        if cur is not None and cur.bundle.version == version and cur.bundle_bytes == bundle_bytes:
            # same bundle, newer index (re-signed, re-pinned elsewhere): refresh the saved copy only
            cur.index, cur.index_bytes = index, reply.data
            self._persist(lkg.LKG_FILE, lkg.encode(reply.data, bundle_bytes), 0o600)
            self.watch_clock()
            self.write_status()
            return SyncResult(SyncOutcome.CURRENT, version)
        async with self._apply_lock:
            report = await self._in_engine(self._apply_bundle, index, reply.data, bundle, bundle_bytes)
        return SyncResult(SyncOutcome.APPLIED, version, report=report)

    async def _choose(self, index: Index) -> tuple[int, Bundle, bytes]:
        """The version pinned for this sensor's stage, fetched and verified."""
        pins = set(index.stages.values())
        if len(pins) <= 1:
            version = pins.pop() if pins else index.version
        else:
            # The stage comes from the newest staging plan, which travels in the newest bundle.
            newest, _ = await self._bundle(index, index.version)
            version = index.pinned(stage_of(newest, self.cfg.sensor_id, self.labels))
        bundle, data = await self._bundle(index, version)
        return version, bundle, data

    async def _bundle(self, index: Index, version: int) -> tuple[Bundle, bytes]:
        entry = index.entry(version)
        if entry is None:
            raise WrongBundle(f"the index pins v{version} but does not list it")
        key = (version, entry.sha256)
        if key in self._bundles:
            return self._bundles[key]
        cur = self.applied
        if cur is not None and cur.bundle.version == version and sha256_hex(cur.bundle_bytes) == entry.sha256:
            return cur.bundle, cur.bundle_bytes
        data = await self.client.bundle(version, entry.size)
        bundle = verify_bundle(data, self.pubkeys, expected_sha256=entry.sha256, expected_size=entry.size)
        if bundle.version != version:
            raise WrongBundle(f"asked for bundle v{version}, got v{bundle.version}")
        self._bundles = {key: (bundle, data)}  # keep one: the newest plan or the pinned bundle
        return bundle, data

    def _apply_bundle(self, index: Index, index_bytes: bytes, bundle: Bundle, bundle_bytes: bytes, *,
                      save_lkg: bool = True) -> ApplyReport:
        stage = stage_of(bundle, self.cfg.sensor_id, self.labels)
        desired = select(bundle, self.cfg.sensor_id, self.labels)
        if self.enforcer.wants_objects:
            self.enforcer.offer_objects(self.objects.offer(bundle, desired))
        report = apply(self.enforcer, plan(self.enforcer.loaded(), desired))
        for err in report.errors:
            log.error("%s", err)
        self.applied = _Applied(index, index_bytes, bundle, bundle_bytes, stage, desired,
                                tuple(report.policies), self._clock())
        if save_lkg:
            self._persist(lkg.LKG_FILE, lkg.encode(index_bytes, bundle_bytes), 0o600)
        self.counters.applies += 1
        refused = [p for p in report.policies if p.status != "loaded"]
        for p in refused:
            log.warning("policy %s not applied: %s", p.name, p.reason)
        log.info("applied bundle v%d (commit %s, stage %s): %d policies, %d refused, %d unloaded",
                 bundle.version, bundle.commit[:12], stage, len(report.policies), len(refused),
                 len(report.unloaded))
        if self.metrics:
            self.metrics.applies.inc()
            self.metrics.applied_version.set(bundle.version)
            self.metrics.set_policies((p.status, str(p.state)) for p in report.policies)
        self._event("policy_applied", {"version": bundle.version, "commit": bundle.commit, "stage": stage,
                                       "detail": f"v{bundle.version} {len(report.policies)} policies, "
                                                 f"{len(refused)} refused"})
        self.watch_clock()
        self.write_status()
        return report

    def reapply(self) -> ApplyReport | None:
        """Apply the current selection again (the drift healer): whatever is missing or altered is reloaded."""
        cur = self.applied
        if cur is None:
            return None
        report = apply(self.enforcer, plan(self.enforcer.loaded(), cur.desired))
        cur.statuses = tuple(report.policies)
        self.write_status()
        return report

    # ------------------------------------------------------------------ reporting

    @property
    def version(self) -> int | None:
        return self.applied.bundle.version if self.applied else None

    def _refuse(self, what: Artifact, err: WireError | FetchError) -> SyncResult:
        # the failure's class names its kind (`code`), never the message text: rewording changes no label
        label = err.code
        message = str(err)
        self.counters.refused[label] += 1
        self.last_error = f"{what} refused: {message}"
        self.health.refused(what, label, message, self._clock())
        log.error("%s refused (%s): %s; still enforcing %s", what, label, message,
                  f"v{self.version}" if self.version else "nothing")
        if self.metrics:
            self.metrics.verification_failures.labels(label).inc()
        self._event("verification_refused", {"what": what, "reason": label, "detail": message})
        self.write_status()
        return SyncResult(SyncOutcome.REFUSED, self.version, reason=message)

    # ------------------------------------------------------------------ health: transfers, clock, disk

    def _on_transfer(self, what: str, err: FetchError | None) -> None:
        """Every attempt of the client: a failure is a `transfer` problem until the same kind succeeds."""
        key = f"transfer:{what}"
        if err is None:
            old = self.health.clear(key)
            if old is not None:
                log.info("%s transfers work again (failing since %s: %s)", what, format_time(old.since), old.reason)
                self._health_changed()
            return
        new = self.health.report(key, ProblemKind.TRANSFER, err.code, str(err), self._clock())
        if self.metrics:
            self.metrics.fetch_failures.labels(err.code).inc()
            if isinstance(err, Stalled):
                self.metrics.transfer_stalls.labels(what).inc()
        if new:
            log.warning("%s transfer failing (%s): %s; retrying with backoff, still enforcing %s", what,
                        err.code, err, f"v{self.version}" if self.version else "nothing")
            self._health_changed()
        else:
            self.write_status()  # the count and the time of the last failure (at most once per attempt)

    def index_expired(self) -> bool:
        cur = self.applied
        return cur is not None and cur.index.expires <= self._clock()

    def watch_clock(self) -> None:
        """Expiry on the clock: the held index expires while the server says nothing new, or nothing at all."""
        cur = self.applied
        if self.metrics and cur is not None:
            self.metrics.index_expiry.set(cur.index.expires.timestamp())
        if self.index_expired():
            assert cur is not None
            detail = (f"the index (serial {cur.index.serial}) expired at {format_time(cur.index.expires)}; "
                      f"still enforcing v{cur.bundle.version}, the last verified bundle, until the server "
                      f"sends a newer signed index")
            if self.health.report("index_expired", ProblemKind.INDEX_EXPIRED, "expired", detail, self._clock()):
                log.warning("%s", detail)
                self._event("index_expired", {"serial": cur.index.serial, "version": cur.bundle.version,
                                              "expires": format_time(cur.index.expires), "detail": detail})
                self._health_changed()
        elif self.health.clear("index_expired") is not None:
            log.info("a fresh index arrived: no longer expired")
            self._health_changed()

    def _persist(self, name: str, data: bytes, mode: int) -> bool:
        """Write a state file; on a disk fault keep it for `flush_state` and report a `disk` problem."""
        if not self.persist:
            return True
        if self.files.write(self.cfg.state / name, data, mode):
            self._disk_ok(DiskFile.STATE)
            return True
        assert self.files.error is not None
        self._disk_failed(self.files.error_path or self.cfg.state / name, self.files.error)
        return False

    def flush_state(self) -> bool:
        """Write what the disk refused before; True when nothing is left pending."""
        if not self.persist or not self.files.pending:
            return True
        if self.files.flush():
            log.info("state directory %s writable again: wrote what was pending", self.cfg.state)
            self._disk_ok(DiskFile.STATE)
            self.write_status()
            return True
        assert self.files.error is not None
        self._disk_failed(self.files.error_path or self.cfg.state, self.files.error)
        return False

    def _disk_failed(self, path: Path, e: OSError, key: DiskFile = DiskFile.STATE) -> None:
        reason = _disk_reason(e)
        detail = f"cannot write {path}: {e.strerror or e}; kept in memory, written when the disk takes it"
        if self.metrics:
            self.metrics.disk_errors.labels(key, reason).inc()
        if self.health.report(f"disk:{key}", ProblemKind.DISK, reason, detail, self._clock()):
            log.error("disk: %s; still enforcing %s", detail, f"v{self.version}" if self.version else "nothing")
            self._health_changed(write=False)

    def _disk_ok(self, key: DiskFile) -> None:
        if self.health.clear(f"disk:{key}") is not None:
            log.info("disk: %s writes work again", key)
            self._health_changed(write=False)

    def _on_events_error(self, e: OSError) -> None:
        self._disk_failed(self.events.path if self.events is not None else self.cfg.state, e, key=DiskFile.EVENTS)
        if self.metrics:
            self.metrics.events_dropped.inc()

    def _on_events_recovered(self) -> None:
        self._disk_ok(DiskFile.EVENTS)

    def _health_changed(self, *, write: bool = True) -> None:
        if self.metrics:
            self.metrics.set_health(self.health)
        self._wake_heartbeat()  # tell the reconciler now, not at the next interval
        if write:
            self.write_status()

    def _wake_heartbeat(self) -> None:
        # problems are raised on the engine thread too, and an asyncio.Event belongs to its loop's thread
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._beat_now.set)
                return
        self._beat_now.set()

    def _event_doc(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return {kind: body, "node_name": self.cfg.sensor_id, "time": self._clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ")}

    def _event(self, kind: str, body: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.write(self._event_doc(kind, body))

    def status(self) -> dict[str, Any]:
        """What this node enforces and why (also written to <state>/status.json for `palisade-agent status`)."""
        cur = self.applied
        return {
            "sensor": self.cfg.sensor_id,
            "labels": self.labels,
            "version": cur.bundle.version if cur else None,
            "commit": cur.bundle.commit if cur else None,
            "author": cur.bundle.author if cur else None,
            "approvers": list(cur.bundle.approvers) if cur else [],
            "stage": cur.stage if cur else None,
            "appliedAt": cur.applied_at.strftime("%Y-%m-%dT%H:%M:%SZ") if cur else None,
            "indexSerial": self.trust.serial,
            "indexExpires": cur.index.expires.strftime("%Y-%m-%dT%H:%M:%SZ") if cur else None,
            "policies": [p.to_json() for p in cur.statuses] if cur else [],
            "refusals": dict(self.counters.refused),
            "lastError": self.last_error,
            "health": self.health.to_json(),
            "updated": time.time(),
        }

    def write_status(self) -> None:
        """`<state>/status.json`; while the state directory refuses it, the runtime copy instead."""
        if not self.persist:
            return
        doc = self.status()
        self._shown_health = doc["health"]
        data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        if self._persist(STATUS_FILE, data, 0o644):
            if self._runtime_copy:
                with contextlib.suppress(OSError):
                    runtime_status_path(self.cfg.state).unlink()
                self._runtime_copy = False
            return
        data = json.dumps(self.status(), indent=2, sort_keys=True).encode() + b"\n"  # with the disk problem
        runtime = runtime_status_path(self.cfg.state)
        try:
            runtime.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            write_atomic(runtime, data, 0o644)
            self._runtime_copy = True
        except OSError as e:
            log.warning("runtime status copy %s: %s", runtime, e.strerror or e)

    # ------------------------------------------------------------------ drift

    def check_drift(self) -> DriftReport:
        """Compare the kernel with what was applied; heal what can be healed; report both."""
        cur = self.applied
        found: list[Finding] = list(self.enforcer.drift())
        if cur is not None:
            refused = frozenset(p.name for p in cur.statuses if p.status != "loaded")
            found += compare(self.enforcer.loaded(), cur.desired, refused)
        if not found:
            self.last_drift = ()
            self._open_drift = set()
            return DriftReport((), (), ())
        for f in found:
            if (f.kind, f.policy, f.detail) in self._open_drift:
                continue  # still there since the last check (one we cannot heal): reported once
            self.counters.drift_detected += 1
            log.warning("drift: %s %s: %s", f.kind, f.policy, f.detail)
            if self.metrics:
                self.metrics.drift_detected.labels(f.kind).inc()
            self._event("drift_detected", {"kind": f.kind, "policy": f.policy, "detail": f.detail})
        for f in found:
            if f.handle is not None and f.kind in HEALABLE:
                try:
                    self.enforcer.repair(f.handle)
                except Exception as e:
                    log.error("repair of %s failed: %s", f.policy, e)
        self.reapply()
        # what is still wrong after healing stays unhealed
        still = {(f.kind, f.policy) for f in self.enforcer.drift()}
        if cur is not None:
            refused = frozenset(p.name for p in cur.statuses if p.status != "loaded")
            still |= {(f.kind, f.policy) for f in compare(self.enforcer.loaded(), cur.desired, refused)}
        healed = tuple(f for f in found if f.kind in HEALABLE and (f.kind, f.policy) not in still)
        unhealed = tuple(f for f in found if f not in healed)
        for f in healed:
            self.counters.drift_healed += 1
            log.info("drift healed: %s %s", f.kind, f.policy)
            if self.metrics:
                self.metrics.drift_healed.labels(f.kind).inc()
            self._event("drift_healed", {"kind": f.kind, "policy": f.policy, "detail": f.detail})
        self.last_drift = unhealed
        self._open_drift = {(f.kind, f.policy, f.detail) for f in unhealed}
        return DriftReport(tuple(found), healed, unhealed)

    # ------------------------------------------------------------------ heartbeat and events

    def heartbeat_document(self) -> dict[str, Any]:
        return heartbeat.document(
            self.status(),
            drift={"detected": self.counters.drift_detected, "healed": self.counters.drift_healed,
                   "unhealed": len(self.last_drift), "findings": [f.to_json() for f in self.last_drift]},
            counters={**self.enforcer.counters(), "refusals": sum(self.counters.refused.values()),
                      "applies": self.counters.applies},
            observations=self.observations.take(), now=self._clock(), health=self.health.to_json())

    async def send_heartbeat(self) -> bool:
        try:
            await self.client.heartbeat(self.cfg.sensor_id, self.heartbeat_document())
            return True
        except FetchError as e:
            self.counters.heartbeats_failed += 1
            log.warning("heartbeat failed: %s", e)
            if self.metrics:
                self.metrics.heartbeat_failures.inc()
            return False

    def pump_events(self, timeout: float = 0.2) -> int:
        """Move the engine's events to the log, the metrics and the observations. Blocking (a thread)."""
        events = self.enforcer.poll_events(timeout)
        for ev in events:
            kind = next((k for k in ev if k.startswith("process_")), "other")
            body = ev.get(kind) if isinstance(ev.get(kind), dict) else {}
            action = str(body.get("action", "")) if isinstance(body, dict) else ""
            if self.metrics:
                self.metrics.events.labels(kind, action or "none").inc()
            self.workloads.annotate(ev)
            self.observations.add(ev)
            if self.callouts is not None:
                self.callouts.submit(ev)  # only queues: the requests go on its own threads
        if self.events is not None:
            self.events.write_many(events)
        return len(events)

    # ------------------------------------------------------------------ the loops

    async def pull_loop(self, stop: asyncio.Event) -> None:
        """Long-poll forever; transient failures are retried inside the client, the rest backs off here.

        Requests are paced (`Pacer`): whatever the server answers, and however fast, two index
        requests start at least `min_poll` seconds apart, except right after a new bundle was applied.
        A bundle source without long-poll (a static server) is polled every `bundles.poll` seconds, jittered,
        and never asked to wait."""
        delay = 0.5
        wait: float | None = self.cfg.intervals.wait
        pace = Pacer(self.min_poll, max(self.min_poll, self.cfg.intervals.wait), self.min_poll)
        if not self.cfg.long_poll:
            assert self.cfg.bundles is not None
            wait, pace = None, Pacer.polling(max(self.min_poll, self.cfg.bundles.poll))
        started: float | None = None
        while not stop.is_set():
            if started is not None:
                pause = started + pace.gap - time.monotonic()
                if pause > 0:
                    await _sleep_or_stop(stop, pause)
                    if stop.is_set():
                        break
            started = time.monotonic()
            try:
                result = await self.sync_once(wait)
            except FetchError as e:
                self.last_error = str(e)
                log.warning("pull failed (%s): %s", e.code, e)  # counted by _on_transfer
                result = SyncResult(SyncOutcome.REFUSED, self.version, e.code)
            except Exception:  # a bug must not stop enforcement updates for good
                log.exception("pull pass failed")
                result = SyncResult(SyncOutcome.REFUSED, self.version, "internal error")
            pace = pace.after(result.outcome, time.monotonic() - started, wait)
            self.watch_clock()
            if result.outcome is SyncOutcome.APPLIED:
                self._beat_now.set()
            if result.outcome is SyncOutcome.REFUSED:
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, self.cfg.intervals.retry_max)
            else:
                delay = 0.5

    async def heartbeat_loop(self, stop: asyncio.Event) -> None:
        """Every interval, and at once after an apply (the rollout controller waits for these reports)."""
        while not stop.is_set():
            self._beat_now.clear()
            await self.send_heartbeat()
            await _sleep_or_stop(stop, self.cfg.intervals.heartbeat, self._beat_now)

    async def housekeeping_loop(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Whatever else is stuck (a stalled transfer, a long-poll): the clock is watched and what the
        disk refused is written again, every second."""
        while not stop.is_set():
            await _sleep_or_stop(stop, every)
            try:
                self.watch_clock()
                if self.events is not None and self.events.failing:
                    self.events.retry(self._event_doc("events_dropped", {
                        "count": self.events.dropped, "detail": f"{self.events.dropped} events could not be "
                                                               f"written (disk errors)"}))
                await self._in_engine(self.flush_state)
                if self.persist and self.health.to_json() != self._shown_health:
                    # e.g. the event log writing again: status and `palisade-agent status` follow within a second
                    await self._in_engine(self.write_status)
            except Exception:
                log.exception("housekeeping failed")

    async def drift_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_or_stop(stop, self.cfg.intervals.drift)
            if stop.is_set():
                break
            async with self._apply_lock:
                try:
                    await self._in_engine(self.check_drift)
                except Exception:
                    log.exception("drift check failed")

    async def events_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                # waits in the kernel (epoll) up to 20 ms for the first event: an event is read as it comes,
                # and an apply queued on the engine thread waits at most that long
                n = await self._in_engine(self.pump_events, 0.02)
            except Exception:
                log.exception("reading events failed")
                n, started = 0, time.monotonic()  # and wait before trying again
            if n == 0 and time.monotonic() - started < 0.01:  # an enforcer with nothing to wait on
                await _sleep_or_stop(stop, 0.1)

    async def run(self, stop: asyncio.Event) -> None:
        """Enforce last-known-good, then pull, heartbeat, watch drift and events until `stop` is set."""
        self._loop = asyncio.get_running_loop()
        await self._in_engine(self.start_from_lkg)
        self.write_status()
        tasks = [asyncio.create_task(loop(stop)) for loop in
                 (self.pull_loop, self.heartbeat_loop, self.drift_loop, self.events_loop, self.housekeeping_loop)]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    waits = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waits.append(asyncio.ensure_future(wake.wait()))
    _, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for w in pending:
        w.cancel()

"""The rollout controller: reads heartbeats, decides (rollout.py), re-pins the index, keeps the record.

State lives in `<state>/rollout.db` (SQLite, WAL):

    progress         one row: the rollout's `Progress` and the pins it wants the index to carry
    plans            per published version: whether it was fast-tracked and the change's classification
    sensor_versions  per sensor, each version it ran: when it began and stopped, and its counters at the
                     start (enforcement actions and errors during a bake are measured from there)
    requests         operators' pause / resume / abort, queued by `palisade rollout` (any process)
                     and applied by the reconciler at its next tick

Only the reconciler that holds the state lock writes progress and the index. A
decision is saved (progress + wanted pins) before it is logged in the ledger and
before the index is re-pinned; at every tick an index whose pins differ from the
wanted ones is re-pinned, so a crash between the steps neither loses a promotion
nor repeats one, and a restart mid-bake keeps the bake's start time.

New bundles: the reconciler publishes through `StagedStore`, which asks
`Controller.publish_pins` for the pins of the new index — the first stage gets the
new version, the others keep the last version that completed a rollout (every stage
at once when the change only relaxes enforcement and the plan allows fast-track) —
so no agent outside the first stage ever sees an index that pins it to the new
version before its turn.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wire.bundle import DEFAULT_STAGE, Bundle, Index, format_time, parse_bundle, parse_index, parse_time

from . import statedir
from .errors import PalisadeError, StateError, VerificationError
from .rollout import Action, AgentReport, Decision, Progress, evaluate, operate, start
from .store import Store

if TYPE_CHECKING:
    from .fleet import AgentRecord
    from .ledger import Ledger
    from .metrics import Metrics

__all__ = ["ACTOR", "DB_FILE", "Controller", "RolloutDB", "StagedStore", "read_status"]

log = logging.getLogger("palisade.rollout")

DB_FILE = statedir.ROLLOUT_DB
#: The actor of the controller's own ledger rows (operators' rows carry the operator's name).
ACTOR = "palisade-rollout"
#: An agent silent for longer than this is not reporting (agents heartbeat every 10s by default).
DEFAULT_STALE_AFTER = _dt.timedelta(seconds=30)
#: How often `palisade serve` ticks the controller between reconcile passes.
TICK_SECONDS = 1.0
VERBS = ("pause", "resume", "abort")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    progress TEXT NOT NULL,
    pins TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plans (
    version INTEGER PRIMARY KEY,
    relaxing INTEGER NOT NULL,
    fast_tracked INTEGER NOT NULL,
    reasons TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sensor_versions (
    sensor TEXT NOT NULL,
    version INTEGER NOT NULL,
    began TEXT NOT NULL,
    ended TEXT,
    base_actions INTEGER NOT NULL,
    base_errors INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sensor_versions_open ON sensor_versions (sensor, ended);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    verb TEXT NOT NULL,
    reason TEXT NOT NULL,
    operator TEXT NOT NULL,
    requested TEXT NOT NULL,
    applied TEXT,
    result TEXT
);
"""


# ---------------------------------------------------------------------------
# The database


@dataclass(frozen=True)
class SensorVersion:
    sensor: str
    version: int
    began: _dt.datetime
    ended: _dt.datetime | None
    base_actions: int
    base_errors: int

    def to_json(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "version": self.version, "began": format_time(self.began),
                "ended": format_time(self.ended) if self.ended else None}


@dataclass(frozen=True)
class Request:
    id: int
    verb: str
    reason: str
    operator: str
    requested: _dt.datetime
    applied: _dt.datetime | None
    result: str | None


class RolloutDB:
    """`<state>/rollout.db`. Several processes may open it (the CLI queues requests beside the reconciler)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, state_dir: Path | statedir.StateView, *, readonly: bool = False) -> RolloutDB:
        state = statedir.StateDir.of(state_dir)
        path = state.rollout_db
        try:
            if readonly:
                if not path.is_file():
                    raise StateError(f"no rollout state at {path} (has a reconciler run with --state {state.root}?)")
                db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                     timeout=10)
            else:
                state.create()
                db = sqlite3.connect(path, isolation_level=None, timeout=10)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StateError(f"cannot open the rollout state {path}: {e}") from None
        db.row_factory = sqlite3.Row
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise StateError(f"rollout state write failed ({self.path}): {e}") from None

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as e:
            raise StateError(f"cannot read the rollout state {self.path}: {e}") from None

    # progress

    def load(self) -> tuple[Progress, dict[str, int]]:
        rows = self._rows("SELECT progress, pins FROM progress WHERE id = 1")
        if not rows:
            return Progress(), {}
        return _progress_from(json.loads(rows[0]["progress"])), json.loads(rows[0]["pins"])

    def save(self, progress: Progress, pins: Mapping[str, int]) -> None:
        doc = progress.to_json()
        # Full precision: a bake resumed after a restart must not end even a fraction of a second early.
        doc["since"] = progress.since.isoformat() if progress.since else None
        doc["started"] = progress.started.isoformat() if progress.started else None
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO progress VALUES (1, ?, ?)",
                       (json.dumps(doc, sort_keys=True), json.dumps(dict(pins), sort_keys=True)))

    # settings (the running controller's, so readers judge agents the same way)

    def stale_after(self) -> _dt.timedelta | None:
        rows = self._rows("SELECT value FROM settings WHERE key = 'stale_after'")
        return _dt.timedelta(seconds=float(rows[0]["value"])) if rows else None

    def set_stale_after(self, value: _dt.timedelta) -> None:
        if self.stale_after() != value:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO settings VALUES ('stale_after', ?)",
                           (str(value.total_seconds()),))

    # plans

    def save_plan(self, version: int, relaxing: bool, fast_tracked: bool, reasons: Sequence[str]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO plans VALUES (?, ?, ?, ?)",
                       (version, int(relaxing), int(fast_tracked), json.dumps(list(reasons))))

    def plan(self, version: int) -> tuple[bool, bool, list[str]] | None:
        rows = self._rows("SELECT * FROM plans WHERE version = ?", (version,))
        if not rows:
            return None
        return bool(rows[0]["relaxing"]), bool(rows[0]["fast_tracked"]), json.loads(rows[0]["reasons"])

    # sensor versions

    def sensor_versions(self, sensor: str | None = None) -> list[SensorVersion]:
        sql, args = "SELECT * FROM sensor_versions", tuple[str, ...]()
        if sensor is not None:
            sql, args = sql + " WHERE sensor = ?", (sensor,)
        return [_sv(r) for r in self._rows(sql + " ORDER BY began, rowid", args)]

    def open_versions(self) -> dict[str, SensorVersion]:
        return {r["sensor"]: _sv(r) for r in self._rows("SELECT * FROM sensor_versions WHERE ended IS NULL")}

    def switch_versions(self, switches: Sequence[tuple[str, int | None, _dt.datetime, int, int]]) -> None:
        """For each (sensor, version, at, base actions, base errors): close the sensor's open interval at
        `at` and open one for `version` (None: it runs nothing). One transaction for a whole fleet wave."""
        if not switches:
            return
        with self._tx() as db:
            for sensor, version, at, actions, errors in switches:
                db.execute("UPDATE sensor_versions SET ended = ? WHERE sensor = ? AND ended IS NULL",
                           (format_time(at), sensor))
                if version is not None:
                    db.execute("INSERT INTO sensor_versions VALUES (?, ?, ?, NULL, ?, ?)",
                               (sensor, version, format_time(at), actions, errors))

    def rebase(self, sensor: str, actions: int, errors: int) -> None:
        """The agent's counters went down (it restarted): measure from zero again."""
        with self._tx() as db:
            db.execute("UPDATE sensor_versions SET base_actions = ?, base_errors = ? "
                       "WHERE sensor = ? AND ended IS NULL", (actions, errors, sensor))

    # requests

    def request(self, verb: str, reason: str, operator: str, now: _dt.datetime) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO requests (verb, reason, operator, requested) VALUES (?, ?, ?, ?)",
                             (verb, reason, operator, format_time(now)))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def pending_requests(self) -> list[Request]:
        return [_request(r) for r in self._rows("SELECT * FROM requests WHERE applied IS NULL ORDER BY id")]

    def get_request(self, rid: int) -> Request | None:
        rows = self._rows("SELECT * FROM requests WHERE id = ?", (rid,))
        return _request(rows[0]) if rows else None

    def settle_request(self, rid: int, result: str, now: _dt.datetime) -> None:
        with self._tx() as db:
            db.execute("UPDATE requests SET applied = ?, result = ? WHERE id = ?", (format_time(now), result, rid))


def _sv(r: sqlite3.Row) -> SensorVersion:
    return SensorVersion(r["sensor"], r["version"], parse_time(r["began"]),
                         parse_time(r["ended"]) if r["ended"] else None, r["base_actions"], r["base_errors"])


def _request(r: sqlite3.Row) -> Request:
    return Request(r["id"], r["verb"], r["reason"], r["operator"], parse_time(r["requested"]),
                   parse_time(r["applied"]) if r["applied"] else None, r["result"])


def _progress_from(d: Mapping[str, Any]) -> Progress:
    def t(key: str) -> _dt.datetime | None:
        return _dt.datetime.fromisoformat(d[key]).astimezone(_dt.UTC) if d.get(key) else None

    return Progress(target=d.get("target"), stable=d.get("stable"), stage=d.get("stage", -1), since=t("since"),
                    started=t("started"), paused=bool(d.get("paused")), halted=d.get("halted"),
                    aborted=d.get("aborted"), fast_tracked=bool(d.get("fastTracked")))


# ---------------------------------------------------------------------------
# Heartbeats → reports


def _actions(counters: Mapping[str, Any]) -> int:
    # The false-positive alarm counts what was done and what would have been done (enforce_ready dry runs).
    return int(counters.get("enforced", 0) or 0) + int(counters.get("wouldHaveEnforced", 0) or 0)


def _errors(counters: Mapping[str, Any]) -> int:
    return int(counters.get("errors", 0) or 0) + int(counters.get("refusals", 0) or 0)


def _report(agent: AgentRecord, interval: SensorVersion | None) -> AgentReport:
    actions, errors = _actions(agent.counters), _errors(agent.counters)
    if interval is not None and interval.version == agent.version:
        actions = actions - interval.base_actions if actions >= interval.base_actions else actions
        errors = errors - interval.base_errors if errors >= interval.base_errors else errors
    refused = sum(1 for p in agent.policies if p.get("status") == "refused")
    drift = agent.drift.get("unhealed", 0) if isinstance(agent.drift, Mapping) else 0
    return AgentReport(agent.id, tuple(sorted(agent.labels.items())), agent.version, agent.last_seen,
                       errors=max(errors, 0), refused=refused,
                       unhealed_drift=drift if isinstance(drift, int) else 0, enforcement_actions=max(actions, 0))


# ---------------------------------------------------------------------------
# The controller


class StagedStore(Store):
    """A `Store` whose publishes take their stage pins from the rollout controller."""

    plan_pins: Callable[[Bundle], Mapping[str, int] | None] | None = None

    def publish(self, bundle: bytes, *, now: _dt.datetime | None = None, expiry: _dt.timedelta | None = None,
                stages: Mapping[str, int] | None = None) -> Index:
        if stages is None and self.plan_pins is not None:
            stages = self.plan_pins(parse_bundle(bundle))
        return super().publish(bundle, now=now, expiry=expiry, stages=stages)


class Controller:
    """The rollout of one state directory. Lives in the reconciler's thread (it shares its ledger)."""

    def __init__(self, state_dir: Path | statedir.StateDir, ledger: Ledger, store: Store, *,
                 clock: Callable[[], _dt.datetime] | None = None,
                 stale_after: _dt.timedelta = DEFAULT_STALE_AFTER, metrics: Metrics | None = None) -> None:
        self.state = statedir.StateDir.of(state_dir)
        self.state_dir = self.state.root
        self.ledger = ledger
        self.store = store
        self.db = RolloutDB.open(self.state)
        self.stale_after = stale_after
        self.metrics = metrics
        self._clock = clock or (lambda: _dt.datetime.now(_dt.UTC))
        self._fleet: Any = None
        # Each agent's counters at its previous heartbeat: what happened between loading a version and the
        # first heartbeat that reports it counts for the new version.
        self._counters: dict[str, tuple[int, int]] = {}
        self._bundles: dict[int, Bundle] = {}
        self.last: Decision | None = None
        if isinstance(store, StagedStore):
            store.plan_pins = self.publish_pins

    def close(self) -> None:
        self.db.close()
        if self._fleet is not None:
            self._fleet.close()

    # -- publishing ---------------------------------------------------------------

    def publish_pins(self, bundle: Bundle) -> dict[str, int] | None:
        """The stage pins of the index that publishes `bundle` (None: the store's default, every stage)."""
        index = self.store.index()
        if index is None or bundle.version <= index.version:
            return None  # the first publish goes everywhere; a repeated publish is a no-op anyway
        progress, _ = self.db.load()
        try:
            relaxing, reasons = self._classify(index, bundle)
        except Exception as e:  # never block a publish on the classification: stage by stage is always safe
            log.exception("cannot classify v%d", bundle.version)
            relaxing, reasons = False, [f"cannot classify the change: {e}"]
        fast = bool(bundle.staging and bundle.staging.fast_track and relaxing)
        self.db.save_plan(bundle.version, relaxing, fast, reasons)
        _, pins = start(bundle.staging, progress, index.stages, bundle.version, relaxing=relaxing, now=self._now())
        return pins

    def _classify(self, index: Index, new: Bundle) -> tuple[bool, list[str]]:
        """Relaxing only if it relaxes (or keeps) what every stage runs now."""
        from .plan import classify

        relaxing, reasons = True, list[str]()
        for v in sorted(set(index.stages.values())):
            old = self.bundle(v)
            if old is None:
                return False, [f"v{v} cannot be read to compare with"]
            c = classify(old.policies, new.policies, before_groups=old.groups, after_groups=new.groups)
            relaxing = relaxing and c.relaxing
            reasons.extend(f"vs v{v}: {r}" for r in c.reasons)
        return relaxing, reasons

    def bundle(self, version: int) -> Bundle | None:
        if version not in self._bundles:
            data = self.store.bundle_bytes(version)
            if data is None:
                return None
            try:
                parsed = parse_bundle(data)
            except VerificationError:
                return None
            if len(self._bundles) >= 16:
                # the oldest read goes; not the lowest version, which a stage may still pin
                self._bundles.pop(next(iter(self._bundles)))
            self._bundles[version] = parsed
        return self._bundles[version]

    # -- the tick -----------------------------------------------------------------

    def tick(self) -> Decision | None:
        """One step: notice a new bundle, apply operators' requests, read heartbeats, decide, act."""
        index = self.store.index()
        if index is None:
            return None
        now = self._now()
        self.db.set_stale_after(self.stale_after)
        progress, wanted = self.db.load()
        if progress.target is None or index.version > progress.target:
            progress, wanted, index = self._begin(index, progress, now)
        elif wanted and dict(index.stages) != wanted and set(wanted.values()) <= {b.version for b in index.bundles}:
            # A crash came between saving a decision and re-pinning: finish it.
            index = self.store.pin(wanted, now=now)
        progress, index = self._requests(progress, index, now)
        reports = self._reports(now)
        target = self.bundle(progress.target) if progress.target is not None else None
        decision = evaluate(target, progress, index.stages, reports, now=now, stale_after=self.stale_after)
        if decision.action in (Action.PROMOTE, Action.DONE, Action.HALT):
            self._act(decision, index, now)
        elif decision.action == Action.HOLD and (self.last is None or self.last.reason != decision.reason):
            log.info("rollout of v%s holds at %s: %s", progress.target, decision.stage, decision.reason)
        self.last = decision
        self._gauges(self.store.index() or index)
        return decision

    def _begin(self, index: Index, progress: Progress, now: _dt.datetime) -> tuple[Progress, dict[str, int], Index]:
        target = self.bundle(index.version)
        if target is None:
            # Without its plan, nothing can be pinned safely; the publish already pinned the first stage only.
            raise StateError(f"cannot read bundle v{index.version} to start its rollout")
        plan = target.staging
        if progress.target is None and progress.stable is None:
            # No record yet (first publish, or state from before the controller): adopt what the index says.
            last = plan.stages[-1].name if plan and plan.stages else DEFAULT_STAGE
            stable = index.stages.get(last, index.pinned(None))
            if stable == index.version:
                new = Progress(target=index.version, stable=index.version, stage=len(plan.stages) - 1 if plan else -1,
                               since=now, started=now)
                self.db.save(new, dict(index.stages))
                self.ledger.record_event("rollout-completed", f"v{index.version}",
                                         {"stages": dict(index.stages), "reason": "first version: every stage"},
                                         ACTOR, now=now)
                return new, dict(index.stages), index
            progress = Progress(target=stable, stable=stable)
        saved = self.db.plan(index.version)
        relaxing, _, reasons = saved if saved is not None else (False, False, [])
        new, pins = start(plan, progress, index.stages, index.version, relaxing=relaxing, now=now)
        interrupted = progress.target if progress.active else None
        self.db.save(new, pins)
        detail = {"stage": plan.stages[0].name if plan and plan.stages else None, "fastTracked": new.fast_tracked,
                  "classification": {"kind": "relaxing" if relaxing else "tightening", "reasons": reasons},
                  "stable": new.stable, "pins": pins}
        if interrupted is not None:
            detail["supersedes"] = interrupted
        self.ledger.record_event("rollout-started", f"v{index.version}", detail, ACTOR, now=now)
        if new.fast_tracked:
            self.ledger.record_event("rollout-completed", f"v{index.version}",
                                     {"stages": pins, "reason": "relaxing change, fast-tracked to every stage"},
                                     ACTOR, now=now)
            self._count("promotions", "all")
        if dict(index.stages) != pins:
            index = self.store.pin(pins, now=now)
        return new, pins, index

    def _requests(self, progress: Progress, index: Index, now: _dt.datetime) -> tuple[Progress, Index]:
        for req in self.db.pending_requests():
            target = self.bundle(progress.target) if progress.target is not None else None
            plan = target.staging if target is not None else None
            try:
                new, pins, what = operate(progress, plan, index.stages, req.verb, req.reason, now=now)
            except ValueError as e:
                self.db.settle_request(req.id, f"refused: {e}", now)
                continue
            if new != progress or pins:
                self.db.save(new, pins or dict(index.stages))
                detail: dict[str, Any] = {"reason": req.reason, "result": what, "target": progress.target,
                                          "stage": _stage(plan, progress.stage)}
                if pins:
                    detail["pins"] = pins
                kind = {"pause": "rollout-paused", "resume": "rollout-resumed", "abort": "rollout-aborted"}[req.verb]
                self.ledger.record_event(kind, f"v{progress.target}", detail, req.operator, now=now)
                if req.verb == "abort":
                    self.ledger.record_event("rollout-rolled-back", f"v{progress.target}",
                                             {"pins": pins, "to": progress.stable, "reason": req.reason},
                                             req.operator, now=now)
                    self._count("halts", "abort")
                if pins and dict(index.stages) != pins:
                    index = self.store.pin(pins, now=now)
                progress = new
            self.db.settle_request(req.id, what, now)
        return progress, index

    def _reports(self, now: _dt.datetime) -> list[AgentReport]:
        agents = self._agents()
        opened = self.db.open_versions()
        switches: list[tuple[str, int | None, _dt.datetime, int, int]] = []
        began: list[tuple[str, dict[str, Any]]] = []
        out = []
        for a in agents:
            cur = opened.get(a.id)
            counters = (_actions(a.counters), _errors(a.counters))
            if (cur.version if cur else None) != a.version and (cur is not None or a.version is not None):
                # The first heartbeat that reports a new loaded version: the sensor began enforcing it.
                base = self._counters.get(a.id, counters)
                if base[0] > counters[0] or base[1] > counters[1]:
                    base = (0, 0)  # the agent restarted with the new version
                switches.append((a.id, a.version, a.last_seen, *base))
                previous = cur.version if cur else None
                cur = None if a.version is None else SensorVersion(a.id, a.version, a.last_seen, None, *base)
                began.append((a.id, {"version": a.version, "previous": previous, "at": format_time(a.last_seen)}))
            elif cur is not None and (counters[0] < cur.base_actions or counters[1] < cur.base_errors):
                self.db.rebase(a.id, 0, 0)
                cur = replace(cur, base_actions=0, base_errors=0)
            self._counters[a.id] = counters
            out.append(_report(a, cur))
        # The record first, then the ledger rows: a crash in between repeats no row.
        self.db.switch_versions(switches)
        for sensor, detail in began:
            self.ledger.record_event("sensor-version", sensor, detail, ACTOR, now=now)
        return out

    def _agents(self) -> list[AgentRecord]:
        if not self.state.has_fleet():
            return []
        if self._fleet is None:
            from .fleet import Fleet

            self._fleet = Fleet.open(self.state)
        agents: list[AgentRecord] = self._fleet.agents()
        return agents

    def _act(self, d: Decision, index: Index, now: _dt.datetime) -> None:
        p = d.progress
        self.db.save(p, d.pins)
        if d.action == Action.HALT:
            log.warning("rollout of v%s halted: %s", p.target, d.reason)
            self.ledger.record_event("rollout-halted", f"v{p.target}",
                                     {"stage": d.stage, "gate": d.gate, "reason": d.reason}, ACTOR, now=now)
            self.ledger.record_event("rollout-rolled-back", f"v{p.target}",
                                     {"pins": dict(d.pins), "to": p.stable, "reason": d.reason}, ACTOR, now=now)
            self._count("halts", d.gate or "unknown")
        elif d.action == Action.PROMOTE:
            log.info("rollout of v%s: %s", p.target, d.reason)
            self.ledger.record_event("rollout-promoted", f"v{p.target}",
                                     {"stage": d.stage, "pins": dict(d.pins), "reason": d.reason}, ACTOR, now=now)
            self._count("promotions", d.stage or "")
        else:  # the last stage baked out: nothing new is pinned, the target becomes stable
            log.info("rollout of v%s: %s", p.target, d.reason)
            self.ledger.record_event("rollout-completed", f"v{p.target}",
                                     {"stages": dict(d.pins), "reason": d.reason}, ACTOR, now=now)
            if self.metrics is not None and p.started is not None:
                self.metrics.rollout_duration.observe((now - p.started).total_seconds())
        if dict(index.stages) != dict(d.pins):
            self.store.pin(d.pins, now=now)

    # -- metrics ------------------------------------------------------------------

    def _count(self, what: str, label: str) -> None:
        if self.metrics is None:
            return
        if what == "promotions":
            self.metrics.rollout_promotions.labels(label).inc()
        else:
            self.metrics.rollout_halts.labels(label).inc()

    def _gauges(self, index: Index) -> None:
        if self.metrics is not None:
            for stage, v in index.stages.items():
                self.metrics.rollout_stage_version.labels(stage).set(v)

    # -- status -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The rollout status (what `palisade rollout status` and /v1/status show); never raises for bad state."""
        try:
            return self._status()
        except PalisadeError as e:
            return {"state": "unknown", "error": str(e), "reason": f"cannot read the rollout state: {e}"}

    def _status(self) -> dict[str, Any]:
        index = self.store.index()
        progress, _ = self.db.load()
        if index is None:
            return _status_doc(progress, None, None, None)
        target = self.bundle(progress.target) if progress.target is not None else None
        decision = evaluate(target, progress, index.stages, self._reports_readonly(), now=self._now(),
                            stale_after=self.stale_after)
        return _status_doc(progress, index, decision, self.db.plan(progress.target) if progress.target else None)

    def _reports_readonly(self) -> list[AgentReport]:
        opened = self.db.open_versions()
        return [_report(a, opened.get(a.id)) for a in self._agents()]

    def _now(self) -> _dt.datetime:
        return self._clock()


def _stage(plan: Any, k: int) -> str | None:
    if plan is None or not 0 <= k < len(plan.stages):
        return None
    return str(plan.stages[k].name)


def _status_doc(progress: Progress, index: Index | None, decision: Decision | None,
                plan: tuple[bool, bool, list[str]] | None) -> dict[str, Any]:
    state = "idle"
    if progress.halted:
        state = "halted"
    elif progress.aborted:
        state = "aborted"
    elif progress.paused:
        state = "paused"
    elif progress.active:
        state = "progressing"
    elif progress.stable is not None:
        state = "complete"
    doc: dict[str, Any] = {
        "state": state,
        "target": progress.target,
        "stable": progress.stable,
        "started": format_time(progress.started) if progress.started else None,
        "stageSince": format_time(progress.since) if progress.since else None,
        "paused": progress.paused,
        "haltReason": progress.halted,
        "abortReason": progress.aborted,
        "fastTracked": progress.fast_tracked,
        "pins": dict(index.stages) if index else {},
        "version": index.version if index else None,
        "reason": decision.reason if decision else "nothing published yet",
        "stages": [s.to_json() for s in decision.stages] if decision else [],
        "classification": None,
    }
    if plan is not None:
        relaxing, fast, reasons = plan
        doc["classification"] = {"kind": "relaxing" if relaxing else "tightening", "fastTracked": fast,
                                 "reasons": reasons}
    return doc


# ---------------------------------------------------------------------------
# Read-only access beside a running reconciler (CLI)


class _ReadStore:
    """The reading half of `Store` without opening one (opening tidies temporaries, a writer's job)."""

    def __init__(self, store: statedir.StoreDir) -> None:
        self.store = store

    def index(self) -> Index | None:
        path = self.store.index
        try:
            return parse_index(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, VerificationError) as e:
            raise StateError(f"cannot read {path}: {e}") from None

    def bundle_bytes(self, version: int) -> bytes | None:
        try:
            return self.store.bundle(version).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read bundle v{version}: {e.strerror}") from None


def read_status(state_dir: Path | statedir.StateView, *, stale_after: _dt.timedelta | None = None,
                now: _dt.datetime | None = None) -> dict[str, Any]:
    """The rollout status from a state directory alone (takes no lock, writes nothing)."""
    state = statedir.StateView.of(state_dir)
    if not state.has_rollouts() and not state.has_ledger():
        raise StateError(f"no reconciler state in {state.root} (has a reconciler run with --state {state.root}?)")
    db = RolloutDB.open(state, readonly=True) if state.has_rollouts() else None
    try:
        progress = db.load()[0] if db else Progress()
        opened = db.open_versions() if db else {}
        store = _ReadStore(state.store)
        index = store.index()
        if index is None:
            return _status_doc(progress, None, None, None)
        agents: list[AgentRecord] = []
        if state.has_fleet():
            from .fleet import Fleet

            fleet = Fleet.open(state)
            try:
                agents = fleet.agents()
            finally:
                fleet.close()
        target = None
        if progress.target is not None:
            data = store.bundle_bytes(progress.target)
            target = parse_bundle(data) if data else None
        reports = [_report(a, opened.get(a.id)) for a in agents]
        stale = stale_after or (db.stale_after() if db else None) or DEFAULT_STALE_AFTER
        decision = evaluate(target, progress, index.stages, reports,
                            now=(now or _dt.datetime.now(_dt.UTC)).replace(microsecond=0), stale_after=stale)
        return _status_doc(progress, index, decision,
                           db.plan(progress.target) if db and progress.target else None)
    finally:
        if db is not None:
            db.close()

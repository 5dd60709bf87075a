"""The rollout controller: reads heartbeats, decides (decide.py), re-pins the index, keeps the record (db.py).

Only the reconciler that holds the state lock writes progress and the index. A
decision is saved (progress + wanted pins) before it is logged in the ledger and
before the index is re-pinned; at every tick an index whose pins differ from the
wanted ones is re-pinned, so a crash between the steps neither loses a promotion
nor repeats one, and a restart mid-bake keeps the bake's start time.

New bundles: before it publishes one, the reconciler asks `Controller.publish_pins` for
the pins of the index that publishes it — the first stage gets the new version, the
others keep the last version that completed a rollout (every stage at once when the
change only relaxes enforcement and the plan allows fast-track) — and hands them to
the ledger's one publish call, so no agent outside the first stage ever sees an index
that pins it to the new version before its turn. The controller keeps the typed bundle
it was given, so starting its rollout at the next tick reads nothing back.
"""
from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import PalisadeError, StateError
from reconciler.rollout.db import DEFAULT_STALE_AFTER, Outcome, RequestResult, RolloutDB, SensorVersion
from reconciler.rollout.decide import Action, AgentReport, Decision, Progress, evaluate, operate, start
from reconciler.rollout.reports import actions_of, errors_of, report_of
from reconciler.rollout.status import status_doc
from reconciler.state import statedir
from reconciler.state.store import SignedBundle, Store
from wire.bundle import DEFAULT_STAGE, Bundle, Index, format_time

if TYPE_CHECKING:
    from reconciler.metrics import Metrics
    from reconciler.state.fleet import AgentRecord
    from reconciler.state.ledger import Ledger


log = logging.getLogger("palisade.rollout")


#: The actor of the controller's own ledger rows (operators' rows carry the operator's name).
ACTOR = "palisade-rollout"


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

    def close(self) -> None:
        self.db.close()
        if self._fleet is not None:
            self._fleet.close()

    # -- publishing ---------------------------------------------------------------

    def publish_pins(self, signed: SignedBundle) -> dict[str, int] | None:
        """The stage pins of the index that will publish `signed` (None: the store's default, every stage).

        Saves the change's classification for the rollout that starts at the next tick. A crash before
        the publish leaves a plan for a version no index names: the next attempt reuses the version (the
        ledger reserved nothing) and replaces it, or the version is burnt and never read."""
        bundle = signed.bundle
        index = self.store.index()
        if index is None or bundle.version <= index.version:
            return None  # the first publish goes everywhere; a repeated publish is a no-op anyway
        self._remember(bundle)
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
        from reconciler.checks.relaxing import classify

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
        """Bundle `version` of the store (None: absent or unreadable); the last few are kept parsed."""
        if version not in self._bundles:
            found = self.store.read_bundle(version)
            if found is None:
                return None
            self._remember(found.bundle)
        return self._bundles[version]

    def _remember(self, bundle: Bundle) -> None:
        if bundle.version not in self._bundles and len(self._bundles) >= 16:
            # the oldest read goes; not the lowest version, which a stage may still pin
            self._bundles.pop(next(iter(self._bundles)))
        self._bundles[bundle.version] = bundle

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
                self.db.settle_request(req.id, RequestResult(Outcome.REFUSED, str(e)), now)
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
            self.db.settle_request(req.id, RequestResult(Outcome.APPLIED, what), now)
        return progress, index

    def _reports(self, now: _dt.datetime) -> list[AgentReport]:
        agents = self._agents()
        opened = self.db.open_versions()
        switches: list[tuple[str, int | None, _dt.datetime, int, int]] = []
        began: list[tuple[str, dict[str, Any]]] = []
        out = []
        for a in agents:
            cur = opened.get(a.id)
            counters = (actions_of(a.counters), errors_of(a.counters))
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
            out.append(report_of(a, cur))
        # The record first, then the ledger rows: a crash in between repeats no row.
        self.db.switch_versions(switches)
        for sensor, detail in began:
            self.ledger.record_event("sensor-version", sensor, detail, ACTOR, now=now)
        return out

    def _agents(self) -> list[AgentRecord]:
        if not self.state.has_fleet():
            return []
        if self._fleet is None:
            from reconciler.state.fleet import Fleet

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
            return status_doc(progress, None, None, None)
        target = self.bundle(progress.target) if progress.target is not None else None
        decision = evaluate(target, progress, index.stages, self._reports_readonly(), now=self._now(),
                            stale_after=self.stale_after)
        return status_doc(progress, index, decision, self.db.plan(progress.target) if progress.target else None)

    def _reports_readonly(self) -> list[AgentReport]:
        opened = self.db.open_versions()
        return [report_of(a, opened.get(a.id)) for a in self._agents()]

    def _now(self) -> _dt.datetime:
        return self._clock()


def _stage(plan: Any, k: int) -> str | None:
    if plan is None or not 0 <= k < len(plan.stages):
        return None
    return str(plan.stages[k].name)

"""The rollout controller on real state: SQLite (rollout.db, fleet.db, the ledger), a real signed bundle
store, heartbeats recorded as the server records them, and a clock the test moves (bake times, agent
timeouts: what the fleet tests of tests/integration would otherwise sleep for)."""
from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from reconciler.rollout.controller import Controller
from reconciler.rollout.db import RolloutDB
from reconciler.rollout.decide import Action
from reconciler.rollout.status import read_status
from reconciler.state.fleet import Fleet
from reconciler.state.ledger import Ledger
from reconciler.state.store import SignedBundle, Store
from wire.bundle import Bundle, BundlePolicy, BundleStage, Origin, StageGates, Staging
from wire.heartbeat import parse as parse_heartbeat
from wire.values import Scope, State

T0 = _dt.datetime(2026, 11, 21, 12, 0, tzinfo=_dt.UTC)
PLAN = Staging(False, (
    BundleStage("canary", sensors=("c1",), bake_seconds=60,
                gates=StageGates(max_enforcement_actions_per_node=5, min_reporting_ratio=1.0)),
    BundleStage("fleet", rest=True, bake_seconds=60, gates=StageGates(min_reporting_ratio=0.5)),
))
SENSORS = {"c1": "canary", "f1": "fleet", "f2": "fleet"}


@dataclass
class Env:
    state: Path
    key: SigningKey
    now: _dt.datetime
    ledger: Ledger
    store: Store
    ctl: Controller
    fleet: Fleet

    def clock(self) -> _dt.datetime:
        return self.now

    def publish(self, version: int, state: State) -> None:
        policy = BundlePolicy.of("p", Origin("rule", "r"), Scope(), state, "kind: TracingPolicy\n")
        b = Bundle(version, f"{version:040x}", None, "Dana <d@example.com>", (), self.now, (policy,), (), PLAN)
        # as the reconciler publishes: the controller decides the pins, the store writes bundle and index
        signed = SignedBundle.sign(b, self.key)
        self.store.publish(signed, now=self.now, stages=self.ctl.publish_pins(signed))

    def start_v2(self, *, beat: bool = True) -> None:
        """v1 everywhere, then the tightening v2 published to the canary (every agent reporting, if `beat`)."""
        self.publish(1, State.OBSERVE)
        self.ctl.tick()
        self.publish(2, State.ENFORCED)
        if beat:
            self.beat_all()
        self.ctl.tick()

    def beat(self, sensor: str, *, enforced: int = 0, version: int | None = None) -> None:
        index = self.store.index()
        assert index is not None
        v = version if version is not None else index.pinned(SENSORS[sensor])
        doc = {"version": v, "stage": SENSORS[sensor], "counters": {"enforced": enforced}}
        self.fleet.record_heartbeat(parse_heartbeat(doc, sensor), now=self.now)

    def beat_all(self, **enforced: int) -> None:
        for s in SENSORS:
            self.beat(s, enforced=enforced.get(s, 0))

    def reopen(self) -> None:
        """A reconciler restart: close everything, open again on the same state directory."""
        self.ctl.close()
        self.ledger.close()
        self.ledger = Ledger.open(self.state)
        self.store = Store(self.state / "store", self.key)
        self.ctl = Controller(self.state, self.ledger, self.store, clock=self.clock)

    def events(self, kind: str) -> list[str]:
        return [f"{e.subject} {e.detail.get('stage', '')}".strip() for e in reversed(self.ledger.events(kind))]


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    state = tmp_path / "state"
    ledger = Ledger.open(state)
    key = SigningKey.generate()
    store = Store(state / "store", key)
    e = Env(state, key, T0, ledger, store, None, Fleet.open(state))  # type: ignore[arg-type]
    e.ctl = Controller(state, ledger, store, clock=e.clock)
    try:
        yield e
    finally:
        e.ctl.close()
        e.fleet.close()
        e.ledger.close()


def _pins(env: Env) -> dict[str, int]:
    index = env.store.index()
    assert index is not None
    return dict(index.stages)


def test_a_new_version_is_published_to_the_first_stage_only(env: Env) -> None:
    env.publish(1, State.OBSERVE)
    assert _pins(env) == {"canary": 1, "fleet": 1, "default": 1}
    env.ctl.tick()
    env.publish(2, State.ENFORCED)  # tightening
    # the index written by the publish itself: no agent outside the canary is ever pinned to v2
    assert _pins(env) == {"canary": 2, "fleet": 1, "default": 1}
    d = env.ctl.tick()
    assert d is not None and d.action == Action.HOLD
    assert env.events("rollout-started") == ["v2 canary"]
    started = env.ledger.events("rollout-started")[0]
    assert started.detail["classification"]["kind"] == "tightening"


def test_bake_survives_a_restart_and_nothing_is_promoted_twice(env: Env) -> None:
    env.start_v2()
    env.now = T0 + _dt.timedelta(seconds=30)
    env.reopen()
    env.beat_all()
    d = env.ctl.tick()
    assert d is not None and d.action == Action.HOLD and d.reason == "baking, 30s left"
    env.now = T0 + _dt.timedelta(seconds=61)
    env.reopen()
    env.beat_all()
    d = env.ctl.tick()
    assert d is not None and d.action == Action.PROMOTE
    assert _pins(env) == {"canary": 2, "fleet": 2, "default": 2}
    env.reopen()
    env.ctl.tick()
    assert env.events("rollout-promoted") == ["v2 fleet"]


def test_a_decision_saved_before_a_crash_is_finished_at_the_next_tick(env: Env) -> None:
    env.start_v2(beat=False)
    db = RolloutDB.open(env.state)
    progress, _ = db.load()
    # the crash: the promotion was saved, the index was never re-pinned
    db.save(progress, {"canary": 2, "fleet": 2, "default": 2})
    db.close()
    env.reopen()
    env.ctl.tick()
    assert _pins(env) == {"canary": 2, "fleet": 2, "default": 2}


def test_enforcement_actions_count_from_the_version_change(env: Env) -> None:
    env.publish(1, State.OBSERVE)
    env.ctl.tick()
    env.beat_all(c1=100)  # the canary's counter is already high under v1: that is not v2's doing
    env.ctl.tick()
    env.publish(2, State.ENFORCED)
    env.beat_all(c1=104)
    d = env.ctl.tick()
    assert d is not None and d.action == Action.HOLD
    env.beat_all(c1=106)
    d = env.ctl.tick()
    assert d is not None and d.action == Action.HALT and d.gate == "maxEnforcementActionsPerNode"
    assert "6 > 5" in d.reason
    assert _pins(env) == {"canary": 1, "fleet": 1, "default": 1}
    assert env.events("rollout-rolled-back") == ["v2"]
    status = read_status(env.state, now=env.now)
    assert status["state"] == "halted" and status["haltReason"] == d.reason
    # each sensor's versions, for the audit
    runs = [(v.sensor, v.version, v.ended is None) for v in RolloutDB.open(env.state).sensor_versions("c1")]
    assert runs == [("c1", 1, False), ("c1", 2, True)]


def test_operator_requests_are_applied_with_the_operator_as_actor(env: Env) -> None:
    env.start_v2(beat=False)
    db = RolloutDB.open(env.state)
    rid = db.request("abort", "wrong change", "olga", env.now)
    env.ctl.tick()
    req = db.get_request(rid)
    db.close()
    assert req is not None and req.applied is not None and req.result is not None
    assert str(req.result).startswith("aborted") and not req.result.refused
    assert _pins(env) == {"canary": 1, "fleet": 1, "default": 1}
    (aborted,) = env.ledger.events("rollout-aborted")
    assert aborted.actor == "olga" and aborted.detail["reason"] == "wrong change"


def test_a_relaxing_change_is_fast_tracked_only_when_the_plan_allows(env: Env) -> None:
    env.publish(1, State.ENFORCED)
    env.ctl.tick()
    env.publish(2, State.OBSERVE)  # relaxing, but PLAN has fastTrack off
    assert _pins(env) == {"canary": 2, "fleet": 1, "default": 1}
    saved = RolloutDB.open(env.state).plan(2)
    assert saved is not None and saved[0] is True and saved[1] is False


def test_a_newer_version_mid_rollout_starts_again_at_the_first_stage(env: Env) -> None:
    env.start_v2()
    env.now += _dt.timedelta(seconds=61)
    env.beat_all()
    env.ctl.tick()  # v2 promoted to the fleet, baking there
    assert _pins(env) == {"canary": 2, "fleet": 2, "default": 2}
    env.publish(3, State.ENFORCE_READY)
    assert _pins(env) == {"canary": 3, "fleet": 1, "default": 1}
    env.ctl.tick()
    started = env.ledger.events("rollout-started")[0]
    assert started.subject == "v3" and started.detail["supersedes"] == 2 and started.detail["stable"] == 1


def test_status_text_while_baking(env: Env) -> None:
    from reconciler.cli.rollout import render_text

    env.start_v2()
    env.now += _dt.timedelta(seconds=15)
    env.beat("c1", enforced=2)
    env.ctl.tick()
    text = render_text(read_status(env.state, now=env.now))
    assert "rollout   progressing: v2 (stable v1)" in text
    assert "reason    baking, 45s left" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith(("canary", "fleet"))}
    assert lines["canary"].split()[:7] == ["canary", "v2", "1", "1", "1", "45s", "baking"]
    assert "maxEnforcementActionsPerNode 2<=5" in lines["canary"]
    assert lines["fleet"].split()[:7] == ["fleet", "v1", "2", "2", "2", "-", "waiting"]


def test_many_publishes_while_old_versions_stay_pinned(env: Env) -> None:
    env.publish(1, State.OBSERVE)
    env.ctl.tick()
    for v in range(2, 22):  # every one tightens; none completes, so the later stages keep v1
        env.publish(v, State.ENFORCED if v % 2 else State.ENFORCE_READY)
        d = env.ctl.tick()
        assert d is not None and d.action == Action.HOLD
    assert _pins(env) == {"canary": 21, "fleet": 1, "default": 1}


# -- bake-time rules the fleet tests (tests/integration/test_rollout_fleet.py) watch on real processes --------


def _beats_for(env: Env, seconds: int, *sensors: str) -> None:
    """`seconds` of heartbeats, one every 10 s, from `sensors` only (the others are silent)."""
    for _ in range(seconds // 10):
        env.now += _dt.timedelta(seconds=10)
        for s in sensors:
            env.beat(s)
        env.ctl.tick()


def test_after_a_halt_nothing_moves_however_long_every_bake_lasts(env: Env) -> None:
    env.start_v2()
    env.beat_all(c1=6)  # over the canary's gate of 5 enforcement actions
    d = env.ctl.tick()
    assert d is not None and d.action == Action.HALT
    _beats_for(env, 300, *SENSORS)  # five minutes: every bake of PLAN five times over
    d = env.ctl.tick()
    assert d is not None and d.action == Action.IDLE and d.reason.startswith("halted: stage canary")
    assert _pins(env) == {"canary": 1, "fleet": 1, "default": 1}
    assert env.events("rollout-promoted") == [] and env.events("rollout-halted") == ["v2 canary"]


def test_a_silent_canary_holds_promotion_past_its_bake_until_it_reports(env: Env) -> None:
    env.publish(1, State.OBSERVE)
    env.beat_all()
    env.ctl.tick()
    _beats_for(env, 40, "f1", "f2")  # the canary goes quiet: past the 30 s agent timeout
    env.publish(2, State.ENFORCED)
    env.ctl.tick()
    _beats_for(env, 120, "f1", "f2")  # twice the canary's 60 s bake
    d = env.ctl.tick()
    assert d is not None and d.action == Action.HOLD
    assert d.reason == "reporting share 0.00 < 1.00 (minReportingRatio): 0 of 1 agents reporting; not reporting: c1"
    assert _pins(env)["fleet"] == 1
    canary = read_status(env.state, now=env.now)["stages"][0]
    assert (canary["name"], canary["agents"], canary["reporting"], canary["bakeLeftSeconds"]) == ("canary", 1, 0, 0)
    env.beat_all()  # it reports again: the rollout moves on
    d = env.ctl.tick()
    assert d is not None and d.action == Action.PROMOTE and _pins(env)["fleet"] == 2


def test_a_paused_rollout_holds_past_its_bake_and_resumes_where_it_was(env: Env) -> None:
    env.start_v2()
    db = RolloutDB.open(env.state)
    try:
        db.request("pause", "checking canary logs", "olga", env.now)
        env.ctl.tick()
        _beats_for(env, 120, *SENSORS)  # twice the canary's bake
        d = env.ctl.tick()
        assert d is not None and d.action == Action.HOLD and d.reason == "paused by an operator"
        assert _pins(env)["fleet"] == 1
        db.request("resume", "logs clean", "olga", env.now)
    finally:
        db.close()
    d = env.ctl.tick()
    assert d is not None and d.action == Action.PROMOTE and _pins(env)["fleet"] == 2

"""Impact previews: what enforcing a unit would have acted on, from stored observations."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from reconciler.analysis import impact
from reconciler.analysis.impact import Effect, PolicyEffect
from reconciler.repository.model import UnitKey
from reconciler.state.fleet import Fleet, ObservationRow
from wire.heartbeat import parse as parse_heartbeat
from wire.values import Scope

T0 = _dt.datetime(2026, 11, 1, 12, 0, tzinfo=_dt.UTC)
UNIT = UnitKey("pack", "web-lockdown", Scope(group="web"))
KILL = {"spec": {"tracepoints": [{"subsystem": "sched", "event": "sched_process_exec", "selectors": [
    {"matchBinaries": [{"operator": "NotIn", "values": ["/usr/bin/true"]}],
     "matchActions": [{"action": "Sigkill"}]}]}]}}
POST = {"spec": {"tracepoints": [{"subsystem": "sched", "event": "sched_process_exec"}]}}
MIXED = {"spec": {"kprobes": [{"call": "x", "selectors": [
    {"matchActions": [{"action": "Post"}]}, {"matchActions": [{"action": "Override", "argError": -1}]}]}]}}


def _row(sensor: str, binary: str, count: int, *, policy: str = "allow", action: str | None = None,
         acted: bool | None = None, at: _dt.datetime = T0, workload: str | None = None) -> ObservationRow:
    return ObservationRow(sensor, policy, binary, workload, None, action, acted, count, at, at)


def test_policy_effect_reads_the_selectors() -> None:
    assert impact.policy_effect(KILL) is PolicyEffect.ACTS
    assert impact.policy_effect(POST) is PolicyEffect.REPORTS
    assert impact.policy_effect(MIXED) is PolicyEffect.MIXED


def test_the_reported_action_wins_over_the_policy() -> None:
    effects = {"allow": PolicyEffect.MIXED}
    assert impact.row_effect(_row("n", "/b", 1, action="KPROBE_ACTION_SIGKILL", acted=False), effects) \
        is Effect.WOULD_ACT
    assert impact.row_effect(_row("n", "/b", 1, action="KPROBE_ACTION_POST"), effects) is Effect.REPORT_ONLY
    assert impact.row_effect(_row("n", "/b", 1), effects) is Effect.UNKNOWN  # old agent, mixed policy


def test_counts_per_sensor_and_top_binaries_equal_the_observations() -> None:
    rows = [
        _row("web-1", "/usr/bin/curl", 5, action="KPROBE_ACTION_SIGKILL", acted=False),
        _row("web-1", "/usr/bin/wget", 2, action="KPROBE_ACTION_SIGKILL", acted=False),
        _row("web-2", "/usr/bin/curl", 3),  # no action reported: the policy only kills
        _row("web-2", "/usr/bin/curl", 4, policy="other"),  # another policy: ignored
        _row("db-1", "/usr/bin/curl", 9),  # out of scope: ignored
        _row("web-1", "/usr/bin/nc", 7, at=T0 - _dt.timedelta(days=30)),  # before the period: ignored
    ]
    got = impact.preview(UNIT, {"allow": PolicyEffect.ACTS}, rows, since=T0 - _dt.timedelta(days=7),
                         until=T0 + _dt.timedelta(hours=1), sensors=["web-1", "web-2"])
    assert (got.events, got.would_act, got.unknown) == (10, 10, 0)
    assert [(s.sensor, s.events, s.would_act) for s in got.per_sensor] == [("web-1", 7, 7), ("web-2", 3, 3)]
    assert [(b.binary, b.count, b.sensors) for b in got.top_binaries] == [
        ("/usr/bin/curl", 8, ("web-1", "web-2")), ("/usr/bin/wget", 2, ("web-1",))]
    assert "10 would have been acted on" in impact.text(got)


def test_post_only_events_are_counted_but_not_as_actions() -> None:
    rows = [_row("web-1", "/usr/bin/ls", 6, policy="lifecycle")]
    got = impact.preview(UNIT, {"lifecycle": PolicyEffect.REPORTS}, rows, since=T0 - _dt.timedelta(days=1),
                         until=T0 + _dt.timedelta(days=1))
    assert (got.events, got.would_act, got.top_binaries) == (6, 0, ())
    assert "nothing observed would have been acted on" in impact.text(got)


def test_no_data_says_it_does_not_mean_safe() -> None:
    got = impact.preview(UNIT, {"allow": PolicyEffect.ACTS}, [], since=T0, until=T0 + _dt.timedelta(days=7))
    assert got.no_data and got.to_json()["noData"] is True
    assert "does not mean enforcing is safe" in got.to_json()["note"]
    assert "NO DATA" in impact.text(got)


def test_stored_observations_keep_the_optional_members(tmp_path: Path) -> None:
    fleet = Fleet.open(tmp_path)
    doc = {"labels": {"role": "web"}, "observations": [
        {"policy": "allow", "binary": "/usr/bin/curl", "count": 2, "workload": "web", "parent": "/bin/sh",
         "action": "KPROBE_ACTION_SIGKILL", "acted": False},
        {"policy": "allow", "binary": "/usr/bin/curl", "count": 1}]}
    fleet.record_heartbeat(parse_heartbeat(sensor_id="web-1", doc=doc), T0)
    fleet.record_heartbeat(parse_heartbeat(sensor_id="web-1", doc=doc), T0 + _dt.timedelta(minutes=1))
    rows = fleet.query(policies=("allow",))
    assert [(r.workload, r.parent, r.action, r.acted, r.count) for r in rows] == [
        ("web", "/bin/sh", "KPROBE_ACTION_SIGKILL", False, 4), (None, None, None, None, 2)]
    assert rows[0].first == T0 and rows[0].last == T0 + _dt.timedelta(minutes=1)
    assert fleet.query(workload="web", until=T0 + _dt.timedelta(seconds=30))[0].count == 2
    assert fleet.query(policies=()) == []


def test_a_fleet_database_from_before_the_optional_members_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "fleet.db")
    old.executescript("CREATE TABLE observations (time TEXT NOT NULL, sensor TEXT NOT NULL, policy TEXT NOT NULL, "
                      "binary TEXT NOT NULL, count INTEGER NOT NULL);"
                      "INSERT INTO observations VALUES ('2026-11-01T12:00:00Z', 'web-1', 'allow', '/usr/bin/curl', 2);")
    old.commit()
    old.close()
    fleet = Fleet.open(tmp_path)
    fleet.record_heartbeat(parse_heartbeat(sensor_id="web-1", doc={"observations": [
        {"policy": "allow", "binary": "/usr/bin/curl", "count": 1, "workload": "web"}]}), T0)
    rows = fleet.query(policies=("allow",))
    assert sorted((r.workload or "", r.count) for r in rows) == [("", 2), ("web", 1)]

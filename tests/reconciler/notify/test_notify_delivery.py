"""Delivery from the real outbox (SQLite in a state directory) to a real loopback receiver that is down
(port closed), slow (answers after the timeout), failing (500), then up."""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler.notify.config import Backoff, NotifyConfig, load
from reconciler.notify.deliver import Courier, NotifyMetrics
from reconciler.notify.events import EventKind, Notification, Observed
from reconciler.notify.outbox import Outbox, Outcome
from support.webhook import Receiver, wait_for

T0 = _dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=_dt.UTC)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


def _config(tmp_path: Path, rx: Receiver, *, kind: str = "generic", limit: int = 1000,
            events: str = "") -> NotifyConfig:
    (tmp_path / "hook-url").write_text(rx.url + "\n")
    (tmp_path / "notify.yaml").write_text(
        "apiVersion: palisade.dev/v1\nkind: Notifications\nspec:\n"
        f"  queueLimit: {limit}\n  backoff: {{initial: 0.1s, max: 0.4s}}\n"
        f"  targets:\n  - name: ops\n    kind: {kind}\n    urlFile: hook-url\n    timeout: 0.3s\n{events}")
    return load(tmp_path / "notify.yaml")


def _notifications(n: int, first: int = 0) -> list[Notification]:
    return [Notification(f"commit-rejected:{i:040x}:{i}", EventKind.COMMIT_REJECTED, f"commit {i} rejected",
                         T0 + _dt.timedelta(seconds=i), {"commit": f"{i:040x}"}) for i in range(first, first + n)]


def test_down_slow_then_up_every_notification_exactly_once_in_order_across_a_restart(
        tmp_path: Path, receiver: Receiver) -> None:
    config = _config(tmp_path, receiver)
    target = config.targets[0]
    state = tmp_path / "state"
    sent = _notifications(6)
    registry = CollectorRegistry()
    metrics = NotifyMetrics(registry, config.targets)

    outbox = Outbox.open(state)
    outbox.record(Observed(commit_cursor=3), sent[:3], config.targets, config.queue_limit)
    courier = Courier(target, outbox, config.backoff, metrics)
    courier.start()
    # Down: the port is closed. Attempts are refused, retried with a growing, capped delay.
    wait_for(lambda: len(outbox.deliveries()) >= 4, 10, "four refused attempts")
    attempts = sorted(outbox.deliveries(), key=lambda d: d.id)
    assert {d.outcome for d in attempts} == {Outcome.UNREACHABLE}
    assert {d.event for d in attempts} == {sent[0].id}  # in order: nothing passes the head
    assert [d.attempt for d in attempts[:4]] == [1, 2, 3, 4]
    gaps = [(b.time - a.time).total_seconds() for a, b in itertools.pairwise(attempts)]
    assert all(g <= 1.5 for g in gaps), gaps  # capped at 0.4 s (the record's times are whole seconds)

    # A restart while queued (the courier and the database closed, as a stopping server does).
    courier.stop()
    outbox.close()
    outbox = Outbox.open(state)
    assert outbox.pending() == {"ops": 3}
    assert outbox.observed() == Observed(commit_cursor=3)
    outbox.record(Observed(commit_cursor=6), sent[3:], config.targets, config.queue_limit)
    outbox.record(Observed(commit_cursor=6), sent[:2], config.targets, config.queue_limit)  # again: no new rows
    assert outbox.pending() == {"ops": 6}

    # Slow: it answers after 2 s, past the 0.3 s timeout; the courier gives up and retries.
    receiver.slow(2.0)
    courier = Courier(target, outbox, config.backoff, metrics)
    courier.start()
    receiver.wait_count(2, 10, which="late")
    wait_for(lambda: any(d.outcome is Outcome.TIMEOUT for d in outbox.deliveries()), 5, "a timeout recorded")
    assert receiver.received == []

    # Failing, then up.
    receiver.failing(503)
    receiver.wait_count(1, 5, which="refused")
    wait_for(lambda: any(d.status == 503 for d in outbox.deliveries()), 5, "a 503 recorded")
    receiver.up()
    got = receiver.wait_count(6, 10)
    time.sleep(0.5)  # room for a duplicate to show up, if one were sent
    assert receiver.ids() == [n.id for n in sent]  # each exactly once, in order
    assert {r.event_id for r in receiver.late} <= set(receiver.ids())  # what timed out came again
    assert [r.json["id"] for r in got] == [n.id for n in sent]
    assert got[0].json == sent[0].to_json()
    assert got[0].headers["x-palisade-event"] == "commit-rejected"
    assert outbox.pending() == {}
    delivered = [d for d in outbox.deliveries() if d.outcome is Outcome.DELIVERED]
    assert sorted(d.event for d in delivered) == sorted(n.id for n in sent)
    assert all(d.status == 200 for d in delivered)
    courier.stop()
    outbox.close()

    def value(outcome: str) -> float:
        v = registry.get_sample_value("palisade_notifications_total", {"target": "ops", "outcome": outcome})
        assert v is not None
        return v

    assert value("delivered") == 6
    assert value("unreachable") >= 4 and value("timeout") >= 1 and value("failed") >= 1
    assert value("dropped") == 0


def test_a_full_queue_drops_the_oldest_and_records_the_drop(tmp_path: Path, receiver: Receiver) -> None:
    config = _config(tmp_path, receiver, limit=3)
    outbox = Outbox.open(tmp_path / "state")
    sent = _notifications(5)
    r1 = outbox.record(Observed(), sent[:3], config.targets, config.queue_limit)
    r2 = outbox.record(Observed(), sent[3:], config.targets, config.queue_limit)
    assert len(r1.enqueued) == 3 and r1.dropped == ()
    assert r2.dropped == (("ops", sent[0].id), ("ops", sent[1].id))
    drops = outbox.deliveries()
    assert [(d.event, d.outcome) for d in reversed(drops)] == [(sent[0].id, Outcome.DROPPED),
                                                               (sent[1].id, Outcome.DROPPED)]
    assert "queue full" in (drops[0].error or "")
    receiver.up()
    courier = Courier(config.targets[0], outbox, config.backoff, None)
    courier.start()
    try:
        receiver.wait_count(3, 10)
        time.sleep(0.3)
        assert receiver.ids() == [n.id for n in sent[2:]]
    finally:
        courier.stop()
        outbox.close()


def test_slack_target_and_event_filter(tmp_path: Path, receiver: Receiver) -> None:
    config = _config(tmp_path, receiver, kind="slack", events="    events: [agent-stale]\n")
    assert config.targets[0].events == frozenset({EventKind.AGENT_STALE})
    stale = Notification("agent-stale:node-1:2026-12-01T12:00:00Z", EventKind.AGENT_STALE,
                         "agent node-1 stale: no heartbeat since 2026-12-01T12:00:00Z (timeout 2s)", T0,
                         {"sensor": "node-1", "lastSeen": "2026-12-01T12:00:00Z"})
    outbox = Outbox.open(tmp_path / "state")
    recorded = outbox.record(Observed(), [*_notifications(2), stale], config.targets, config.queue_limit)
    assert recorded.enqueued == (("ops", stale.id),)  # the rejected commits are not for this target
    receiver.up()
    courier = Courier(config.targets[0], outbox, config.backoff, None)
    courier.start()
    try:
        (got,) = receiver.wait_count(1, 10)
    finally:
        courier.stop()
        outbox.close()
    doc = got.json
    assert doc["text"].startswith(":warning: Agent stale: agent node-1 stale")
    assert doc["blocks"][0]["text"]["text"] == "Agent stale"
    assert stale.id in json.dumps(doc["blocks"])
    assert got.event_id == stale.id


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [Backoff(1, 5).delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]

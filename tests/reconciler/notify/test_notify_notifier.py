"""The notifier on a real state directory: the ledger and fleet.db as the reconciler and the server write
them, the outbox it fills. The first start begins at the ledger's end; a quiet tick writes nothing."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from reconciler.findings import Finding, Severity
from reconciler.notify.config import Backoff, NotifyConfig, Target, TargetKind
from reconciler.notify.events import EventKind
from reconciler.notify.notifier import Notifier
from reconciler.notify.outbox import Outbox
from reconciler.state.fleet import Fleet
from reconciler.state.ledger import CommitInfo, Ledger
from reconciler.state.statedir import StateDir
from wire.heartbeat import Heartbeat, LoadStatus, PolicyReport

BAD = Finding("enforcement/web.yaml", 3, 5, Severity.ERROR, "schema", "bad state")


def _info(n: int) -> CommitInfo:
    return CommitInfo(f"{n:040x}", None, n, "Dana <dana@example.com>")


def test_first_start_begins_at_the_ledger_end_and_a_quiet_tick_writes_nothing(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    now = [_dt.datetime.now(_dt.UTC)]
    # Port 9 is closed: the courier's one attempt is refused and the next waits a minute, so rows stay queued.
    target = Target("ops", TargetKind.GENERIC, "http://127.0.0.1:9/", tmp_path / "url", frozenset(EventKind), 1.0)
    config = NotifyConfig((target,), backoff=Backoff(60, 60))
    with Ledger.open(state) as ledger:
        ledger.record_rejected(_info(1), [BAD])  # before notifications were configured: history
        ledger.record_event("rollout-halted", "v1", {"stage": "canary", "reason": "old"})
        notifier = Notifier(config, state, stale_after=_dt.timedelta(seconds=30), clock=lambda: now[0])
        notifier.start(ledger)
        try:
            assert notifier.observe(ledger) == ()
            ledger.record_rejected(_info(2), [BAD])
            ledger.record_event("rollout-halted", "v2", {"stage": "canary", "gate": "errors", "reason": "errors 1 > 0"})
            fleet = Fleet.open(state)
            fleet.record_heartbeat(Heartbeat("node-1", policies=(PolicyReport("kmod", LoadStatus.REFUSED,
                                                                               reason="no kprobes"),)))
            fleet.close()
            found = notifier.observe(ledger)
            assert [n.kind for n in found] == [EventKind.COMMIT_REJECTED, EventKind.POLICY_REFUSED,
                                               EventKind.ROLLOUT_HALTED]
            assert found[0].details["commit"] == f"{2:040x}"
            assert notifier.outbox is not None
            assert notifier.outbox.pending() == {"ops": 3}
            wal = state.root / "notify.db-wal"
            size = wal.stat().st_size
            for _ in range(3):  # nothing new: nothing written (no fsync per tick)
                assert notifier.observe(ledger) == ()
            assert wal.stat().st_size == size
            now[0] += _dt.timedelta(seconds=31)
            assert [n.kind for n in notifier.observe(ledger)] == [EventKind.AGENT_STALE]
        finally:
            notifier.stop()
        # a restart remembers what was seen
        notifier = Notifier(config, state, stale_after=_dt.timedelta(seconds=30), clock=lambda: now[0])
        notifier.start(ledger)
        try:
            assert notifier.observe(ledger) == ()
        finally:
            notifier.stop()
    with Outbox.open(state, readonly=True) as outbox:
        assert outbox.pending() == {"ops": 4}

"""An operator's request to the rollout controller settles to a typed result, stored as the text rows always had."""
from __future__ import annotations

import datetime as _dt
import sqlite3
from pathlib import Path

from reconciler.rollout.db import Outcome, RequestResult, RolloutDB
from reconciler.state.statedir import StateDir

T0 = _dt.datetime(2026, 11, 21, 12, 0, tzinfo=_dt.UTC)


def test_a_settled_request_reads_back_its_outcome_and_detail(tmp_path: Path) -> None:
    db = RolloutDB.open(tmp_path)
    try:
        refused = db.request("resume", "try again", "olga", T0)
        applied = db.request("pause", "look at the canary", "olga", T0)
        assert db.get_request(refused).result is None  # type: ignore[union-attr]
        db.settle_request(refused, RequestResult(Outcome.REFUSED, "no rollout to resume"), T0)
        db.settle_request(applied, RequestResult(Outcome.APPLIED, "paused at stage canary"), T0)
        got = db.get_request(refused)
        assert got is not None and got.result == RequestResult(Outcome.REFUSED, "no rollout to resume")
        assert got.result.refused and str(got.result) == "refused: no rollout to resume"
        done = db.get_request(applied)
        assert done is not None and done.result is not None and not done.result.refused
        assert str(done.result) == "paused at stage canary"
    finally:
        db.close()
    # the rows hold the text older reconcilers wrote and read: `refused: why`, or what was done
    con = sqlite3.connect(StateDir.of(tmp_path).rollout_db)
    try:
        rows = [r[0] for r in con.execute("SELECT result FROM requests ORDER BY id")]
    finally:
        con.close()
    assert rows == ["refused: no rollout to resume", "paused at stage canary"]

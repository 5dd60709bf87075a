"""The SQLite ledger: records, the state lock, versions, and recovery from real crashes."""
from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.findings import error, warning
from reconciler.state.ledger import CommitInfo, Ledger, Result
from reconciler.state.store import SignedBundle, Store
from support.bundles import T0, Keys, commit_id, keypair, make_bundle
from wire import bundle as B

ROOT = Path(__file__).resolve().parents[3]
CHILD = ROOT / "tests" / "support" / "crash_publisher.py"


@pytest.fixture()
def k(tmp_path: Path) -> Keys:
    return keypair(tmp_path / "keys")


def _info(n: int, approvers: tuple[str, ...] = ()) -> CommitInfo:
    return CommitInfo(commit_id(n), commit_id(n - 1) if n else None, n, "Dev <dev@example.com>",
                      T0 + dt.timedelta(minutes=n), approvers)


def _accept(ledger: Ledger, store: Store, k: Keys, n: int) -> int:
    version = ledger.next_version(store)
    signed = SignedBundle.sign(make_bundle(version, commit=n), k.signing)
    entry = ledger.record_accepted(_info(n, ("Alice <alice@example.com>",)), [], signed, store, now=T0)
    assert entry.version == version
    return version


def test_records_survive_reopening(tmp_path: Path, k: Keys) -> None:
    state = tmp_path / "state"
    with Ledger.open(state) as ledger:
        store = Store(state / "store", k.signing)
        assert ledger.last_accepted() is None and ledger.next_version(store) == 1
        assert _accept(ledger, store, k, 0) == 1
        findings = [error("rules/a.yaml", 4, 7, "ladder", "skips a step"), warning("x.yaml", 1, 1, "w", "hm")]
        ledger.record_rejected(_info(1), findings)
        assert _accept(ledger, store, k, 2) == 2
    with Ledger.open(state) as ledger:
        entries = ledger.entries()
        assert [(e.position, e.result, e.version) for e in entries] == [
            (2, Result.ACCEPTED, 2), (1, Result.REJECTED, None), (0, Result.ACCEPTED, 1)]
        rejected = ledger.last_rejected()
        assert rejected is not None and rejected.commit == commit_id(1)
        assert sorted(findings) == list(rejected.findings)
        last = ledger.last_accepted()
        assert last is not None and last.commit == commit_id(2) and last.approvers == ("Alice <alice@example.com>",)
        assert last.committed == T0 + dt.timedelta(minutes=2)
        assert ledger.is_processed(commit_id(1)) and not ledger.is_processed(commit_id(3))
        assert [e.position for e in ledger.entries(limit=1)] == [2]
        assert ledger.next_version(Store(state / "store")) == 3
        assert entries[0].to_json()["result"] == "accepted"


def test_acceptances_say_when_each_commit_went_live(tmp_path: Path, k: Keys) -> None:
    # positions 0 and 2 accepted (at T0 and T0+2h), 1 rejected: commit 1 went live with commit 2
    state = tmp_path / "state"
    with Ledger.open(state) as ledger:
        store = Store(state / "store", k.signing)
        for n, when in ((0, T0), (2, T0 + dt.timedelta(hours=2))):
            data = B.sign_bundle(make_bundle(ledger.next_version(store), commit=n), k.signing)
            ledger.record_accepted(_info(n), [], data, store, now=when)
            if n == 0:
                ledger.record_rejected(_info(1), [error("a.yaml", 1, 1, "window", "too early")],
                                       now=T0 + dt.timedelta(hours=1))
        acc = ledger.acceptances()
    assert acc.live_since(0) == T0
    assert acc.live_since(1) == T0 + dt.timedelta(hours=2)  # never published itself
    assert acc.live_since(2) == T0 + dt.timedelta(hours=2)
    assert acc.live_since(3) is None


def test_database_is_wal_with_a_schema_version(tmp_path: Path) -> None:
    Ledger.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "palisade.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    db.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="schema version 9, written by a newer palisade"):
        Ledger.open(tmp_path)


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "palisade.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StateError, match=r"cannot (open|read) the ledger"):
        Ledger.open(tmp_path)
    with pytest.raises(StateError, match="no ledger at"):
        Ledger.open(tmp_path / "empty", readonly=True)


def test_one_reconciler_per_state_directory(tmp_path: Path, k: Keys) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from reconciler.state.ledger import Ledger; l = Ledger.open(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(StateError, match=f"in use by another reconciler \\(pid {holder.pid}\\)"):
            Ledger.open(tmp_path)
        # Readers (status, ledger commands) work beside the running reconciler.
        with Ledger.open(tmp_path, readonly=True) as reader:
            assert reader.entries() == []
            with pytest.raises(StateError, match="read-only"):
                reader.record_event("x", "y")
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock.
    Ledger.open(tmp_path).close()


def test_versions_are_never_reused(tmp_path: Path, k: Keys) -> None:
    with Ledger.open(tmp_path) as ledger:
        store = Store(tmp_path / "store", k.signing)
        _accept(ledger, store, k, 0)
        stale = B.sign_bundle(make_bundle(1, commit=1), k.signing)
        with pytest.raises(StateError, match="bundle version 1 was already used; the next free one is 2"):
            ledger.record_accepted(_info(1), [], stale, store)
        wrong = B.sign_bundle(make_bundle(2, commit=5), k.signing)
        with pytest.raises(StateError, match=f"the bundle is for commit {commit_id(5)}"):
            ledger.record_accepted(_info(1), [], wrong, store)
        # A bundle file no index names (an interrupted publish in another life) still burns its version.
        store.bundle_path(7).write_bytes(b"{}")
        assert ledger.next_version(store) == 8


def test_a_failed_publish_does_not_block_the_next_commit(tmp_path: Path, k: Keys) -> None:
    with Ledger.open(tmp_path) as ledger:
        keyless = Store(tmp_path / "store")  # cannot sign the index: publishing fails
        data = B.sign_bundle(make_bundle(1, commit=0), k.signing)
        with pytest.raises(StateError, match="without a signing key"):
            ledger.record_accepted(_info(0), [], data, keyless)
        assert ledger.pending() is None
        assert [(e.result, e.version) for e in ledger.entries()] == [(Result.INTERRUPTED, 1)]
        assert not ledger.is_processed(commit_id(0))
        store = Store(tmp_path / "store", k.signing)
        assert _accept(ledger, store, k, 0) == 2  # v1 stays burnt


def test_events(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        ledger.record_event("rollout-promoted", "v3", {"stage": "web"}, actor="controller", now=T0)
        ledger.record_event("rollout-halted", "v4", {"gate": "maxAgentErrors"})
        assert [e.kind for e in ledger.events()] == ["rollout-halted", "rollout-promoted"]
        (promoted,) = ledger.events(kind="rollout-promoted")
        assert (promoted.subject, dict(promoted.detail), promoted.actor, promoted.time) == (
            "v3", {"stage": "web"}, "controller", T0)
        assert len(ledger.events(limit=1)) == 1


# -- recovery from a real crash at each step of a publish ----------------------------------


def _kill_when(state: Path, k: Keys, ready: Callable[[Path], bool]) -> None:
    """Run the publisher for one commit with slow writes; SIGKILL it once `ready(store)` holds."""
    env = {**os.environ, "PALISADE_TEST_SLOW_WRITES": "0.5"}
    proc = subprocess.Popen([sys.executable, str(CHILD), str(state), str(k.key_path), "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 30
    while not ready(state / "store"):
        assert proc.poll() is None, f"publisher ended early: {proc.stderr.read() if proc.stderr else ''!r}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def _pending(state: Path) -> tuple[Result, int | None]:
    with Ledger.open(state, readonly=True) as ledger:
        (e,) = ledger.entries()
        return e.result, e.version


@pytest.mark.slow
def test_crash_while_writing_the_bundle(tmp_path: Path, k: Keys) -> None:
    state = tmp_path / "state"
    _kill_when(state, k, lambda s: any((s / "bundles").glob(".v1.json.tmp-*")))
    assert _pending(state) == (Result.PUBLISHING, 1)
    assert not (state / "store" / "index.json").exists()
    with Ledger.open(state) as ledger:
        store = Store(state / "store", k.signing)
        unsettled = ledger.unsettled(store)
        assert unsettled is not None and unsettled.entry.version == 1 and unsettled.bundle is None
        settled = ledger.recover(store, unsettled)
        assert settled is not None and settled.result is Result.INTERRUPTED
        assert not ledger.is_processed(commit_id(0))
        assert _accept(ledger, store, k, 0) == 2  # processed again, under a new version
        assert [e.kind for e in ledger.events()] == ["publish-interrupted"]
    assert sorted(p.name for p in (state / "store").rglob("*")) == ["bundles", "index.json", "v2.json"]


@pytest.mark.slow
def test_crash_between_bundle_and_index(tmp_path: Path, k: Keys) -> None:
    state = tmp_path / "state"
    _kill_when(state, k, lambda s: (s / "bundles" / "v1.json").exists())
    assert _pending(state) == (Result.PUBLISHING, 1)
    with Ledger.open(state) as ledger:
        store = Store(state / "store", k.signing)
        assert store.index() is None
        unsettled = ledger.unsettled(store)
        assert unsettled is not None and unsettled.bundle is not None
        assert (unsettled.bundle.version, unsettled.bundle.bundle.commit) == (1, commit_id(0))
        settled = ledger.recover(store, unsettled, stages={"canary": 1, "default": 1})
        assert settled is not None and (settled.result, settled.version) == (Result.ACCEPTED, 1)
        index = B.verify_index(store.index_bytes() or b"", [k.public])
        assert index.version == 1 and ledger.is_processed(commit_id(0))
        assert dict(index.stages) == {"canary": 1, "default": 1}  # the pins the caller decided
        assert ledger.next_version(store) == 2


@pytest.mark.slow
def test_crash_after_the_index_before_the_ledger(tmp_path: Path, k: Keys) -> None:
    state = tmp_path / "state"
    _kill_when(state, k, lambda s: (s / "index.json").exists())
    assert _pending(state) == (Result.PUBLISHING, 1)
    with Ledger.open(state) as ledger:
        store = Store(state / "store", k.signing)
        before = store.index()
        assert before is not None and before.version == 1
        settled = ledger.recover(store)
        assert settled is not None and settled.result is Result.ACCEPTED
        assert store.index() == before  # nothing republished
        assert ledger.recover(store) is None

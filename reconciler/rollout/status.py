"""The rollout status document, from a running controller or read from a state directory alone (`palisade rollout
status`).
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import StateError, VerificationError
from reconciler.rollout.db import DEFAULT_STALE_AFTER, RolloutDB
from reconciler.rollout.decide import Decision, Progress, evaluate
from reconciler.rollout.reports import report_of
from reconciler.state import statedir
from wire.bundle import Bundle, Index, parse_bundle, parse_index

if TYPE_CHECKING:
    from reconciler.state.fleet import AgentRecord


#: The status document's names for the members of `Progress.to_json` it shows.
_PROGRESS_KEYS = {"target": "target", "stable": "stable", "started": "started", "since": "stageSince",
                  "paused": "paused", "halted": "haltReason", "aborted": "abortReason", "fastTracked": "fastTracked"}


def status_doc(progress: Progress, index: Index | None, decision: Decision | None,
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
    shown = progress.to_json()
    doc: dict[str, Any] = {"state": state, **{name: shown[key] for key, name in _PROGRESS_KEYS.items()}}
    doc.update({
        "pins": dict(index.stages) if index else {},
        "version": index.version if index else None,
        "reason": decision.reason if decision else "nothing published yet",
        "stages": [s.to_json() for s in decision.stages] if decision else [],
        "classification": None,
    })
    if plan is not None:
        relaxing, fast, reasons = plan
        doc["classification"] = {"kind": "relaxing" if relaxing else "tightening", "fastTracked": fast,
                                 "reasons": reasons}
    return doc


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
                now: _dt.datetime | None = None, agents: Callable[[], Sequence[AgentRecord]] | None = None,
                bundle: Callable[[int], Bundle | None] | None = None) -> dict[str, Any]:
    """The rollout status from a state directory alone (takes no lock, writes nothing). A long-running reader
    (the console) may pass its own cached `agents()` and `bundle(version)` for the fleet and the store."""
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
            return status_doc(progress, None, None, None)
        fleet_agents: Sequence[AgentRecord] = agents() if agents is not None else []
        if agents is None and state.has_fleet():
            from reconciler.state.fleet import Fleet

            fleet = Fleet.open(state)
            try:
                fleet_agents = fleet.agents()
            finally:
                fleet.close()
        target = None
        if progress.target is not None and bundle is not None:
            target = bundle(progress.target)
        elif progress.target is not None:
            data = store.bundle_bytes(progress.target)
            target = parse_bundle(data) if data else None
        reports = [report_of(a, opened.get(a.id)) for a in fleet_agents]
        stale = stale_after or (db.stale_after() if db else None) or DEFAULT_STALE_AFTER
        decision = evaluate(target, progress, index.stages, reports,
                            now=(now or _dt.datetime.now(_dt.UTC)).replace(microsecond=0), stale_after=stale)
        return status_doc(progress, index, decision,
                           db.plan(progress.target) if db and progress.target else None)
    finally:
        if db is not None:
            db.close()

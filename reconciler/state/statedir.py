"""The reconciler's state directory: the one place that says what lives where in it.

    <state>/
      store/             the bundle store `palisade serve` serves (StoreDir)
        index.json       the signed index
        bundles/vN.json  the signed bundles
        objects/<sha256> CO-RE objects bundles name
      palisade.db        the ledger (accepted and rejected commits, operator events)
      lock               held by the one reconciler that writes here
      rollout.db         the rollout controller's progress and sensor versions
      fleet.db           the agents' heartbeats and observations
      notify.db          the notification outbox and its delivery record (`palisade serve --notify`)
      mirror.git         the reconciler's mirror of the policy repository
      objects/           CO-RE objects built for bundles, cached by input

`StateDir` is the writer's handle (the reconciler, `palisade serve`); `StateView` is what
readers hold (status, audit, rollout and ledger commands): the same paths and `has_*`
questions, nothing that creates a file or a directory. Neither touches the disk when made.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, overload

__all__ = ["BUNDLES_DIR", "FLEET_DB", "INDEX_FILE", "LEDGER_DB", "LOCK_FILE", "MIRROR", "NOTIFY_DB", "OBJECTS_DIR",
           "OBJECT_CACHE", "ROLLOUT_DB", "STORE", "StateDir", "StateView", "StoreDir"]

STORE = "store"
LEDGER_DB = "palisade.db"
LOCK_FILE = "lock"
ROLLOUT_DB = "rollout.db"
FLEET_DB = "fleet.db"
NOTIFY_DB = "notify.db"
MIRROR = "mirror.git"
OBJECT_CACHE = "objects"
# inside the store
INDEX_FILE = "index.json"
BUNDLES_DIR = "bundles"
OBJECTS_DIR = "objects"


class _Rooted(Protocol):
    @property
    def root(self) -> Path: ...


class _Below:
    """A read-only attribute of a directory handle: the path `name` below its root."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, handle: None, owner: type) -> _Below: ...
    @overload
    def __get__(self, handle: _Rooted, owner: type) -> Path: ...
    def __get__(self, handle: _Rooted | None, owner: type) -> Path | _Below:
        return self if handle is None else handle.root / self.name


@dataclass(frozen=True)
class StoreDir:
    """The layout of one bundle store directory."""

    root: Path

    index = _Below(INDEX_FILE)
    bundles = _Below(BUNDLES_DIR)
    objects = _Below(OBJECTS_DIR)

    def bundle(self, version: int) -> Path:
        return self.bundles / f"v{int(version)}.json"


@dataclass(frozen=True)
class StateView:
    """A state directory as a reader sees it: where each part is and whether it exists."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str or any path-like is accepted

    @classmethod
    def of(cls, where: StateView | str | os.PathLike[str]) -> Self:
        """`where` as this kind of handle: a directory's path, or another handle on the same directory."""
        return cls(where.root if isinstance(where, StateView) else Path(where))

    @property
    def store(self) -> StoreDir:
        return StoreDir(self.root / STORE)

    ledger_db = _Below(LEDGER_DB)
    rollout_db = _Below(ROLLOUT_DB)
    fleet_db = _Below(FLEET_DB)
    notify_db = _Below(NOTIFY_DB)
    mirror = _Below(MIRROR)
    object_cache = _Below(OBJECT_CACHE)

    def has_ledger(self) -> bool:
        return self.ledger_db.is_file()

    def has_rollouts(self) -> bool:
        return self.rollout_db.is_file()

    def has_fleet(self) -> bool:
        """Whether any agent has reported (the fleet database is made on the first heartbeat)."""
        return self.fleet_db.is_file()


@dataclass(frozen=True)
class StateDir(StateView):
    """A state directory as its writer holds it: the view's paths, the lock, and its creation."""

    @classmethod
    def holding(cls, store: str | os.PathLike[str]) -> StateDir:
        """The state directory a bundle store `store` sits in: its parent, by the layout above
        (a store served on its own keeps its fleet beside it, in the same parent)."""
        return cls(Path(store).parent)

    lock = _Below(LOCK_FILE)

    @property
    def view(self) -> StateView:
        """The read-only view of this directory, for code that only reads."""
        return StateView(self.root)

    def create(self) -> None:
        """The directory itself, private to the reconciler's user (0700 when it is made here)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

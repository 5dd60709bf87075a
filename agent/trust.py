"""What this agent has accepted so far, kept on disk: the floor for anti-replay and anti-rollback.

An index is accepted only if its serial is not lower than the highest serial
accepted before (a replayed older index) and its version not lower than the
highest version (a rollback). Forgetting these on restart would reopen both
attacks, so they are written atomically after every acceptance. The file is not
signed; if it is damaged, the floor falls back to the serial and version of the
last-known-good index, which *is* signed (see `lkg`), so a damaged file can never
lower the floor below what the agent verifiably enforced.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from wire.bundle import MAX_INT

from .atomic import write_atomic

__all__ = ["TRUST_FILE", "TrustState", "encode", "load", "save"]

log = logging.getLogger("palisade.agent.trust")

TRUST_FILE = "trust.json"


@dataclass(frozen=True)
class TrustState:
    serial: int = 0
    version: int = 0
    keyids: tuple[str, ...] = ()  # the pinned keys the last acceptance was verified with

    def raised(self, serial: int, version: int) -> TrustState:
        return TrustState(max(self.serial, serial), max(self.version, version), self.keyids)


def load(state_dir: Path) -> tuple[TrustState, str | None]:
    """The stored floor, and a problem description when the file exists but is unusable."""
    path = Path(state_dir) / TRUST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return TrustState(), None
    except OSError as e:
        return TrustState(), f"{path}: {e.strerror}"
    try:
        doc = json.loads(raw)  # a >4300-digit number is a ValueError here, like any other damage
        serial, version, keyids = doc["serial"], doc["version"], doc.get("keyids", [])
        if not (_counter(serial) and _counter(version)
                and isinstance(keyids, list) and all(isinstance(k, str) for k in keyids)):
            raise ValueError("wrong types or numbers out of range")
    except (ValueError, KeyError, TypeError) as e:
        return TrustState(), f"{path} is damaged ({e}); falling back to the last-known-good index"
    return TrustState(serial, version, tuple(keyids)), None


def _counter(v: object) -> bool:
    # an absurd floor (a 4,000-digit serial) would refuse every genuine index forever: the file is damaged
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_INT


def encode(state: TrustState) -> bytes:
    doc = asdict(state)
    doc["keyids"] = list(state.keyids)
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


def save(state_dir: Path, state: TrustState) -> None:
    write_atomic(Path(state_dir) / TRUST_FILE, encode(state))

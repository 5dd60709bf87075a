"""A reconciler state directory with history, for the console's page tests: a real git policy repository
(example-repo), a real reconciler that accepted and rejected commits into a real ledger and bundle store,
a rollout in progress, and heartbeats with observations recorded as the server records them.

    s = ConsoleState.build(tmp_path)
    s.state, s.repo.path, s.accepted   # what `palisade readiness/audit/rollout status --state` read

History (real time, so the CLI's "now" and the pages' agree):
  v1  the import of example-repo
  v2  egress-guard at sensor:db-legacy-7 back to observe (relaxing: fast-tracked to every stage),
      committed with the XSS probe as its message
  v3  web-lockdown at group:web enforce_ready -> enforced, merged and signed by Alice (tightening:
      pinned to the canary stage, baking)
  rejected: egress-guard at group:db observe -> enforce_ready with no approval, message the probe

Agents: the canary runs v3; web-1, web-2 and db-1 run v2. web-1 observed the probe as a binary that
the web allowlist would have killed.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler import keys
from reconciler.publish.reconcile import Reconciler
from reconciler.state.fleet import Fleet
from wire.heartbeat import parse as parse_heartbeat

from .policyrepo import ALICE, DEV, PolicyRepo

XSS = "<img src=x onerror=alert(1)>"
SENSORS = {"node-canary-1": {"role": "web"}, "web-1": {"role": "web"}, "web-2": {"role": "web"},
           "db-1": {"role": "db"}}
STAGE = {"node-canary-1": "canary", "web-1": "web", "web-2": "web", "db-1": "fleet"}
_ORIGIN = {"web-exec-allowlist": ("pack", "web-lockdown"), "egress-allowed-networks": ("pack", "egress-guard"),
           "baseline-process-lifecycle": ("pack", "baseline-observe"),
           "baseline-privilege-changes": ("pack", "baseline-observe")}


@dataclass
class ConsoleState:
    repo: PolicyRepo
    state: Path
    key: Path  # the signing key the state's bundles are signed with (for `palisade serve --key`)
    accepted: str  # the last accepted commit
    rejected: str

    @classmethod
    def build(cls, tmp: Path) -> ConsoleState:
        """The history above; the reconciler's clock runs from six days ago to now, so every observation
        window the repository asks for (72h) has passed where the history says it has."""
        repo = PolicyRepo.create(tmp)
        now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
        clock = [now - _dt.timedelta(days=6)]
        repo.git.now = clock[0] - _dt.timedelta(hours=1)
        pair = keys.generate(tmp / "keys")
        state = tmp / "state"
        with Reconciler(str(repo.path), state, keys.load_signing_key(pair.signing_key_path), objects=False,
                        clock=lambda: clock[0]) as rec:
            assert rec.run_once().published == (1,)
            beat_all(state, rec, clock[0])
            rec.tick()
            clock[0] += _dt.timedelta(days=1)
            repo.git.now = clock[0] - _dt.timedelta(minutes=30)
            repo.edit("enforcement/egress-guard.yaml", "    - scope: {sensor: db-legacy-7}\n      state: enforce_ready",
                      "    - scope: {sensor: db-legacy-7}\n      state: observe")
            repo.git.commit(XSS, author=DEV)
            assert rec.run_once().published == (2,)
            beat_all(state, rec, clock[0])
            rec.tick()
            clock[0] += _dt.timedelta(days=3)
            repo.git.now = clock[0] - _dt.timedelta(minutes=30)
            repo.git.branch("enforce-web")
            repo.edit("enforcement/web-lockdown.yaml", "    - scope: {group: web}\n      state: enforce_ready",
                      "    - scope: {group: web}\n      state: enforced")
            repo.git.commit("Enforce the web allowlist", author=DEV, sign=repo.keys["dana"])
            repo.git.checkout("main")
            accepted = repo.git.merge("enforce-web", author=ALICE, sign=repo.keys["alice"],
                                      message="Merge enforce-web: the allowlist has been quiet for days")
            assert rec.run_once().published == (3,), rec.ledger.entries(limit=1)[0].findings
            beat_all(state, rec, clock[0])
            rec.tick()
            clock[0] = now
            repo.git.now = now - _dt.timedelta(minutes=5)
            repo.edit("enforcement/egress-guard.yaml", "    - scope: {group: db}\n      state: observe",
                      "    - scope: {group: db}\n      state: enforce_ready")
            rejected = repo.git.commit(XSS, author=DEV)
            out = rec.run_once()
            assert out.published == () and str(out.processed[0].result) == "rejected"
            beat_all(state, rec, now)
            rec.tick()  # the canary baked long ago: v3 moves on to the web stage, which bakes from now
            beat_all(state, rec, now)
            rec.tick()  # the controller records that web-1 and web-2 now run v3
        return cls(repo, state, pair.signing_key_path, accepted, rejected)


def beat_all(state: Path, rec: Reconciler, now: _dt.datetime) -> None:
    """A heartbeat from every sensor, each running the version pinned for its stage."""
    index = rec.store.index()
    assert index is not None
    fleet = Fleet.open(state)
    try:
        for sensor, labels in SENSORS.items():
            fleet.record_heartbeat(parse_heartbeat(heartbeat(sensor, labels, index.pinned(STAGE[sensor])), sensor),
                                 now=now)
    finally:
        fleet.close()


def heartbeat(sensor: str, labels: dict[str, str], version: int) -> dict[str, Any]:
    """The report an agent of `labels` running `version` posts (policies it loaded, what it observed)."""
    names = ["baseline-process-lifecycle", "baseline-privilege-changes"]
    names.append("web-exec-allowlist" if labels["role"] == "web" else "egress-allowed-networks")
    observations = []
    if sensor == "web-1":
        observations = [{"policy": "web-exec-allowlist", "binary": XSS, "count": 3, "workload": "web",
                         "action": "KPROBE_ACTION_SIGKILL", "acted": False},
                        {"policy": "web-exec-allowlist", "binary": "/usr/bin/curl", "count": 2, "workload": "web",
                         "action": "KPROBE_ACTION_SIGKILL", "acted": False}]
    return {"labels": labels, "version": version, "stage": STAGE.get(sensor, "fleet"), "commit": "ab" * 20,
            "policies": [{"name": n, "status": "loaded", "mode": "observe", "reason": None,
                          "origin": {"kind": _ORIGIN[n][0], "name": _ORIGIN[n][1]}, "version": version}
                         for n in names],
            "drift": {"detected": 0, "healed": 0, "unhealed": 0, "findings": []},
            "counters": {}, "observations": observations}


@pytest.fixture(scope="module")
def console_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleState]:
    """One state for a test module (its tests only read it)."""
    yield ConsoleState.build(tmp_path_factory.mktemp("console"))

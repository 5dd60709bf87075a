"""Progressive rollout end to end: the real `palisade serve` in a subprocess on a loopback port, a
real git repository made from example-repo/, real keys, and a fleet of ten agents that pull the
signed index, load the version pinned for their stage and post real heartbeats over HTTP.

Stages: canary (1 sensor), group (3), fleet (the other 6), with 2-second bakes. The tests wait on
conditions (pins, the status, the ledger, the server's log), never for a fixed time; what the bake
time decides (a halted, paused or blocked rollout stays put however long) is shown with a clock the
test moves, on an in-process controller (tests/reconciler/rollout/test_controller.py)."""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from reconciler.keys import generate, load_public_key
from reconciler.state.ledger import Ledger
from support.policyrepo import ALICE, PolicyRepo
from support.serve import Serve
from wire.bundle import Index, verify_index

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"canary": ["s1"], "group": ["s2", "s3", "s4"], "fleet": ["s5", "s6", "s7", "s8", "s9", "s10"]}
STAGE_OF = {s: stage for stage, sensors in STAGES.items() for s in sensors}
HEARTBEAT = 0.3
AGENT_TIMEOUT = "3s"

pytestmark = pytest.mark.slow

STAGING = """\
apiVersion: palisade.dev/v1
kind: Rollout
metadata:
  name: default
spec:
  fastTrack: {fast_track}
  stages:
    - name: canary
      sensors: {{ids: [s1]}}
      bake: {bake}
      gates: {{maxAgentErrors: 0, maxPoliciesRefused: {max_refused}, maxUnhealedDrift: 0,
              maxEnforcementActionsPerNode: 5, minReportingRatio: 1.0}}
    - name: group
      sensors: {{ids: [s2, s3, s4]}}
      bake: 2s
      gates: {{maxAgentErrors: 0, maxEnforcementActionsPerNode: 5, minReportingRatio: 1.0}}
    - name: fleet
      sensors: {{rest: true}}
      bake: 2s
      gates: {{maxAgentErrors: 1, minReportingRatio: 0.8}}
"""

# A tightening change (needs a reviewer's signature) and a relaxing one (back to observe).
TIGHTEN = [("enforcement/web-lockdown.yaml", "state: enforce_ready", "state: enforced")]
RELAX = [("enforcement/web-lockdown.yaml", "    - scope: {group: canary}\n      state: enforced",
          "    - scope: {group: canary}\n      state: observe")]


# ---------------------------------------------------------------------------
# The server


# ---------------------------------------------------------------------------
# The fleet


@dataclass
class Fleet:
    """Ten agents: each pulls and verifies the index, runs the version pinned for its stage, and
    heartbeats. Knobs: `actions` (enforcement actions an agent counts once it runs a version at least
    `actions_from`), `silent` (agents that stop reporting), `lag` (seconds before an agent loads a new pin)."""

    url: str
    pub: Path
    actions: dict[str, int] = field(default_factory=dict)
    actions_from: int = 10**9
    silent: set[str] = field(default_factory=set)
    lag: dict[str, float] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    real: set[str] = field(default_factory=set)  # sensors a real agent process runs
    running: dict[str, int | None] = field(default_factory=dict)
    pins_seen: list[tuple[float, dict[str, int], int]] = field(default_factory=list)  # (t, pins, version)
    _pending: dict[str, tuple[int, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)

    def start(self) -> Fleet:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        key = load_public_key(self.pub)
        serial = 0
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                try:
                    r = client.get("/v1/index")
                    if r.status_code == 200:
                        index = verify_index(r.content, [key], min_serial=serial)
                        serial = index.serial
                        if not self.pins_seen or self.pins_seen[-1][1] != dict(index.stages):
                            self.pins_seen.append((time.monotonic(), dict(index.stages), index.version))
                        for sensor, stage in STAGE_OF.items():
                            if sensor not in self.real:
                                self._beat(client, sensor, stage, index)
                except (httpx.HTTPError, AssertionError) as e:
                    self.errors.append(str(e))
                self._stop.wait(HEARTBEAT)

    def _beat(self, client: httpx.Client, sensor: str, stage: str, index: Index) -> None:
        want = index.pinned(stage)
        now = time.monotonic()
        if self.running.get(sensor) != want:
            pending = self._pending.get(sensor)
            if pending is None or pending[0] != want:
                self._pending[sensor] = pending = (want, now + self.lag.get(sensor, 0.0))
            if now >= pending[1]:
                self.running[sensor] = want
        if sensor in self.silent:
            return
        version = self.running.get(sensor)
        enforced = self.actions.get(sensor, 0) if version is not None and version >= self.actions_from else 0
        labels = self.labels.get(sensor, {"stage": stage})
        doc = {"sensor": sensor, "labels": labels, "version": version, "stage": stage, "commit": None,
               "policies": [], "drift": {"detected": 0, "healed": 0, "unhealed": 0},
               "counters": {"events": enforced, "enforced": enforced, "wouldHaveEnforced": 0},
               "observations": []}
        r = client.post(f"/v1/agents/{sensor}/heartbeat", json=doc)
        if r.status_code != 204:
            self.errors.append(f"heartbeat {sensor}: {r.status_code} {r.text}")

    def wait_pins(self, want: dict[str, int], timeout: float, *, after: float | None = None) -> float:
        """Until the index pins at least `want` (in an index seen after `after`); the time it was first seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, pins, _ in self.pins_seen:
                if (after is None or t > after) and all(pins.get(k) == v for k, v in want.items()):
                    return t
            time.sleep(0.05)
        raise AssertionError(f"pins {want} not reached in {timeout}s; seen: {[p for _, p, _ in self.pins_seen]}")


# ---------------------------------------------------------------------------
# Fixtures


@dataclass
class World:
    repo: PolicyRepo
    state: Path
    key: Path
    pub: Path
    serve: Serve
    fleet: Fleet

    def restart(self, sig: int = signal.SIGTERM) -> None:
        if sig == signal.SIGTERM:
            assert self.serve.stop() == 0, self.serve.log
        else:  # a crash
            self.serve.proc.send_signal(sig)
            assert self.serve.proc.wait(30) == -sig
        self.serve = Serve(self.repo.path, self.state, self.key, "--agent-timeout", AGENT_TIMEOUT)
        # the fleet keeps talking to the new port
        self.fleet.stop()
        self.fleet = Fleet(self.serve.url, self.pub, actions=self.fleet.actions, actions_from=self.fleet.actions_from,
                           silent=self.fleet.silent, lag=self.fleet.lag, labels=self.fleet.labels,
                           running=self.fleet.running,
                           pins_seen=self.fleet.pins_seen).start()


def _policy(tmp_path: Path, *, fast_track: bool, bake: str, max_refused: int = 0) -> PolicyRepo:
    # windows run on the reconciler's real clock (not on commit dates); rollouts are the subject here
    repo = PolicyRepo.create(tmp_path, min_observation="0s")
    repo.git.write("staging/default.yaml", STAGING.format(fast_track=str(fast_track).lower(), bake=bake,
                                                          max_refused=max_refused))
    # Part of the first commit, so v1 already carries this staging plan.
    env = {"GIT_AUTHOR_NAME": ALICE.name, "GIT_AUTHOR_EMAIL": ALICE.email, "GIT_COMMITTER_NAME": ALICE.name,
           "GIT_COMMITTER_EMAIL": ALICE.email, "GIT_AUTHOR_DATE": f"{int(repo.git.now.timestamp())} +0000",
           "GIT_COMMITTER_DATE": f"{int(repo.git.now.timestamp())} +0000"}
    repo.git.git("commit", "-q", "--amend", "--no-edit", "--no-verify", env=env)
    return repo


@pytest.fixture()
def make_world(tmp_path: Path) -> Iterator[object]:
    worlds: list[World] = []

    def make(*, fast_track: bool = False, bake: str = "2s", labels: dict[str, dict[str, str]] | None = None,
             real: set[str] | None = None, max_refused: int = 0) -> World:
        repo = _policy(tmp_path, fast_track=fast_track, bake=bake, max_refused=max_refused)
        kp = generate(tmp_path / "keys")
        state = tmp_path / "state"
        serve = Serve(repo.path, state, kp.signing_key_path, "--agent-timeout", AGENT_TIMEOUT)
        fleet = Fleet(serve.url, kp.public_key_path, labels=labels or {}, real=real or set()).start()
        w = World(repo, state, kp.signing_key_path, kp.public_key_path, serve, fleet)
        worlds.append(w)
        fleet.wait_pins({"canary": 1, "group": 1, "fleet": 1}, 30)
        _wait(lambda: _rollout(state)["state"] == "complete", 10)
        return w

    yield make
    for w in worlds:
        w.fleet.stop()
        code = w.serve.stop()
        assert code == 0, w.serve.log
        assert "Traceback" not in w.serve.log, w.serve.log
        assert not w.fleet.errors, w.fleet.errors[:5]


def _wait_log(serve: Serve, pattern: str, timeout: float) -> None:
    """Until the server logs a line matching `pattern` (the controller logs each new reason it holds for)."""
    _wait(lambda: re.search(pattern, serve.log, re.MULTILINE) is not None, timeout)


def _began(state: Path, version: int) -> set[str]:
    """The sensors the controller has seen running `version` (its sensor-version rows)."""
    return {e["subject"] for e in _events(state, "sensor-version") if e["detail"]["version"] == version}


def _wait(cond: object, timeout: float) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def _rollout(state: Path) -> dict:  # type: ignore[type-arg]
    out = _cli("rollout", "status", "--state", str(state), "-o", "json")
    assert out.returncode in (0, 1), out.stderr
    doc: dict = json.loads(out.stdout)  # type: ignore[type-arg]
    return doc


def _events(state: Path, kind: str | None) -> list[dict]:  # type: ignore[type-arg]
    with Ledger.open(state, readonly=True) as ledger:
        return [e.to_json() for e in reversed(ledger.events(kind))]


def _ledger_entries(state: Path) -> list:  # type: ignore[type-arg]
    with Ledger.open(state, readonly=True) as ledger:
        return ledger.entries()


def _first_index_with(fleet: Fleet, version: int) -> dict[str, int]:
    return next(p for _, p, v in fleet.pins_seen if v >= version)


# ---------------------------------------------------------------------------
# Tests


def test_tightening_change_reaches_stages_in_order_after_bake_and_gates(make_world: object) -> None:
    assert callable(make_world)
    w: World = make_world()
    w.fleet.lag["s4"] = 4.0  # one group agent is slow to load: the fleet must wait for it
    w.repo.change("enforce web-lockdown on web", TIGHTEN, signer="alice", wait_days=4)

    t_canary = w.fleet.wait_pins({"canary": 2}, 30)
    assert _first_index_with(w.fleet, 2) == {"canary": 2, "group": 1, "fleet": 1, "default": 1}
    t_group = w.fleet.wait_pins({"group": 2}, 30)
    t_fleet = w.fleet.wait_pins({"fleet": 2}, 30)
    order = [p for _, p, v in w.fleet.pins_seen if v == 2]
    assert [(p["canary"], p["group"], p["fleet"]) for p in order] == [(2, 1, 1), (2, 2, 1), (2, 2, 2)], order
    assert t_group - t_canary >= 1.7  # canary baked 2s (the fleet polls every 0.3s)
    assert t_fleet - t_group >= 3.5  # s4 loaded v2 4s after its pin, and only then the group baked out

    _wait(lambda: _rollout(w.state)["state"] == "complete", 15)
    doc = _rollout(w.state)
    assert doc["stable"] == 2 and doc["pins"] == {"canary": 2, "group": 2, "fleet": 2, "default": 2}
    assert doc["classification"]["kind"] == "tightening"
    promoted = [e["detail"]["stage"] for e in _events(w.state, "rollout-promoted") if e["subject"] == "v2"]
    assert promoted == ["group", "fleet"]
    assert all(e["actor"] == "palisade-rollout" for e in _events(w.state, "rollout-promoted"))
    assert _began(w.state, 2) == set(STAGE_OF)

    metrics = httpx.get(f"{w.serve.url}/metrics", timeout=10).text
    assert 'palisade_rollout_promotions_total{stage="group"} 1.0' in metrics
    assert 'palisade_rollout_stage_version{stage="fleet"} 2.0' in metrics
    assert "palisade_rollout_duration_seconds_count 1.0" in metrics


def test_canary_over_the_actions_gate_halts_and_rolls_back(make_world: object) -> None:
    assert callable(make_world)
    w: World = make_world()
    w.fleet.actions["s1"] = 9
    w.fleet.actions_from = 2  # v2 makes the canary kill things
    w.repo.change("enforce web-lockdown on web", TIGHTEN, signer="alice", wait_days=4)

    canary = w.fleet.wait_pins({"canary": 2}, 30)
    w.fleet.wait_pins({"canary": 1, "group": 1, "fleet": 1}, 15, after=canary)  # rolled back
    _wait(lambda: _rollout(w.state)["state"] == "halted", 10)
    # nothing else moved (and nothing does, however long the bakes last:
    # rollout/test_controller.py::test_after_a_halt_nothing_moves_however_long_every_bake_lasts)
    assert all(p["group"] == 1 and p["fleet"] == 1 for _, p, _ in w.fleet.pins_seen)
    assert w.fleet.pins_seen[-1][1] == {"canary": 1, "group": 1, "fleet": 1, "default": 1}

    out = _cli("rollout", "status", "--state", str(w.state))
    assert out.returncode == 1, out.stderr
    assert "HALTED    stage canary: enforcement actions per node 9 > 5 (maxEnforcementActionsPerNode): " \
           "s1: 9 enforcement actions" in out.stdout, out.stdout
    halted = [e for e in _events(w.state, "rollout-halted") if e["subject"] == "v2"]
    assert len(halted) == 1 and halted[0]["detail"]["stage"] == "canary"
    assert halted[0]["detail"]["gate"] == "maxEnforcementActionsPerNode"
    back = [e for e in _events(w.state, "rollout-rolled-back") if e["subject"] == "v2"]
    assert back[0]["detail"]["pins"] == {"canary": 1, "group": 1, "fleet": 1, "default": 1}
    hist = _cli("rollout", "history", "--state", str(w.state))
    assert hist.returncode == 0, hist.stderr
    assert re.search(r"rollout-halted +v2 canary  by palisade-rollout  stage canary: enforcement actions per node",
                     hist.stdout), hist.stdout
    # the server reports the same (its status document carries the rollout)
    remote = _cli("rollout", "status", "--server", w.serve.url, "-o", "json")
    assert remote.returncode == 1, remote.stderr
    assert json.loads(remote.stdout)["haltReason"] == _rollout(w.state)["haltReason"]
    # palisade status shows it too, and needs attention
    st = _cli("status", "--state", str(w.state))
    assert st.returncode == 1 and "enforcement actions per node 9 > 5" in st.stdout, st.stdout
    metrics = httpx.get(f"{w.serve.url}/metrics", timeout=10).text
    assert 'palisade_rollout_halts_total{reason="maxEnforcementActionsPerNode"} 1.0' in metrics


def test_a_silent_canary_blocks_promotion_and_status_says_why(make_world: object) -> None:
    assert callable(make_world)
    w: World = make_world()
    w.fleet.silent.add("s1")  # the canary goes quiet (it reported v1 before)
    _wait(lambda: _rollout(w.state)["stages"][0]["reporting"] == 0, 15)  # past the 3s agent timeout
    w.repo.change("enforce web-lockdown on web", TIGHTEN, signer="alice", wait_days=4)
    w.fleet.wait_pins({"canary": 2}, 30)
    # past the 2s bake: the controller holds for the silent canary alone (no "baking, ...s left" any more)
    _wait_log(w.serve, r"rollout of v2 holds at canary: reporting share 0\.00 < 1\.00 \(minReportingRatio\): "
                       r"0 of 1 agents reporting; not reporting: s1$", 15)
    assert w.fleet.pins_seen[-1][1]["group"] == 1
    out = _cli("rollout", "status", "--state", str(w.state))
    assert out.returncode == 0, out.stderr
    assert "reporting share 0.00 < 1.00 (minReportingRatio): 0 of 1 agents reporting; not reporting: s1" \
        in out.stdout, out.stdout
    doc = _rollout(w.state)
    canary = doc["stages"][0]
    assert (canary["name"], canary["agents"], canary["reporting"]) == ("canary", 1, 0)
    assert doc["state"] == "progressing"
    # it reports again: the rollout moves on
    w.fleet.silent.clear()
    w.fleet.wait_pins({"group": 2}, 15)


@pytest.mark.parametrize("fast_track", [True, False])
def test_relaxing_revert_is_fast_tracked_only_when_the_plan_says_so(make_world: object, fast_track: bool) -> None:
    assert callable(make_world)
    w: World = make_world(fast_track=fast_track)
    w.repo.change("web-lockdown back to observe on the canary", RELAX)
    w.fleet.wait_pins({"canary": 2}, 30)
    first = _first_index_with(w.fleet, 2)
    if fast_track:
        assert first == {"canary": 2, "group": 2, "fleet": 2, "default": 2}
        doc = _rollout(w.state)
        assert doc["state"] == "complete" and doc["fastTracked"]
        assert doc["classification"]["kind"] == "relaxing" and doc["classification"]["fastTracked"]
        assert any("enforced → observe" in r for r in doc["classification"]["reasons"])
    else:
        assert first == {"canary": 2, "group": 1, "fleet": 1, "default": 1}
        w.fleet.wait_pins({"group": 2}, 15)
        w.fleet.wait_pins({"fleet": 2}, 15)
        order = [(p["canary"], p["group"], p["fleet"]) for _, p, v in w.fleet.pins_seen if v == 2]
        assert order == [(2, 1, 1), (2, 2, 1), (2, 2, 2)]


def test_pause_resume_abort_are_recorded_with_operator_and_reason(make_world: object) -> None:
    assert callable(make_world)
    w: World = make_world()
    w.repo.change("enforce web-lockdown on web", TIGHTEN, signer="alice", wait_days=4)
    w.fleet.wait_pins({"canary": 2}, 30)
    missing = _cli("rollout", "pause", "--state", str(w.state))
    assert missing.returncode == 2 and "--reason" in missing.stderr
    out = _cli("rollout", "pause", "--state", str(w.state), "--reason", "checking canary logs", "--operator", "olga")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pause by olga: paused at stage canary" in out.stdout
    # the controller holds (and keeps holding past the bake: rollout/test_controller.py::
    # test_a_paused_rollout_holds_past_its_bake_and_resumes_where_it_was)
    _wait_log(w.serve, r"rollout of v2 holds at canary: paused by an operator$", 15)
    assert w.fleet.pins_seen[-1][1]["group"] == 1
    assert _rollout(w.state)["reason"] == "paused by an operator"
    out = _cli("rollout", "resume", "--state", str(w.state), "--reason", "logs clean", "--operator", "olga")
    assert out.returncode == 0, out.stdout + out.stderr
    group = w.fleet.wait_pins({"group": 2}, 15)
    out = _cli("rollout", "abort", "--state", str(w.state), "--reason", "wrong ticket", "--operator", "olga")
    assert out.returncode == 0, out.stdout + out.stderr
    w.fleet.wait_pins({"canary": 1, "group": 1, "fleet": 1}, 10, after=group)
    kinds = [(e["kind"], e["actor"], e["detail"].get("reason")) for e in _events(w.state, None)
             if e["kind"] in ("rollout-paused", "rollout-resumed", "rollout-aborted")]
    assert kinds == [("rollout-paused", "olga", "checking canary logs"), ("rollout-resumed", "olga", "logs clean"),
                     ("rollout-aborted", "olga", "wrong ticket")]
    again = _cli("rollout", "pause", "--state", str(w.state), "--reason", "x")
    assert again.returncode == 1 and "refused: no rollout is in progress" in again.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_rollout_state_survives_a_restart_mid_bake(make_world: object, sig: int) -> None:
    assert callable(make_world)
    w: World = make_world(bake="6s")
    w.repo.change("enforce web-lockdown on web", TIGHTEN, signer="alice", wait_days=4)
    t_canary = w.fleet.wait_pins({"canary": 2}, 30)
    # mid-bake: the controller has baked the canary for 2s at least, 4s or less are left
    _wait_log(w.serve, r"rollout of v2 holds at canary: (.*; )?baking, [1-4]s left$", 15)
    w.restart(sig)
    t_group = w.fleet.wait_pins({"group": 2}, 30)
    assert t_group - t_canary >= 5.7  # the bake went on from where it was, it did not end early...
    assert t_group - t_canary < 15  # ...nor start over
    w.fleet.wait_pins({"fleet": 2}, 15)
    _wait(lambda: _rollout(w.state)["state"] == "complete", 10)
    started = [e for e in _events(w.state, "rollout-started") if e["subject"] == "v2"]
    promoted = [e["detail"]["stage"] for e in _events(w.state, "rollout-promoted") if e["subject"] == "v2"]
    assert len(started) == 1 and promoted == ["group", "fleet"]


def test_audit_of_web_lockdown_after_a_signed_history(make_world: object) -> None:
    assert callable(make_world)
    web = {s: {"role": "web"} for s in ("s1", "s2", "s3", "s4")}
    w: World = make_world(fast_track=True, bake="1s", labels=web)
    steps = [
        ("web-lockdown: web back to observe", [("enforcement/web-lockdown.yaml", "state: enforce_ready",
                                                "state: observe")], None),
        ("web-lockdown: web to enforce_ready", [("enforcement/web-lockdown.yaml", "    - scope: {group: web}\n"
                                                 "      state: observe", "    - scope: {group: web}\n"
                                                 "      state: enforce_ready")], "alice"),
        ("web-lockdown: web enforced", TIGHTEN, "alice"),
        ("web-lockdown: revert web to observe", [("enforcement/web-lockdown.yaml", "    - scope: {group: web}\n"
                                                  "      state: enforced", "    - scope: {group: web}\n"
                                                  "      state: observe")], None),
    ]
    commits = []
    for version, (message, edits, signer) in enumerate(steps, start=2):
        commits.append(w.repo.change(message, edits, signer=signer, wait_days=4 if signer else 0))
        w.fleet.wait_pins({"canary": version, "group": version, "fleet": version}, 40)
        _wait(lambda v=version: _rollout(w.state)["stable"] == v  # type: ignore[misc]
              and all(w.fleet.running.get(s) == v for s in STAGE_OF), 20)
        # every sensor has reported the version to the controller
        _wait(lambda v=version: _began(w.state, v) == set(STAGE_OF), 20)  # type: ignore[misc]

    # a forward step without a reviewer's signature is rejected: the audit lists the attempt
    bad = w.repo.change("web-lockdown: web straight to enforced", [
        ("enforcement/web-lockdown.yaml", "    - scope: {group: web}\n      state: observe",
         "    - scope: {group: web}\n      state: enforced")])
    _wait(lambda: any(e.commit == bad for e in _ledger_entries(w.state)), 20)

    out = _cli("audit", "web-lockdown", "--state", str(w.state), "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["commit"] for r in doc["rejected"]] == [bad]
    assert doc["kind"] == "pack" and doc["versions"] == [1, 2, 3, 4, 5]
    web_steps = [(s["version"], s["author"], s["approvers"],
                  [(c["from"], c["to"]) for c in s["changes"] if c["scope"] == "group:web"]) for s in doc["steps"]]
    dana, alice = "Dana Developer <dana@example.com>", "Alice Reviewer <alice@example.com>"
    assert web_steps == [
        (1, "Alice Reviewer <alice@example.com>", [], [(None, "enforce_ready")]),
        (2, dana, [], [("enforce_ready", "observe")]),
        (3, dana, [alice], [("observe", "enforce_ready")]),
        (4, dana, [alice], [("enforce_ready", "enforced")]),
        (5, dana, [], [("enforced", "observe")]),
    ]
    assert [s["commit"] for s in doc["steps"][1:]] == commits
    assert all(s["subject"] and s["committed"] for s in doc["steps"])  # from the mirror and the ledger

    s2 = [(i["policy"], i["state"], i["versions"]) for i in doc["sensors"] if i["sensor"] == "s2"]
    assert s2 == [("web-exec-allowlist", "enforce_ready", [1]), ("web-exec-allowlist", "observe", [2]),
                  ("web-exec-allowlist", "enforce_ready", [3]), ("web-exec-allowlist", "enforced", [4]),
                  ("web-exec-allowlist", "observe", [5])]
    periods = [i for i in doc["sensors"] if i["sensor"] == "s2"]
    assert all(a["stop"] == b["start"] for a, b in itertools.pairwise(periods))
    assert periods[-1]["stop"] is None
    # sensors outside the web group never enforced it
    assert {i["sensor"] for i in doc["sensors"]} == {"s1", "s2", "s3", "s4"}

    # the text form prints the same facts
    text = _cli("audit", "web-lockdown", "--state", str(w.state), "--sensor", "s2")
    assert text.returncode == 0, text.stderr
    for step in doc["steps"]:
        assert f"v{step['version']}  {step['commit'][:12]}" in text.stdout
        assert f"author: {step['author']}; approved by: {', '.join(step['approvers']) or 'none'}" in text.stdout
    for p in periods:
        assert f"s2  web-exec-allowlist  {p['state']}  {p['start']} → {p['stop'] or 'now'}" in text.stdout
    assert "s3  " not in text.stdout
    assert f"rejected commits\n  {bad[:12]}" in text.stdout

    unknown = _cli("audit", "no-such-pack", "--state", str(w.state))
    assert unknown.returncode == 2 and "not a pack, rule or policy" in unknown.stderr

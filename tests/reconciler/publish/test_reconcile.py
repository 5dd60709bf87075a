"""The reconcile pass on real git repositories, real keys, real SQLite and a real bundle store."""
from __future__ import annotations

import datetime as _dt
import json
import subprocess
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from reconciler.errors import RewriteRefused, StateError
from reconciler.publish.reconcile import Reconciler
from reconciler.state.store import Store
from support.policyrepo import ALICE, DEV, PolicyRepo
from wire import bundle


def _index(state: Path, key: SigningKey) -> bundle.Index:
    data = (state / "store" / "index.json").read_bytes()
    return bundle.verify_index(data, [key.verify_key], min_serial=0, min_version=0)


def test_commits_become_versions_and_rejections_keep_the_last_good(policy: PolicyRepo, key: SigningKey,
                                                                   tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, key) as rec:
        first = rec.run_once()
        assert first.published == (1,)
        assert _index(state, key).version == 1

        # relaxing (back to observe) needs no approval
        policy.change("web back to observe", [("enforcement/web-lockdown.yaml",
                                               "state: enforce_ready", "state: observe")])
        assert rec.run_once().published == (2,)

        # a schema error: rejected with the finding, the index still names v2
        policy.change("typo", [("enforcement/web-lockdown.yaml", "state: observe", "state: observ")])
        out = rec.run_once()
        assert out.published == ()
        (entry,) = out.processed
        assert entry.result == "rejected"
        assert any(f.file == "enforcement/web-lockdown.yaml" and f.code == "schema" for f in entry.findings)
        assert _index(state, key).version == 2
        status = rec.status()
        assert status["lastRejected"]["commit"] == entry.commit
        assert status["version"] == 2


def test_skipping_a_ladder_step_is_rejected(policy: PolicyRepo, key: SigningKey, tmp_path: Path) -> None:
    with Reconciler(str(policy.path), tmp_path / "state", key) as rec:
        rec.run_once()
        merge = policy.change("straight to enforced", [("rules/kernel-hardening.yaml",
                                                        "state: observe\n  params", "state: enforced\n  params")],
                              signer="alice", wait_days=4)
        (entry,) = rec.run_once().processed
        assert entry.commit == merge and entry.result == "rejected"
        assert [f.code for f in entry.findings if f.severity == "error"] == ["ladder-skip"]


class Clock:
    """The reconciler's clock, moved by the test (observation windows run on it, not on commit dates)."""

    def __init__(self) -> None:
        self.now = _dt.datetime.now(_dt.UTC)

    def __call__(self) -> _dt.datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += _dt.timedelta(**kwargs)


ADVANCE_TMP = [("rules/kernel-hardening.yaml", "state: observe\n  params", "state: enforce_ready\n  params")]


def _v1_then_an_approved_advance(rec: Reconciler, policy: PolicyRepo, clock: Clock) -> None:
    """v1 published, then a reviewed forward step (tightening) merged and its window passed."""
    rec.run_once()
    policy.change("no-exec-from-tmp to enforce_ready", ADVANCE_TMP, signer="bob", wait_days=4)
    clock.advance(days=4)


def test_approved_advance_is_published_with_its_approver(policy: PolicyRepo, key: SigningKey,
                                                         tmp_path: Path) -> None:
    state = tmp_path / "state"
    clock = Clock()
    with Reconciler(str(policy.path), state, key, clock=clock) as rec:
        _v1_then_an_approved_advance(rec, policy, clock)
        (entry,) = rec.run_once().processed
        assert entry.result == "accepted", entry.findings
        assert entry.approvers == ("Bob Reviewer <bob@example.com>",)
        b = bundle.parse_bundle((state / "store" / "bundles" / "v2.json").read_bytes())
        states = {(p.name, p.scope.key): str(p.state) for p in b.policies}
        assert states[("no-exec-from-tmp", "group:web")] == "enforce_ready"
        assert b.approvers == ("Bob Reviewer <bob@example.com>",)
        assert b.author == f"{DEV.name} <{DEV.email}>"


def test_backdated_commits_do_not_shorten_the_window(policy: PolicyRepo, key: SigningKey, tmp_path: Path) -> None:
    # the history claims four days at observe; the reconciler first saw it a minute ago
    clock = Clock()
    with Reconciler(str(policy.path), tmp_path / "state", key, clock=clock) as rec:
        rec.run_once()
        clock.advance(minutes=1)
        policy.change("no-exec-from-tmp to enforce_ready", ADVANCE_TMP, signer="bob", wait_days=4)
        (entry,) = rec.run_once().processed
        assert entry.result == "rejected"
        (finding,) = [f for f in entry.findings if f.severity == "error"]
        assert finding.code == "window" and "3d" in finding.message  # a 72h window, not 4 days old
        assert _index(rec.state_dir, key).version == 1


def test_the_window_counts_from_first_acceptance_also_for_a_new_reconciler(policy: PolicyRepo, key: SigningKey,
                                                                           tmp_path: Path) -> None:
    # a pack added with dates three days in the past, then advanced at once after the window "passed"
    clock = Clock()
    with Reconciler(str(policy.path), tmp_path / "state", key, clock=clock) as rec:
        rec.run_once()
        past = clock.now - _dt.timedelta(days=3)
        policy.git.write("enforcement/web-lockdown.yaml",
                         policy.git.read("enforcement/web-lockdown.yaml") +
                         "    - scope: {sensor: node-9}\n      state: observe\n")
        policy.git.commit("backdated assignment", author=DEV, sign=policy.keys["dana"], date=past)
        assert rec.run_once().published == (2,)
        clock.advance(hours=2)
        policy.change("node-9 to enforce_ready",
                      [("enforcement/web-lockdown.yaml", "{sensor: node-9}\n      state: observe",
                        "{sensor: node-9}\n      state: enforce_ready")], signer="alice")
        (entry,) = rec.run_once().processed
        assert entry.result == "rejected"
        assert [f.code for f in entry.findings if f.severity == "error"] == ["window"]
        clock.advance(days=3)
    # restarted days later: the ledger, not the commit dates, says how long it was observed
    with Reconciler(str(policy.path), tmp_path / "state", key, clock=clock) as rec:
        policy.change("retry", [("rules/kernel-hardening.yaml", "# Rules from built-in templates.",
                                 "# Rules from built-in templates (retried).")], signer="alice")
        (entry,) = rec.run_once().processed
        assert entry.result == "accepted", entry.findings


class _Killed(BaseException):
    """The process dies here (as far as its files go: nothing after this point is written)."""


def _killed(*args: object, **kwargs: object) -> None:
    raise _Killed


def test_a_publish_killed_before_its_index_is_finished_at_restart_with_the_rollouts_pins(
        policy: PolicyRepo, key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    clock = Clock()
    with Reconciler(str(policy.path), state, key, clock=clock) as rec:
        _v1_then_an_approved_advance(rec, policy, clock)
        with monkeypatch.context() as m:
            m.setattr(Store, "_write_index", _killed)  # after the bundle file, before the index
            with pytest.raises(_Killed):
                rec.run_once()
        assert (state / "store" / "bundles" / "v2.json").is_file() and _index(state, key).version == 1
    with Reconciler(str(policy.path), state, key, clock=clock) as rec:
        # a tightening change: the recovered publish pins the first stage only, as the publish would have
        assert dict(_index(state, key).stages) == {"canary": 2, "web": 1, "fleet": 1, "default": 1}
        assert [(e.result, e.version) for e in rec.ledger.entries(limit=1)] == [("accepted", 2)]
        assert [e.kind for e in rec.ledger.events("publish-recovered")] == ["publish-recovered"]
        assert rec.run_once().processed == ()


def test_restart_does_not_reprocess(policy: PolicyRepo, key: SigningKey, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, key) as rec:
        rec.run_once()
    policy.change("relax", [("enforcement/web-lockdown.yaml", "state: enforce_ready", "state: observe")])
    with Reconciler(str(policy.path), state, key) as rec:
        assert rec.run_once().published == (2,)
    with Reconciler(str(policy.path), state, key) as rec:
        assert rec.run_once().processed == ()
        assert _index(state, key).version == 2


def test_force_push_is_refused_until_accepted(policy: PolicyRepo, key: SigningKey, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, key) as rec:
        rec.run_once()
        policy.change("relax", [("enforcement/web-lockdown.yaml", "state: enforce_ready", "state: observe")])
        rec.run_once()
        # rewrite main: drop the last merge and commit something else
        policy.git.git("reset", "-q", "--hard", "HEAD~1")
        policy.edit("enforcement/egress-guard.yaml", "state: enforce_ready", "state: observe")
        policy.git.commit("rewritten", author=ALICE)
        with pytest.raises(RewriteRefused, match="does not descend"):
            rec.run_once()
        assert "rewritten" in rec.status()["refused"]
        assert _index(state, key).version == 2
        out = rec.run_once(accept_rewrite=True)
        assert out.published == (3,)


def test_cli_reconcile_and_ledger(policy: PolicyRepo, tmp_path: Path) -> None:
    palisade = str(Path(__file__).resolve().parents[3] / ".venv" / "bin" / "palisade")
    keys = tmp_path / "signing"
    subprocess.run([palisade, "keygen", "--out", str(keys)], check=True)
    key_file = next(keys.glob("*.key"))
    state = tmp_path / "state"
    run = subprocess.run([palisade, "reconcile", "--repo", str(policy.path), "--state", str(state),
                          "--key", str(key_file), "--once", "-o", "json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["processed"][0]["version"] == 1
    for repo, state_dir, message in [(tmp_path / "nope", state, "tracks"),
                                     (tmp_path / "nope", tmp_path / "fresh", "fetch failed")]:
        bad = subprocess.run([palisade, "reconcile", "--repo", str(repo), "--state", str(state_dir),
                              "--key", str(key_file), "--once"], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


def test_a_reconciler_that_fails_to_start_releases_the_state_lock(policy: PolicyRepo, key: SigningKey,
                                                                  tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, key) as rec:
        rec.run_once()
    rollout_db = state / "rollout.db"
    good = rollout_db.read_bytes()
    rollout_db.write_bytes(b"this is not a database" * 200)  # the controller cannot open it
    with pytest.raises(StateError, match="rollout state"):
        Reconciler(str(policy.path), state, key)
    rollout_db.write_bytes(good)
    # same process, the state repaired: the lock the failed start took is free again
    with Reconciler(str(policy.path), state, key) as rec:
        assert rec.run_once().processed == ()

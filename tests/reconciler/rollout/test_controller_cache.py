"""The rollout controller keeps reading every pinned bundle, however many were published since."""
from __future__ import annotations

from pathlib import Path

from nacl.signing import SigningKey

from reconciler.publish.reconcile import Reconciler
from support.policyrepo import PolicyRepo


def test_a_pinned_bundle_stays_readable_after_many_publishes(tmp_path: Path) -> None:
    policy = PolicyRepo.create(tmp_path)
    with Reconciler(str(policy.path), tmp_path / "state", SigningKey.generate()) as rec:
        rec.run_once()
        text = "Database servers."
        for i in range(20):
            policy.change(f"note {i}", [("scopes/groups.yaml", text, f"Database servers ({i}).")])
            text = f"Database servers ({i})."
            rec.run_once()
        versions = [rec.rollouts.bundle(v) for v in range(2, 22)]
        assert all(b is not None for b in versions)
        first = rec.rollouts.bundle(1)  # no agent reported, so later stages still pin v1
        assert first is not None and first.version == 1
        status = rec.status()["rollout"]
        assert "cannot classify" not in str(status)

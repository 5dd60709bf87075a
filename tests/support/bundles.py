"""Bundles, keys and stores for tests of the signed wire formats (real keys, real files).

    from support.bundles import keypair, make_bundle, commit_id
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from reconciler import keys
from wire.bundle import (
    Bundle,
    BundleGroup,
    BundlePolicy,
    BundleStage,
    Origin,
    StageGates,
    Staging,
)
from wire.values import Scope, State

T0 = dt.datetime(2026, 11, 1, 12, 0, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Keys:
    key_path: Path
    pub_path: Path
    signing: SigningKey
    public: VerifyKey


def keypair(directory: Path) -> Keys:
    """A real key pair written by `keys.generate` and loaded back from its files."""
    pair = keys.generate(directory)
    return Keys(pair.signing_key_path, pair.public_key_path, keys.load_signing_key(pair.signing_key_path),
                keys.load_public_key(pair.public_key_path))


def commit_id(n: int) -> str:
    """A stable 40-hex commit id for the n-th fake commit."""
    return hashlib.sha1(f"commit-{n}".encode()).hexdigest()


def staging() -> Staging:
    return Staging(
        fast_track=True,
        stages=(
            BundleStage("canary", groups=("canary",), bake_seconds=1800,
                        gates=StageGates(max_agent_errors=0, min_reporting_ratio=1.0)),
            BundleStage("web", match_labels=(("role", "web"),), bake_seconds=7200,
                        gates=StageGates(max_agent_errors=1, min_reporting_ratio=0.9)),
            BundleStage("fleet", rest=True),
        ),
    )


def make_bundle(version: int, *, commit: int | None = None, policies: int = 3,
                created: dt.datetime = T0, with_staging: bool = True) -> Bundle:
    n = version if commit is None else commit
    pols = tuple(
        BundlePolicy.of(
            f"policy-{i}",
            Origin("pack" if i % 2 else "rule", f"unit-{i}"),
            Scope(group="web") if i % 3 == 1 else Scope(sensor="node-1") if i % 3 == 2 else Scope(),
            (State.OBSERVE, State.ENFORCE_READY, State.ENFORCED)[i % 3],
            f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: policy-{i}\n"
            f"# version {version} — ünïcödé\n",
        )
        for i in range(policies)
    )
    return Bundle(
        version=version,
        commit=commit_id(n),
        parent=commit_id(n - 1) if n > 1 else None,
        author="Dev Eloper <dev@example.com>",
        approvers=("Alice Reviewer <alice@example.com>",),
        created=created,
        policies=pols,
        groups=(BundleGroup("canary", sensors=("node-canary-1",)), BundleGroup("web", match_labels=(("role", "web"),))),
        staging=staging() if with_staging else None,
    )

"""Which policies a sensor enforces, and its rollout stage (pure)."""
from __future__ import annotations

from agent.select import select, stage_of
from support.bundles import make_bundle
from wire.bundle import Bundle, BundleGroup, BundlePolicy, Origin
from wire.values import Scope, State

YAML = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: p\n"


def _bundle(*policies: BundlePolicy) -> Bundle:
    base = make_bundle(1)
    groups = (BundleGroup("web", match_labels=(("role", "web"),)), BundleGroup("canary", sensors=("n1",)),
              BundleGroup("pci", match_labels=(("zone", "pci"),)))
    return Bundle(version=1, commit=base.commit, parent=None, author=base.author, approvers=(), created=base.created,
                  policies=policies, groups=groups, staging=base.staging)


def _p(scope: Scope, state: State, name: str = "p") -> BundlePolicy:
    return BundlePolicy.of(name, Origin("pack", "x"), scope, state, YAML + f"# {scope.key} {state}\n")


def test_most_specific_scope_wins() -> None:
    b = _bundle(_p(Scope(), State.ENFORCED), _p(Scope(group="web"), State.OBSERVE),
                _p(Scope(sensor="n1"), State.ENFORCE_READY))
    assert [(d.scope.key, d.state) for d in select(b, "n1", {"role": "web"})] == [("sensor:n1", State.ENFORCE_READY)]
    assert [(d.scope.key, d.state) for d in select(b, "n2", {"role": "web"})] == [("group:web", State.OBSERVE)]
    assert [(d.scope.key, d.state) for d in select(b, "n3", {})] == [("fleet", State.ENFORCED)]


def test_between_groups_the_least_enforcing_state_wins() -> None:
    b = _bundle(_p(Scope(group="pci"), State.ENFORCED), _p(Scope(group="web"), State.OBSERVE))
    (d,) = select(b, "n9", {"role": "web", "zone": "pci"})
    assert (d.scope.key, d.state) == ("group:web", State.OBSERVE)
    b = _bundle(_p(Scope(group="web"), State.OBSERVE), _p(Scope(group="pci"), State.ENFORCED))
    assert select(b, "n9", {"role": "web", "zone": "pci"})[0].state == State.OBSERVE  # whatever the order


def test_policies_outside_the_sensor_are_not_selected() -> None:
    b = _bundle(_p(Scope(group="web"), State.OBSERVE, "a"), _p(Scope(sensor="other"), State.OBSERVE, "b"),
                _p(Scope(group="missing"), State.OBSERVE, "c"))
    assert select(b, "n1", {"role": "db"}) == ()


def test_stage_from_the_staging_plan() -> None:
    b = make_bundle(1)  # canary (group canary: node-canary-1), web (role=web), fleet (rest)
    assert stage_of(b, "node-canary-1", {"role": "web"}) == "canary"
    assert stage_of(b, "n2", {"role": "web"}) == "web"
    assert stage_of(b, "n3", {}) == "fleet"
    assert stage_of(make_bundle(1, with_staging=False), "n3", {}) == "default"
    assert stage_of(None, "n3", {}) == "default"

"""Which policies of a bundle this sensor enforces, and at which rollout stage it is. Pure.

A policy applies when its scope includes the sensor: `{sensor: ID}` naming it,
`{group: NAME}` whose group selects it (by id or by labels), or `{}` (the whole
fleet). The same policy name may be assigned at several scopes; on one node the
most specific scope wins (sensor > group > fleet), and between groups at the
same specificity the least enforcing state wins — a node in both a group that
observes and a group that enforces has not been approved for enforcing by both.

The stage comes from the bundle's staging plan: the first stage that holds the
sensor (by id, by group, by labels, or `rest`); no plan or no stage → "default".
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.bundle import DEFAULT_STAGE, Bundle, BundlePolicy, Index, Origin
from reconciler.model import Scope, State

__all__ = ["Desired", "applies", "pinned_version", "select", "stage_of"]


@dataclass(frozen=True)
class Desired:
    """One policy this node should enforce, with where it comes from."""

    name: str
    origin: Origin
    scope: Scope
    state: State
    yaml: str
    sha256: str
    version: int  # the bundle it comes from
    commit: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "origin": self.origin.to_json(), "scope": self.scope.key,
                "state": str(self.state), "sha256": self.sha256, "version": self.version, "commit": self.commit}


def stage_of(bundle: Bundle | None, sensor_id: str, labels: Mapping[str, str]) -> str:
    if bundle is None or bundle.staging is None:
        return DEFAULT_STAGE
    for stage in bundle.staging.stages:
        if sensor_id in stage.sensors:
            return stage.name
        for name in stage.groups:
            group = bundle.group(name)
            if group is not None and group.selects(sensor_id, labels):
                return stage.name
        if stage.match_labels and all(labels.get(k) == v for k, v in stage.match_labels):
            return stage.name
        if stage.rest:
            return stage.name
    return DEFAULT_STAGE


def pinned_version(index: Index, stage: str) -> int:
    return index.pinned(stage)


def applies(bundle: Bundle, policy: BundlePolicy, sensor_id: str, labels: Mapping[str, str]) -> bool:
    scope = policy.scope
    if scope.sensor is not None:
        return scope.sensor == sensor_id
    if scope.group is not None:
        group = bundle.group(scope.group)
        return group is not None and group.selects(sensor_id, labels)
    return True


def select(bundle: Bundle, sensor_id: str, labels: Mapping[str, str]) -> tuple[Desired, ...]:
    """The policies for this sensor, one per name, sorted by name."""
    chosen: dict[str, BundlePolicy] = {}
    for p in bundle.policies:
        if not applies(bundle, p, sensor_id, labels):
            continue
        cur = chosen.get(p.name)
        if cur is None or _wins(p, cur):
            chosen[p.name] = p
    return tuple(
        Desired(p.name, p.origin, p.scope, p.state, p.yaml, p.sha256, bundle.version, bundle.commit)
        for p in sorted(chosen.values(), key=lambda p: p.name)
    )


def _wins(new: BundlePolicy, cur: BundlePolicy) -> bool:
    if new.scope.specificity != cur.scope.specificity:
        return new.scope.specificity > cur.scope.specificity
    if new.state.rank != cur.state.rank:
        return new.state.rank < cur.state.rank
    return new.scope.key < cur.scope.key  # deterministic whatever the bundle's order

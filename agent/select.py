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

from wire.bundle import DEFAULT_STAGE, Bundle, Origin
from wire.values import Scope, State

__all__ = ["Desired", "select", "stage_of"]


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
    """The sensor's rollout stage in `bundle`'s staging plan ("default" without one)."""
    stage = bundle.stage_for(sensor_id, labels) if bundle is not None else None
    return stage or DEFAULT_STAGE


def select(bundle: Bundle, sensor_id: str, labels: Mapping[str, str]) -> tuple[Desired, ...]:
    """The policies for this sensor, one per name, sorted by name (the rule: `wire.values.effective`)."""
    return tuple(
        Desired(p.name, p.origin, p.scope, p.state, p.yaml, p.sha256, bundle.version, bundle.commit)
        for p in bundle.effective(sensor_id, labels)
    )

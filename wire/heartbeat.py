"""The heartbeat (POST /v1/agents/{id}/heartbeat): what an agent reports every interval, as typed values.

The agent builds a `Heartbeat` and sends `encode(beat)`; the reconciler reads it once with `parse`
(or `loads` from the request's bytes) and keeps the typed value in its fleet store. `parse` is the
one definition of a valid heartbeat: schemas/heartbeat.schema.json documents it and a test checks
that both agree on the heartbeats agents send. Every member but the sensor id is optional, as
older agents send fewer of them (no `health`, no workload of an observation); a wrong shape,
an unknown member or a number beyond a signed 64-bit integer is refused with the JSON path of the
bad member, by a `HeartbeatError` whose class (and `code`) says which kind of failure it is.
"""
from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import strict
from .bundle import Origin
from .errors import BadSensorId, HeartbeatOutOfRange, HeartbeatTooLarge, MalformedHeartbeat, SensorMismatch
from .strict import Invalid, OutOfRange, format_time
from .values import State

__all__ = ["MAX_HEARTBEAT_BYTES", "MAX_OBSERVATIONS", "MAX_PROBLEMS", "SENSOR_ID", "Counters", "Drift",
           "DriftFinding", "DriftKind", "Health", "HealthState", "Heartbeat", "LoadStatus", "Observation", "Origin",
           "PolicyReport", "Problem", "ProblemKind", "encode", "loads", "parse"]

MAX_HEARTBEAT_BYTES = 1024 * 1024
MAX_OBSERVATIONS = 10_000
MAX_PROBLEMS = 100
#: What a problem's text keeps (the agent cuts its own reason to 64 and detail to 2000 characters).
_MAX_REASON, _MAX_DETAIL = 64, 2000
SENSOR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class LoadStatus(StrEnum):
    """How a selected policy stands on a node (`PolicyStatus.status` on the agent)."""

    LOADED = "loaded"
    REFUSED = "refused"
    INACTIVE = "inactive"  # no workload on the node matches its selector: nothing to load


class DriftKind(StrEnum):
    """What is wrong with a load on the node: the label of the agent's drift metrics, events and findings."""

    DETACHED = "detached"  # a link gone or detached from its hook
    UNLOADED = "unloaded"  # programs or the pin directory gone
    MAP_CHANGED = "map_changed"  # a static map's entries changed
    FOREIGN = "foreign"  # a program not ours on a cgroup hook ours are attached to
    MISSING = "missing"  # selected, not loaded
    EXTRA = "extra"  # loaded, not selected
    VERSION = "version"  # loaded at another digest or in another mode than the pin


class ProblemKind(StrEnum):
    """What keeps the node degraded: the `kind` label of the agent's problem metrics."""

    DISK = "disk"
    TRANSFER = "transfer"
    INDEX_EXPIRED = "index_expired"


class HealthState(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"


@dataclass(frozen=True)
class PolicyReport:
    """One selected policy on the node. `mode`, `origin` and `version` are None when an older agent
    left them out."""

    name: str
    status: LoadStatus
    mode: State | None = None
    reason: str | None = None  # why it is refused or inactive
    origin: Origin | None = None
    version: int | None = None  # the bundle version it comes from

    @property
    def refused(self) -> bool:
        return self.status is LoadStatus.REFUSED


@dataclass(frozen=True)
class DriftFinding:
    kind: DriftKind
    policy: str
    detail: str


@dataclass(frozen=True)
class Drift:
    """Drift since the agent started: found, healed, still unhealed (and what is unhealed)."""

    detected: int = 0
    healed: int = 0
    unhealed: int = 0
    findings: tuple[DriftFinding, ...] = ()


@dataclass(frozen=True)
class Counters:
    """Cumulative counters by their wire name (sorted, so equal counts are equal values): `events`,
    `enforced`, `wouldHaveEnforced` (the engine's), `refusals`, `applies`, and whatever else an agent counts."""

    values: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(sorted(self.values)))

    @classmethod
    def of(cls, values: Mapping[str, int]) -> Counters:
        return cls(tuple(values.items()))

    def get(self, name: str) -> int:
        return next((v for k, v in self.values if k == name), 0)

    @property
    def actions(self) -> int:
        """What was done and what would have been done (enforce_ready dry runs): the rollout's alarm."""
        return self.get("enforced") + self.get("wouldHaveEnforced")

    @property
    def errors(self) -> int:
        return self.get("errors") + self.get("refusals")

    def to_json(self) -> dict[str, int]:
        return dict(self.values)


@dataclass(frozen=True)
class Observation:
    """Events of `policy` by `binary` in the interval, and what the agent knew of them."""

    policy: str
    binary: str
    count: int
    workload: str | None = None
    parent: str | None = None
    action: str | None = None  # Tetragon's name of the matching selector's action, e.g. KPROBE_ACTION_SIGKILL
    acted: bool | None = None  # the action was taken (enforced), not only reported


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    reason: str  # ENOSPC, stalled, expired, ...
    detail: str
    since: _dt.datetime | None = None


@dataclass(frozen=True)
class Health:
    """Whether the node is degraded (it keeps enforcing what it verified last) and why."""

    state: HealthState
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class Heartbeat:
    sensor: str
    labels: Mapping[str, str] = field(default_factory=dict)
    version: int | None = None  # the bundle version enforced (None: none yet)
    stage: str | None = None
    commit: str | None = None
    policies: tuple[PolicyReport, ...] = ()
    drift: Drift = Drift()
    counters: Counters = Counters()
    observations: tuple[Observation, ...] = ()
    health: Health | None = None  # older agents send none
    time: _dt.datetime | None = None

    @property
    def refused(self) -> int:
        return sum(1 for p in self.policies if p.refused)


# ---------------------------------------------------------------------------
# Encoding: the JSON the agent sends (and the fleet view shows)


def encode(beat: Heartbeat) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sensor": beat.sensor,
        "labels": dict(beat.labels),
        "version": beat.version,
        "stage": beat.stage,
        "commit": beat.commit,
        "policies": [encode_policy(p) for p in beat.policies],
        "drift": encode_drift(beat.drift),
        "counters": beat.counters.to_json(),
        "observations": [encode_observation(o) for o in beat.observations],
    }
    if beat.time is not None:
        out["time"] = format_time(beat.time)
    if beat.health is not None:
        out["health"] = encode_health(beat.health)
    return out


def encode_policy(p: PolicyReport) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "status": str(p.status)}
    if p.mode is not None:
        out["mode"] = str(p.mode)
    out["reason"] = p.reason
    if p.origin is not None:
        out["origin"] = {"kind": p.origin.kind, "name": p.origin.name}
    if p.version is not None:
        out["version"] = p.version
    return out


def encode_drift(d: Drift) -> dict[str, Any]:
    return {"detected": d.detected, "healed": d.healed, "unhealed": d.unhealed,
            "findings": [{"kind": str(f.kind), "policy": f.policy, "detail": f.detail} for f in d.findings]}


def encode_observation(o: Observation) -> dict[str, Any]:
    extra = {"workload": o.workload, "parent": o.parent, "action": o.action, "acted": o.acted}
    return {"policy": o.policy, "binary": o.binary, "count": o.count,
            **{k: v for k, v in extra.items() if v is not None}}


def encode_health(h: Health) -> dict[str, Any]:
    problems = []
    for p in h.problems:
        one: dict[str, Any] = {"kind": str(p.kind), "reason": p.reason, "detail": p.detail}
        if p.since is not None:
            one["since"] = format_time(p.since)
        problems.append(one)
    return {"state": str(h.state), "problems": problems}


# ---------------------------------------------------------------------------
# Parsing: strict, once, at the edge


def loads(data: bytes, sensor_id: str) -> Heartbeat:
    """A heartbeat from a request's body: refused when larger than MAX_HEARTBEAT_BYTES, not UTF-8 or not
    strict JSON (duplicate keys, floats, oversized integers), then as `parse`."""
    if len(data) > MAX_HEARTBEAT_BYTES:
        raise HeartbeatTooLarge(f"heartbeat of {len(data)} bytes, at most {MAX_HEARTBEAT_BYTES}")
    try:
        doc = strict.parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise MalformedHeartbeat(f"heartbeat is not UTF-8 (byte {e.start})") from None
    except OutOfRange as e:
        raise HeartbeatOutOfRange(f"heartbeat: {e}") from None
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError and strict.Invalid are ValueErrors
        raise MalformedHeartbeat(f"heartbeat is not JSON: {e}") from None
    return parse(doc, sensor_id)


def parse(doc: Any, sensor_id: str) -> Heartbeat:
    """The heartbeat of `sensor_id` (the URL's) from its parsed JSON document."""
    if not isinstance(sensor_id, str) or not SENSOR_ID.match(sensor_id):
        raise BadSensorId(f"sensor id {str(sensor_id)[:80]!r} is not valid (letters, digits, . _ -)")
    try:
        d = strict.obj(doc, "heartbeat", (), ("sensor", "labels", "version", "stage", "commit", "policies", "drift",
                                             "counters", "observations", "time", "health"))
        if d.get("sensor", sensor_id) != sensor_id:
            raise SensorMismatch(f"sensor: {str(d.get('sensor'))[:80]!r} does not match the URL ({sensor_id})")
        return Heartbeat(
            sensor_id,
            dict(strict.labels(d.get("labels", {}), "labels")),
            _nullable(d.get("version"), "version", lambda v, p: strict.integer(v, p, minimum=1)),
            _nullable(d.get("stage"), "stage", _any_text),
            _nullable(d.get("commit"), "commit", _any_text),
            parse_policies(d.get("policies", []), "policies"),
            parse_drift(d.get("drift", {}), "drift"),
            parse_counters(d.get("counters", {}), "counters"),
            parse_observations(d.get("observations", []), "observations"),
            _nullable(d.get("health"), "health", parse_health),
            strict.time(d["time"], "time") if "time" in d else None,
        )
    except OutOfRange as e:
        raise HeartbeatOutOfRange(str(e)) from None
    except Invalid as e:
        raise MalformedHeartbeat(str(e)) from None


def parse_policies(v: Any, path: str) -> tuple[PolicyReport, ...]:
    return strict.array(v, path, _policy)


def parse_drift(v: Any, path: str) -> Drift:
    d = strict.obj(v, path, (), ("detected", "healed", "unhealed", "findings"))
    detected, healed, unhealed = (strict.integer(d.get(k, 0), f"{path}.{k}")
                                  for k in ("detected", "healed", "unhealed"))
    return Drift(detected, healed, unhealed, strict.array(d.get("findings", []), f"{path}.findings", _finding))


def parse_counters(v: Any, path: str) -> Counters:
    if not isinstance(v, dict):
        raise Invalid(f"{path}: expected an object of name: count, got {strict.typename(v)}")
    return Counters(tuple((k, strict.integer(n, f"{path}.{k}")) for k, n in v.items()))


def parse_observations(v: Any, path: str) -> tuple[Observation, ...]:
    if isinstance(v, list) and len(v) > MAX_OBSERVATIONS:
        raise Invalid(f"{path}: at most {MAX_OBSERVATIONS} entries")
    return strict.array(v, path, _observation)


def parse_health(v: Any, path: str) -> Health:
    d = strict.obj(v, path, ("state",), ("problems",))
    problems = d.get("problems", [])
    if isinstance(problems, list) and len(problems) > MAX_PROBLEMS:
        raise Invalid(f"{path}.problems: at most {MAX_PROBLEMS} entries")
    return Health(_enum(HealthState, d["state"], f"{path}.state"), strict.array(problems, f"{path}.problems", _problem))


def _policy(v: Any, path: str) -> PolicyReport:
    d = strict.obj(v, path, ("name", "status"), ("mode", "reason", "origin", "version"))
    return PolicyReport(
        strict.text(d["name"], f"{path}.name"),
        _enum(LoadStatus, d["status"], f"{path}.status"),
        _enum(State, d["mode"], f"{path}.mode") if "mode" in d else None,
        _nullable(d.get("reason"), f"{path}.reason", _any_text),
        Origin.from_json(d["origin"], f"{path}.origin") if "origin" in d else None,
        strict.integer(d["version"], f"{path}.version") if "version" in d else None,
    )


def _finding(v: Any, path: str) -> DriftFinding:
    d = strict.obj(v, path, ("kind", "policy", "detail"))
    return DriftFinding(_enum(DriftKind, d["kind"], f"{path}.kind"), _any_text(d["policy"], f"{path}.policy"),
                        _any_text(d["detail"], f"{path}.detail"))


def _observation(v: Any, path: str) -> Observation:
    d = strict.obj(v, path, ("policy", "binary", "count"), ("workload", "parent", "action", "acted"))
    workload, parent, action = (_nullable(d.get(k), f"{path}.{k}", _any_text) for k in ("workload", "parent", "action"))
    return Observation(_any_text(d["policy"], f"{path}.policy"), _any_text(d["binary"], f"{path}.binary"),
                       strict.integer(d["count"], f"{path}.count"), workload, parent, action,
                       _nullable(d.get("acted"), f"{path}.acted", strict.boolean))


def _problem(v: Any, path: str) -> Problem:
    d = strict.obj(v, path, ("kind", "reason", "detail"), ("since",))
    return Problem(_enum(ProblemKind, d["kind"], f"{path}.kind"),
                   _any_text(d["reason"], f"{path}.reason")[:_MAX_REASON],
                   _any_text(d["detail"], f"{path}.detail")[:_MAX_DETAIL],
                   strict.time(d["since"], f"{path}.since") if "since" in d else None)


def _any_text(v: Any, path: str) -> str:
    return strict.text(v, path, empty=True)


def _nullable(v: Any, path: str, read: Any) -> Any:
    return None if v is None else read(v, path)


def _enum(kind: Any, v: Any, path: str) -> Any:
    return kind(_one_of(tuple(kind), v, path))


def _one_of(values: tuple[str, ...], v: Any, path: str) -> str:
    text = strict.text(v, path)
    if text not in values:
        raise Invalid(f"{path}: expected one of {', '.join(values)}, not {text[:40]!r}")
    return text

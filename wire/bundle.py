"""The signed wire formats: bundles and the index (DESIGN.md §3).

A **bundle** `v<N>` is everything one accepted commit says, rendered: every
TracingPolicy with its origin, scope and ladder state, the groups that scopes
name, and the staging plan. It never changes once published.

The **index** names the newest bundle version, the sha256 and size of every
bundle it still lists, the version pinned for each rollout stage, and an expiry.
Its `serial` grows at every write (publish, re-sign, pin change) so an agent can
refuse a replayed older index even when the version did not move.

Signing: the signed bytes are the canonical JSON of the document *without* its
`signatures` member — UTF-8, keys sorted, no insignificant whitespace, no floats
(their text form is not portable between JSON libraries). Each signature is
`{"keyid": sha256 hex of the raw 32-byte Ed25519 public key, "sig": base64}`.
Files are written as canonical JSON of the whole document.

**Objects**: a bundle may list CO-RE objects the reconciler built for its policies
(`BundleObject`: named by the sha256 of the generated C source, with the sha256 and
size of the object's bytes, the policy it is for, the kernel profile and variant).
The bytes are not in the bundle: they are content-addressed blobs the store keeps
under `objects/<sha256>` and the server serves at `/v1/objects/<sha256>`, so the
signed document stays small and an agent fetches only the objects of the policies it
runs. The signature covers the digests, so `verify_object` makes a fetched object as
trustworthy as the bundle. A bundle without objects has no `objects` member at all:
bundles published before objects existed keep their bytes and signatures.

An agent calls `verify_index` then `verify_bundle`; both refuse oversized input
before parsing, parse strictly (duplicate keys, floats, NaN/Infinity, unknown or
missing members, wrong types are errors; every integer is bounded, see
`MAX_INT`), and raise a `WireError` — a `VerificationError` whose class names the
kind of failure (`code`: signature, expired, replay, ...) so a caller counts
refusals by type, never by message text.

This module is the heart of the wire contract the agent imports: it depends on the
standard library, PyNaCl and the other modules of `wire` only (no git, no HTTP).
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .errors import Coded, VerificationError
from .strict import MAX_INT as MAX_INT
from .strict import Invalid as _Malformed
from .strict import OutOfRange as _OutOfRange
from .strict import array as _list
from .strict import boolean as _bool
from .strict import format_time, parse_json
from .strict import integer as _int
from .strict import labels as _labels
from .strict import obj as _obj
from .strict import parse_time as parse_time
from .strict import strings as _strs
from .strict import text as _str
from .strict import time as _time
from .strict import typename as _typename
from .values import Scope, Selector, State, effective

API_VERSION = "palisade.dev/v1"
#: Refused before parsing: a bundle carries every rendered policy, an index only digests.
MAX_BUNDLE_BYTES = 32 * 1024 * 1024
MAX_INDEX_BYTES = 1024 * 1024
#: One CO-RE object (a stripped policy object is 15-100 KB), and the objects one bundle may list.
MAX_OBJECT_BYTES = 8 * 1024 * 1024
MAX_OBJECTS = 8192
#: A bake time beyond this is no plan (and would overflow a datetime.timedelta).
MAX_BAKE_SECONDS = 100 * 365 * 86400
#: The index lists this many newest bundles, plus every version a stage is pinned to.
INDEX_KEEP = 50
DEFAULT_STAGE = "default"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_PROFILE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


# ---------------------------------------------------------------------------
# Failure kinds (one class each; `code` is the stable label of metrics, status and heartbeats)


class WireError(Coded, VerificationError):
    """A bundle or an index refused; the class names why (`code`, declared on the class line of each
    kind), whatever the message says."""

    code = "malformed"


class Malformed(WireError):
    """Not the document the schema describes (bad JSON, member, type or value)."""


class OutOfRange(Malformed, code="out_of_range"):
    """A number outside what its member allows (too many digits, too large, negative, ...)."""


class TooLarge(WireError, code="size"):
    """More bytes than the limit, or than the index announces."""


class DigestMismatch(WireError, code="digest"):
    """A bundle or object whose sha256 is not the one the index or bundle signed."""


class BadSignature(WireError, code="signature"):
    """Unsigned, signed by no trusted key, or a signature that does not verify."""


class Unsigned(BadSignature):
    """No signature at all, or no trusted key to check one with."""


class UnknownKey(BadSignature):
    """Signed, but by none of the trusted keys."""


class Expired(WireError, code="expired"):
    """An index (or bundle) past its expiry."""


class Replay(WireError, code="replay"):
    """An index serial lower than one already accepted."""


class Rollback(WireError, code="rollback"):
    """An index version lower than one already accepted."""


# ---------------------------------------------------------------------------
# Canonical JSON, digests, time


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that is signed and hashed."""
    _reject_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError(f"canonical JSON has no floats ({value!r}); use an integer or a string")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"canonical JSON object keys are strings, not {k!r}")
            _reject_floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _reject_floats(v)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keyid(key: VerifyKey | SigningKey) -> str:
    """sha256 hex of the raw 32-byte public key."""
    vk = key.verify_key if isinstance(key, SigningKey) else key
    return sha256_hex(bytes(vk))


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


# ---------------------------------------------------------------------------
# Reading the documents: wire.strict's readers raise _Malformed (its Invalid) with the JSON path; the
# parse functions below turn that into a Malformed (or OutOfRange) refusal.


def _loads(data: bytes, what: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed(f"{what} is not UTF-8 (byte {e.start})") from None
    try:
        return parse_json(text)
    except _OutOfRange as e:
        raise OutOfRange(f"{what} is malformed JSON: {e}") from None
    except _Malformed as e:
        raise Malformed(f"{what} is malformed JSON: {e}") from None
    except json.JSONDecodeError as e:
        raise Malformed(f"{what} is malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise Malformed(f"{what} is malformed JSON: nested too deeply") from None
    except ValueError as e:  # anything else json or int() refuses is still a refusal, never a traceback
        raise Malformed(f"{what} is malformed JSON: {e}") from None


# ---------------------------------------------------------------------------
# Signatures


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: str  # base64 of the 64-byte Ed25519 signature

    def to_json(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": self.sig}

    @classmethod
    def from_json(cls, v: Any, path: str) -> Signature:
        d = _obj(v, path, ("keyid", "sig"))
        return cls(_str(d["keyid"], f"{path}.keyid", pattern=_SHA256), _str(d["sig"], f"{path}.sig"))


def _sign(payload: bytes, key: SigningKey) -> Signature:
    sig = key.sign(payload).signature
    return Signature(keyid(key), base64.b64encode(sig).decode("ascii"))


def _check_signatures(what: str, payload: bytes, signatures: Sequence[Signature],
                      pubkeys: Iterable[VerifyKey]) -> None:
    """At least one signature by a trusted key must verify (threshold 1)."""
    trusted = {keyid(k): k for k in pubkeys}
    if not trusted:
        raise Unsigned(f"no public key to verify the {what} with")
    if not signatures:
        raise Unsigned(f"{what} is not signed")
    problems = []
    for s in signatures:
        key = trusted.get(s.keyid)
        if key is None:
            continue
        try:
            raw = base64.b64decode(s.sig, validate=True)
            key.verify(payload, raw)
            return
        except (binascii.Error, ValueError):
            problems.append(f"{what} signature by key {s.keyid} is not valid base64 of 64 bytes")
        except BadSignatureError:
            problems.append(f"{what} signature does not verify with key {s.keyid}")
    if problems:
        raise BadSignature("; ".join(problems))
    raise UnknownKey(
        f"{what} is not signed by a trusted key (signed by {', '.join(s.keyid[:16] for s in signatures)}; "
        f"trusted: {', '.join(k[:16] for k in trusted)})"
    )


# ---------------------------------------------------------------------------
# Bundle values


@dataclass(frozen=True)
class Origin:
    """Where a rendered policy comes from: a pack or a rule of the repository."""

    kind: str  # "pack" | "rule"
    name: str

    def __post_init__(self) -> None:
        if self.kind not in ("pack", "rule"):
            raise ValueError(f"origin kind must be pack or rule, not {self.kind!r}")

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}

    @classmethod
    def from_json(cls, v: Any, path: str) -> Origin:
        d = _obj(v, path, ("kind", "name"))
        kind = _str(d["kind"], f"{path}.kind")
        if kind not in ("pack", "rule"):
            raise _Malformed(f"{path}.kind: must be pack or rule, not {kind!r}")
        return cls(kind, _str(d["name"], f"{path}.name"))


def _scope_json(scope: Scope) -> dict[str, str]:
    return scope.to_json()


def _scope_from(v: Any, path: str) -> Scope:
    if not isinstance(v, dict) or len(v) > 1:
        raise _Malformed(f"{path}: expected {{}}, {{\"group\": NAME}} or {{\"sensor\": ID}}")
    d = _obj(v, path, (), ("group", "sensor"))
    if "group" in d:
        return Scope(group=_str(d["group"], f"{path}.group"))
    if "sensor" in d:
        return Scope(sensor=_str(d["sensor"], f"{path}.sensor"))
    return Scope()


@dataclass(frozen=True)
class BundlePolicy:
    """One rendered TracingPolicy at one scope and ladder state.

    Build it with `BundlePolicy.of(...)` (computes the digest); the constructor
    checks that `sha256` is the digest of `yaml`.
    """

    name: str
    origin: Origin
    scope: Scope
    state: State
    yaml: str = field(repr=False)
    sha256: str

    def __post_init__(self) -> None:
        if self.sha256 != sha256_hex(self.yaml.encode("utf-8")):
            raise ValueError(f"policy {self.name}: sha256 does not match its yaml")

    @classmethod
    def of(cls, name: str, origin: Origin, scope: Scope, state: State, yaml: str) -> BundlePolicy:
        return cls(name, origin, scope, state, yaml, sha256_hex(yaml.encode("utf-8")))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "origin": self.origin.to_json(),
            "scope": _scope_json(self.scope),
            "state": str(self.state),
            "yaml": self.yaml,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, v: Any, path: str) -> BundlePolicy:
        d = _obj(v, path, ("name", "origin", "scope", "state", "yaml", "sha256"))
        state = _str(d["state"], f"{path}.state")
        try:
            st = State(state)
        except ValueError:
            raise _Malformed(f"{path}.state: {state!r} is not observe, enforce_ready or enforced") from None
        yaml = _str(d["yaml"], f"{path}.yaml")
        digest = _str(d["sha256"], f"{path}.sha256", pattern=_SHA256)
        if digest != sha256_hex(yaml.encode("utf-8")):
            raise _Malformed(f"{path}.sha256: does not match the digest of {path}.yaml")
        return cls(_str(d["name"], f"{path}.name"), Origin.from_json(d["origin"], f"{path}.origin"),
                   _scope_from(d["scope"], f"{path}.scope"), st, yaml, digest)


@dataclass(frozen=True)
class BundleObject:
    """A CO-RE object built for one policy of the bundle, for one kernel profile.

    `source` (sha256 of the generated C source) is what a node looks the object up
    by: it plans the policy for its own kernel and loads these bytes only when its
    source digest is the same. `sha256`/`size` are of the object's bytes (a blob of
    the store); `policy` is the sha256 of the policy's YAML in this bundle.
    """

    source: str
    sha256: str
    size: int
    policy: str
    profile: str
    scoped: bool

    def __post_init__(self) -> None:
        for name in ("source", "sha256", "policy"):
            if not _SHA256.match(getattr(self, name)):
                raise ValueError(f"object {name} must be a sha256 hex digest, not {getattr(self, name)!r}")
        if not 0 < self.size <= MAX_OBJECT_BYTES:
            raise ValueError(f"object size {self.size} is not between 1 and {MAX_OBJECT_BYTES}")
        if not _PROFILE.match(self.profile):
            raise ValueError(f"object profile {self.profile!r} does not match {_PROFILE.pattern}")

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "size": self.size, "policy": self.policy,
                "profile": self.profile, "scoped": self.scoped}

    @classmethod
    def from_json(cls, v: Any, path: str) -> BundleObject:
        d = _obj(v, path, ("source", "sha256", "size", "policy", "profile", "scoped"))
        return cls(_str(d["source"], f"{path}.source", pattern=_SHA256),
                   _str(d["sha256"], f"{path}.sha256", pattern=_SHA256),
                   _int(d["size"], f"{path}.size", minimum=1, maximum=MAX_OBJECT_BYTES),
                   _str(d["policy"], f"{path}.policy", pattern=_SHA256),
                   _str(d["profile"], f"{path}.profile", pattern=_PROFILE),
                   _bool(d["scoped"], f"{path}.scoped"))


@dataclass(frozen=True)
class BundleGroup:
    """A named set of sensors, so an agent can decide whether a `{group}` scope includes it."""

    name: str
    sensors: tuple[str, ...] = ()
    match_labels: tuple[tuple[str, str], ...] = ()

    def selects(self, sensor_id: str, labels: Mapping[str, str]) -> bool:
        if sensor_id in self.sensors:
            return True
        return bool(self.match_labels) and all(labels.get(k) == v for k, v in self.match_labels)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sensors": list(self.sensors), "matchLabels": dict(self.match_labels)}

    @classmethod
    def from_json(cls, v: Any, path: str) -> BundleGroup:
        d = _obj(v, path, ("name", "sensors", "matchLabels"))
        return cls(_str(d["name"], f"{path}.name"), _strs(d["sensors"], f"{path}.sensors"),
                   _labels(d["matchLabels"], f"{path}.matchLabels"))


@dataclass(frozen=True)
class StageGates:
    """Health gates of a stage. `min_reporting_ratio` travels as a decimal string ("0.9")."""

    max_agent_errors: int | None = None
    max_policies_refused: int | None = None
    max_unhealed_drift: int | None = None
    max_enforcement_actions_per_node: int | None = None
    min_reporting_ratio: float | None = None

    _INTS = (
        ("max_agent_errors", "maxAgentErrors"),
        ("max_policies_refused", "maxPoliciesRefused"),
        ("max_unhealed_drift", "maxUnhealedDrift"),
        ("max_enforcement_actions_per_node", "maxEnforcementActionsPerNode"),
    )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr, key in self._INTS:
            if getattr(self, attr) is not None:
                out[key] = getattr(self, attr)
        if self.min_reporting_ratio is not None:
            out["minReportingRatio"] = repr(float(self.min_reporting_ratio))
        return out

    @classmethod
    def from_json(cls, v: Any, path: str) -> StageGates:
        keys = [k for _, k in cls._INTS]
        d = _obj(v, path, (), [*keys, "minReportingRatio"])
        kw: dict[str, Any] = {a: _int(d[k], f"{path}.{k}") for a, k in cls._INTS if k in d}
        if "minReportingRatio" in d:
            text = _str(d["minReportingRatio"], f"{path}.minReportingRatio",
                        pattern=re.compile(r"^(0(\.[0-9]+)?|1(\.0+)?)$"))
            kw["min_reporting_ratio"] = float(text)
        return cls(**kw)


@dataclass(frozen=True)
class BundleStage:
    """One rollout stage: which sensors it holds, its bake time and gates. The repository's rollout
    (`reconciler.repository.model.Stage`) is this same type: one definition of stage membership."""

    name: str
    sensors: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    match_labels: tuple[tuple[str, str], ...] = ()
    rest: bool = False
    bake_seconds: int = 0
    gates: StageGates = StageGates()

    @property
    def bake(self) -> _dt.timedelta:
        return _dt.timedelta(seconds=self.bake_seconds)

    def holds(self, sensor_id: str, labels: Mapping[str, str], group: Callable[[str], Selector | None]) -> bool:
        """Whether this stage holds a sensor: the rest of the fleet, its id, one of its groups (`group` looks
        a group up by name, from a repository revision or a bundle; an unknown one holds nobody), or labels."""
        return (self.rest or sensor_id in self.sensors
                or any(Scope(group=g).includes(sensor_id, labels, group) for g in self.groups)
                or (bool(self.match_labels) and all(labels.get(k) == v for k, v in self.match_labels)))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sensors": {"ids": list(self.sensors), "groups": list(self.groups),
                        "matchLabels": dict(self.match_labels), "rest": self.rest},
            "bake": self.bake_seconds,
            "gates": self.gates.to_json(),
        }

    @classmethod
    def from_json(cls, v: Any, path: str) -> BundleStage:
        d = _obj(v, path, ("name", "sensors", "bake", "gates"))
        s = _obj(d["sensors"], f"{path}.sensors", ("ids", "groups", "matchLabels", "rest"))
        return cls(
            _str(d["name"], f"{path}.name"),
            _strs(s["ids"], f"{path}.sensors.ids"),
            _strs(s["groups"], f"{path}.sensors.groups"),
            _labels(s["matchLabels"], f"{path}.sensors.matchLabels"),
            _bool(s["rest"], f"{path}.sensors.rest"),
            _int(d["bake"], f"{path}.bake", maximum=MAX_BAKE_SECONDS),
            StageGates.from_json(d["gates"], f"{path}.gates"),
        )


class _Rollout(Protocol):
    """The repository's `model.Rollout` a bundle's staging is built from (a protocol, so the wire contract
    does not import the reconciler's repository model)."""

    @property
    def fast_track(self) -> bool: ...
    @property
    def stages(self) -> Sequence[BundleStage]: ...


def stage_holding(stages: Iterable[BundleStage], sensor_id: str, labels: Mapping[str, str],
                  group: Callable[[str], Selector | None]) -> str | None:
    """The first stage that holds the sensor (None: none does). Agents (`Bundle.stage_for`) and `palisade
    plan` (on a repository revision) both ask this."""
    return next((s.name for s in stages if s.holds(sensor_id, labels, group)), None)


@dataclass(frozen=True)
class Staging:
    """The rollout plan a bundle travels with."""

    fast_track: bool
    stages: tuple[BundleStage, ...]

    @classmethod
    def from_rollout(cls, rollout: _Rollout) -> Staging:
        return cls(rollout.fast_track, tuple(rollout.stages))

    def to_json(self) -> dict[str, Any]:
        return {"fastTrack": self.fast_track, "stages": [s.to_json() for s in self.stages]}

    @classmethod
    def from_json(cls, v: Any, path: str) -> Staging:
        d = _obj(v, path, ("fastTrack", "stages"))
        stages = _list(d["stages"], f"{path}.stages", BundleStage.from_json)
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise _Malformed(f"{path}.stages: stage names are not unique")
        if DEFAULT_STAGE in names:
            raise _Malformed(f"{path}.stages: {DEFAULT_STAGE!r} is reserved")
        return cls(_bool(d["fastTrack"], f"{path}.fastTrack"), stages)


class _Signed:
    """A signed document (a bundle, the index): its JSON is the signed part and its signatures."""

    signatures: tuple[Signature, ...]

    def unsigned_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {**self.unsigned_json(), "signatures": [s.to_json() for s in self.signatures]}

    def to_bytes(self) -> bytes:
        """The file form: canonical JSON of the whole document."""
        return canonical_json(self.to_json())


@dataclass(frozen=True)
class Bundle(_Signed):
    """Everything one accepted commit says, rendered. Immutable once published."""

    version: int
    commit: str
    parent: str | None  # the previously accepted commit
    author: str  # "Name <email>"
    approvers: tuple[str, ...]
    created: _dt.datetime
    policies: tuple[BundlePolicy, ...]
    groups: tuple[BundleGroup, ...] = ()
    staging: Staging | None = None
    signatures: tuple[Signature, ...] = ()
    #: CO-RE objects built for the policies (by source digest); () for a bundle without any.
    objects: tuple[BundleObject, ...] = ()

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"bundle version must be 1 or more, not {self.version}")
        seen: set[tuple[str, str]] = set()
        for p in self.policies:
            key = (p.name, p.scope.key)
            if key in seen:
                raise ValueError(f"policy {p.name} appears twice at scope {p.scope.key}")
            seen.add(key)
        if len({g.name for g in self.groups}) != len(self.groups):
            raise ValueError("group names are not unique")
        if len(self.objects) > MAX_OBJECTS:
            raise ValueError(f"the bundle lists {len(self.objects)} objects, more than {MAX_OBJECTS}")
        if len({o.source for o in self.objects}) != len(self.objects):
            raise ValueError("objects are not unique by source digest")

    def objects_for(self, policy_sha256: str) -> tuple[BundleObject, ...]:
        """The objects built for the policy whose YAML has this digest."""
        return tuple(o for o in self.objects if o.policy == policy_sha256)

    def group(self, name: str) -> BundleGroup | None:
        return next((g for g in self.groups if g.name == name), None)

    def in_scope(self, scope: Scope, sensor_id: str, labels: Mapping[str, str]) -> bool:
        """Whether a sensor (its id and labels) is inside `scope`; an unknown group holds nobody."""
        return scope.includes(sensor_id, labels, self.group)

    def select(self, sensor_id: str, labels: Mapping[str, str]) -> tuple[BundlePolicy, ...]:
        """The policies whose scope includes this sensor, in bundle order."""
        return tuple(p for p in self.policies if self.in_scope(p.scope, sensor_id, labels))

    def effective(self, sensor_id: str, labels: Mapping[str, str]) -> tuple[BundlePolicy, ...]:
        """What this sensor enforces: one policy per name (see `model.effective`), sorted by name."""
        chosen = effective(self.policies, lambda scope: self.in_scope(scope, sensor_id, labels))
        return tuple(chosen[n] for n in sorted(chosen))

    def stage_for(self, sensor_id: str, labels: Mapping[str, str]) -> str | None:
        """The first rollout stage that holds this sensor (None: no staging, or no stage holds it,
        and the index's "default" pin applies)."""
        if self.staging is None:
            return None
        return stage_holding(self.staging.stages, sensor_id, labels, self.group)

    def unsigned_json(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "Bundle",
            "version": self.version,
            "commit": self.commit,
            "parent": self.parent,
            "author": self.author,
            "approvers": list(self.approvers),
            "created": format_time(self.created),
            "policies": [p.to_json() for p in self.policies],
            "groups": [g.to_json() for g in self.groups],
            "staging": None if self.staging is None else self.staging.to_json(),
            # absent rather than empty: a bundle without objects is byte for byte what it was before them
            **({"objects": [o.to_json() for o in self.objects]} if self.objects else {}),
        }

    @classmethod
    def from_json(cls, v: Any) -> Bundle:
        d = _obj(v, "bundle", ("apiVersion", "kind", "version", "commit", "parent", "author", "approvers",
                               "created", "policies", "groups", "staging", "signatures"), ("objects",))
        _header(d, "Bundle", "bundle")
        policies = _list(d["policies"], "policies", BundlePolicy.from_json)
        groups = _list(d["groups"], "groups", BundleGroup.from_json)
        try:
            return cls(
                version=_int(d["version"], "version", minimum=1),
                commit=_str(d["commit"], "commit", pattern=_COMMIT),
                parent=None if d["parent"] is None else _str(d["parent"], "parent", pattern=_COMMIT),
                author=_str(d["author"], "author"),
                approvers=_strs(d["approvers"], "approvers"),
                created=_time(d["created"], "created"),
                policies=policies,
                groups=groups,
                staging=None if d["staging"] is None else Staging.from_json(d["staging"], "staging"),
                signatures=_list(d["signatures"], "signatures", Signature.from_json),
                objects=_objects(d["objects"], policies) if "objects" in d else (),
            )
        except _Malformed:
            raise
        except ValueError as e:
            raise _Malformed(str(e)) from None


def _objects(v: Any, policies: tuple[BundlePolicy, ...]) -> tuple[BundleObject, ...]:
    if isinstance(v, list) and len(v) > MAX_OBJECTS:
        raise _OutOfRange(f"objects: {len(v)} entries, more than {MAX_OBJECTS}")
    found = _list(v, "objects", BundleObject.from_json)
    if not found:
        raise _Malformed("objects: an empty list is written as no member at all")
    digests = {p.sha256 for p in policies}
    for i, o in enumerate(found):
        if o.policy not in digests:
            raise _Malformed(f"objects[{i}].policy: {o.policy[:12]} is no policy of this bundle")
    return found


# ---------------------------------------------------------------------------
# Index values


@dataclass(frozen=True)
class IndexEntry:
    version: int
    sha256: str  # of the bundle file's bytes
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_json(cls, v: Any, path: str) -> IndexEntry:
        d = _obj(v, path, ("version", "sha256", "size"))
        return cls(_int(d["version"], f"{path}.version", minimum=1),
                   _str(d["sha256"], f"{path}.sha256", pattern=_SHA256),
                   _int(d["size"], f"{path}.size", maximum=MAX_BUNDLE_BYTES))


@dataclass(frozen=True)
class Index(_Signed):
    """The signed table of contents of the bundle store."""

    serial: int
    version: int  # the newest bundle
    issued: _dt.datetime
    expires: _dt.datetime
    bundles: tuple[IndexEntry, ...]  # ascending versions
    stages: Mapping[str, int]  # stage name (and "default") → pinned version
    signatures: tuple[Signature, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", MappingProxyType(dict(sorted(self.stages.items()))))
        versions = [b.version for b in self.bundles]
        if not versions:
            raise ValueError("the index lists no bundle")
        if versions != sorted(set(versions)):
            raise ValueError("bundle versions are not unique and ascending")
        if self.version != versions[-1]:
            raise ValueError(f"version {self.version} is not the newest listed bundle ({versions[-1]})")
        if self.serial < 1:
            raise ValueError("serial must be 1 or more")
        if self.expires <= self.issued:
            raise ValueError("expires is not after issued")
        listed = set(versions)
        for stage, v in self.stages.items():
            if v not in listed:
                raise ValueError(f"stage {stage} is pinned to version {v}, which the index does not list")

    def entry(self, version: int) -> IndexEntry | None:
        return next((b for b in self.bundles if b.version == version), None)

    def pinned(self, stage: str | None) -> int:
        """The version for a stage; unknown stages (and None) get the "default" pin, else the newest."""
        if stage is not None and stage in self.stages:
            return self.stages[stage]
        return self.stages.get(DEFAULT_STAGE, self.version)

    def unsigned_json(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "Index",
            "serial": self.serial,
            "version": self.version,
            "issued": format_time(self.issued),
            "expires": format_time(self.expires),
            "bundles": [b.to_json() for b in self.bundles],
            "stages": dict(self.stages),
        }

    @classmethod
    def from_json(cls, v: Any) -> Index:
        d = _obj(v, "index", ("apiVersion", "kind", "serial", "version", "issued", "expires", "bundles",
                              "stages", "signatures"))
        _header(d, "Index", "index")
        stages = d["stages"]
        if not isinstance(stages, dict):
            raise _Malformed(f"stages: expected an object, got {_typename(stages)}")
        try:
            return cls(
                serial=_int(d["serial"], "serial", minimum=1),
                version=_int(d["version"], "version", minimum=1),
                issued=_time(d["issued"], "issued"),
                expires=_time(d["expires"], "expires"),
                bundles=_list(d["bundles"], "bundles", IndexEntry.from_json),
                stages={k: _int(x, f"stages.{k}", minimum=1) for k, x in stages.items()},
                signatures=_list(d["signatures"], "signatures", Signature.from_json),
            )
        except _Malformed:
            raise
        except ValueError as e:
            raise _Malformed(str(e)) from None


def _header(d: dict[str, Any], kind: str, what: str) -> None:
    if d["apiVersion"] != API_VERSION:
        raise _Malformed(f"apiVersion: expected {API_VERSION}, got {d['apiVersion']!r}")
    if d["kind"] != kind:
        raise _Malformed(f"kind: expected {kind}, got {d['kind']!r}")


# ---------------------------------------------------------------------------
# Signing (reconciler side)


def sign_bundle(bundle: Bundle, key: SigningKey) -> bytes:
    """The bundle's file bytes, signed by `key` (any previous signatures are replaced)."""
    payload = canonical_json(bundle.unsigned_json())
    return replace(bundle, signatures=(_sign(payload, key),)).to_bytes()


def sign_index(index: Index, key: SigningKey) -> bytes:
    """The index's file bytes, signed by `key` (any previous signatures are replaced)."""
    payload = canonical_json(index.unsigned_json())
    return replace(index, signatures=(_sign(payload, key),)).to_bytes()


# ---------------------------------------------------------------------------
# Parsing and verification (agent side)


def parse_bundle(data: bytes) -> Bundle:
    """A bundle from its file bytes, strictly parsed but NOT verified."""
    _check_size("bundle", data, MAX_BUNDLE_BYTES)
    raw = _loads(data, "bundle")
    try:
        return Bundle.from_json(raw)
    except _OutOfRange as e:
        raise OutOfRange(f"bundle is malformed: {e}") from None
    except _Malformed as e:
        raise Malformed(f"bundle is malformed: {e}") from None


def parse_index(data: bytes) -> Index:
    """An index from its file bytes, strictly parsed but NOT verified."""
    _check_size("index", data, MAX_INDEX_BYTES)
    raw = _loads(data, "index")
    try:
        return Index.from_json(raw)
    except _OutOfRange as e:
        raise OutOfRange(f"index is malformed: {e}") from None
    except _Malformed as e:
        raise Malformed(f"index is malformed: {e}") from None


def verify_bundle(data: bytes, pubkeys: Iterable[VerifyKey], *, expected_sha256: str | None,
                  expected_size: int | None) -> Bundle:
    """A bundle whose bytes match the index entry and whose signature verifies.

    `expected_sha256`/`expected_size` come from a verified index; None skips
    that check (offline verification of a single file).
    """
    if expected_size is not None and len(data) != expected_size:
        raise TooLarge(f"bundle is {len(data)} bytes, the index says {expected_size}")
    _check_size("bundle", data, MAX_BUNDLE_BYTES)
    if expected_sha256 is not None:
        digest = sha256_hex(data)
        if digest != expected_sha256:
            raise DigestMismatch(f"bundle digest {digest} does not match the index ({expected_sha256})")
    bundle = parse_bundle(data)
    _check_signatures("bundle", canonical_json(bundle.unsigned_json()), bundle.signatures, pubkeys)
    return bundle


def verify_object(data: bytes, entry: BundleObject) -> bytes:
    """An object's bytes, if they are the ones a verified bundle lists (size first, then digest)."""
    if len(data) != entry.size:
        raise TooLarge(f"object {entry.sha256[:12]} is {len(data)} bytes, the bundle says {entry.size}")
    digest = sha256_hex(data)
    if digest != entry.sha256:
        raise DigestMismatch(f"object {entry.sha256[:12]} has digest {digest}, not the one the bundle signs")
    return data


def verify_index(data: bytes, pubkeys: Iterable[VerifyKey], *, now: _dt.datetime | None = None,
                 min_serial: int = 0, min_version: int = 0) -> Index:
    """An index that is signed by a trusted key, not expired, and not older than what was seen.

    `min_serial`/`min_version` are the highest serial and version the caller
    accepted before: a lower serial is a replay, a lower version a rollback.
    """
    index = parse_index(data)
    _check_signatures("index", canonical_json(index.unsigned_json()), index.signatures, pubkeys)
    now = now or _dt.datetime.now(_dt.UTC)
    if now >= index.expires:
        raise Expired(f"index expired at {format_time(index.expires)} (now {format_time(now)})")
    if index.serial < min_serial:
        raise Replay(f"index serial {index.serial} is lower than {min_serial} already seen (replay)")
    if index.version < min_version:
        raise Rollback(
            f"index version {index.version} is lower than {min_version} already seen (rollback)"
        )
    return index


def _check_size(what: str, data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise TooLarge(f"{what} is {len(data)} bytes, more than the limit of {limit}")

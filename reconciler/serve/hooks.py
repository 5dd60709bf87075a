"""Push webhooks for `palisade serve --hooks FILE`: the receivers' configuration and the verification of a delivery.

    apiVersion: palisade.dev/v1
    kind: Receivers
    spec:
      maxBodyBytes: 1048576        # a larger delivery is refused (413) before it is verified
      receivers:
        - name: github             # POST /v1/hooks/github
          kind: github             # X-Hub-Signature-256 (HMAC-SHA256 of the body)
          secretFile: github.secret   # relative to this file's directory
          rateLimit: {burst: 20, perMinute: 120}
        - name: gitlab
          kind: gitlab             # X-Gitlab-Token, compared in constant time
          secretFile: gitlab.secret
        - name: ci
          kind: generic            # X-Palisade-Signature over timestamp, delivery id and body
          secretFile: ci.secret
          maxSkew: 5m              # generic only: older (or newer) timestamps are refused

Secrets come from files only (never the command line, where `ps` shows them), read once at start; a
secret file that others can read or anyone but its owner and group can write is refused, as ssh refuses
a private key: `chmod 0600` (or 0640 for a group the server runs in).

The generic form, for any sender that can compute an HMAC:

    X-Palisade-Event: push                 (or ping: answered, nothing done)
    X-Palisade-Delivery: <id>              1-128 of A-Z a-z 0-9 . _ : -, unique per delivery
    X-Palisade-Timestamp: <unix seconds>
    X-Palisade-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<delivery>." + body)>
    body: {"ref": "refs/heads/main", "after": "<commit>"}

The signature covers the timestamp and the delivery id, so neither can be changed to replay a captured
delivery: a delivery id seen before is refused, and so is a timestamp outside `maxSkew`, after which its
id may have been forgotten. GitHub's signature covers only the body, so for every kind the digest of the
body is remembered too: the same body sent again under a new delivery id is a replay as well.

The token bucket (`rateLimit`, default 20 at once and 120 a minute) counts only deliveries that proved the
secret: a stranger who knows the URL gets 401s and cannot use up a receiver's budget to silence real pushes
(flooding with junk is for the proxy in front to limit). A delivery refused for the rate (429, Retry-After)
is not remembered, so it may be sent again. A standby (--leader-elect) answers 503: it cannot wake the leader.

Everything here is pure (no I/O but reading the configuration): `verify()` turns one request's headers and
body into a `Push` or an `Ignored`, or raises the `HookRefused` subclass of the failure; `Webhooks` adds
the state a server keeps (deliveries seen, per-receiver token buckets) around it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

import yaml

from reconciler.errors import UsageError
from reconciler.repository.model import parse_duration

__all__ = [
    "BadPayload", "BadSignature", "BodyTooLarge", "HookKind", "HookRefused", "HooksConfig", "HooksFileError",
    "IgnoreReason", "Ignored", "MissingHeader", "MissingSignature", "Push", "RateLimit", "RateLimited",
    "Receiver", "Refusal", "Replayed", "SecretFileError", "StaleTimestamp", "Standing", "UnknownReceiver",
    "Webhooks",
    "authenticate", "classify", "generic_signature", "load_hooks", "parse_hooks", "read_secret", "verify",
]

API_VERSION = "palisade.dev/v1"
KIND = "Receivers"
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_RATE = (20, 120.0)  # burst, deliveries per minute
DEFAULT_MAX_SKEW = 300.0
#: Secrets shorter than this are refused: an HMAC key that can be guessed offline from one signed delivery.
MIN_SECRET_BYTES = 16
#: Deliveries remembered per receiver (ids and body digests), for at most `_REMEMBER_SECONDS`.
MAX_REMEMBERED = 4096
_REMEMBER_SECONDS = 24 * 3600.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DELIVERY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ZERO_SHA = re.compile(r"^0+$")


# ---------------------------------------------------------------------------
# Configuration


class HooksFileError(UsageError):
    """The --hooks file is unreadable or wrong (exit 2); the message names the file and the member."""


class SecretFileError(UsageError):
    """A receiver's secret file is missing, empty, too short, or readable by others (exit 2)."""


class HookKind(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    GENERIC = "generic"


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `burst` deliveries at once, refilled at `per_minute`."""

    burst: int
    per_minute: float


@dataclass(frozen=True)
class Receiver:
    name: str
    kind: HookKind
    secret: bytes = field(repr=False)  # from secret_file; never shown
    secret_file: Path
    rate: RateLimit = RateLimit(*DEFAULT_RATE)
    max_skew: float = DEFAULT_MAX_SKEW  # seconds; generic only


@dataclass(frozen=True)
class HooksConfig:
    receivers: tuple[Receiver, ...]
    max_body: int = DEFAULT_MAX_BODY
    source: Path | None = None

    def receiver(self, name: str) -> Receiver | None:
        return next((r for r in self.receivers if r.name == name), None)


def load_hooks(path: Path) -> HooksConfig:
    """The receivers in `path` with their secrets read; HooksFileError or SecretFileError says what is wrong."""
    try:
        doc = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise HooksFileError(f"--hooks {path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    except yaml.YAMLError as e:
        raise HooksFileError(f"--hooks {path}: not YAML: {e}") from None
    return parse_hooks(doc, path)


class _Doc:
    """One mapping of the file, read member by member, with the path of each member for messages."""

    def __init__(self, value: Any, where: str, path: Path, known: frozenset[str]) -> None:
        self.where, self.path = where, path
        if not isinstance(value, dict):
            self.fail(where or "the document", f"must be a mapping, not {_shown(value)}")
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            self.fail(where or "the document", f"unknown member {unknown[0]!r} (known: {', '.join(sorted(known))})")
        self.value: dict[str, Any] = value

    def fail(self, member: str, message: str) -> None:
        raise HooksFileError(f"--hooks {self.path}: {member}: {message}")

    def member(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def need(self, key: str) -> Any:
        if key not in self.value:
            self.fail(self.where or "the document", f"{key} is required")
        return self.value[key]

    def text(self, key: str) -> str:
        v = self.need(key)
        if not isinstance(v, str) or not v:
            self.fail(self.member(key), f"must be a non-empty string, not {_shown(v)}")
        return str(v)

    def count(self, key: str, default: int, low: int) -> int:
        v = self.value.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            self.fail(self.member(key), f"must be a whole number of at least {low}, not {_shown(v)}")
        return int(v)


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def parse_hooks(doc: Any, path: Path) -> HooksConfig:
    top = _Doc(doc, "", path, frozenset({"apiVersion", "kind", "spec"}))
    if top.value.get("apiVersion") != API_VERSION or top.value.get("kind") != KIND:
        top.fail("the document", f"expected apiVersion {API_VERSION} and kind {KIND}, found "
                                 f"{top.value.get('apiVersion')!r} and {top.value.get('kind')!r}")
    spec = _Doc(top.need("spec"), "spec", path, frozenset({"receivers", "maxBodyBytes"}))
    max_body = spec.count("maxBodyBytes", DEFAULT_MAX_BODY, 1024)
    items = spec.need("receivers")
    if not isinstance(items, list) or not items:
        spec.fail("spec.receivers", "must be a non-empty list of receivers")
    receivers: list[Receiver] = []
    for i, item in enumerate(items):
        r = _receiver(_Doc(item, f"spec.receivers[{i}]", path,
                           frozenset({"name", "kind", "secretFile", "rateLimit", "maxSkew"})), path)
        if any(o.name == r.name for o in receivers):
            spec.fail(f"spec.receivers[{i}].name", f"{r.name!r} is used twice")
        receivers.append(r)
    return HooksConfig(tuple(receivers), max_body, path)


def _receiver(d: _Doc, path: Path) -> Receiver:
    name = d.text("name")
    if not _NAME.match(name):
        d.fail(d.member("name"), f"{name!r}: use 1-63 of a-z, 0-9 and '-', starting with a letter or digit "
                                 "(it is the last part of the URL)")
    raw_kind = d.text("kind")
    if raw_kind not in {k.value for k in HookKind}:
        d.fail(d.member("kind"), f"{raw_kind!r}: one of {', '.join(k.value for k in HookKind)}")
    kind = HookKind(raw_kind)
    secret_file = (path.parent / d.text("secretFile")).absolute()
    rate = RateLimit(*DEFAULT_RATE)
    if "rateLimit" in d.value:
        rl = _Doc(d.value["rateLimit"], d.member("rateLimit"), path, frozenset({"burst", "perMinute"}))
        per = rl.value.get("perMinute", DEFAULT_RATE[1])
        if not isinstance(per, int | float) or isinstance(per, bool) or not 0 < per <= 60_000:
            rl.fail(rl.member("perMinute"), f"must be a number above 0 and at most 60000, not {_shown(per)}")
        rate = RateLimit(rl.count("burst", DEFAULT_RATE[0], 1), float(per))
    skew = DEFAULT_MAX_SKEW
    if "maxSkew" in d.value:
        if kind is not HookKind.GENERIC:
            d.fail(d.member("maxSkew"), f"only a generic receiver has timestamps ({name!r} is {kind})")
        try:
            skew = parse_duration(str(d.value["maxSkew"])).total_seconds()
        except ValueError as e:
            d.fail(d.member("maxSkew"), str(e))
        if not 1 <= skew <= 3600:
            d.fail(d.member("maxSkew"), "must be from 1s to 1h")
    return Receiver(name, kind, read_secret(secret_file, name), secret_file, rate, skew)


def read_secret(path: Path, receiver: str) -> bytes:
    """The secret in `path` (one trailing newline dropped, as `echo` writes it), refused if others may read it."""
    where = f"receiver {receiver!r}: secret file {path}"
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise SecretFileError(f"{where}: cannot read it: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{where}: not a regular file")
    if st.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise SecretFileError(f"{where}: mode {stat.S_IMODE(st.st_mode):04o} lets others read or change it; "
                              f"chmod 0600 (or 0640 for the server's group)")
    secret = data.removesuffix(b"\n").removesuffix(b"\r")
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretFileError(f"{where}: {len(secret)} bytes; a secret needs at least {MIN_SECRET_BYTES} "
                              "(e.g. `openssl rand -hex 32`)")
    return secret


# ---------------------------------------------------------------------------
# Outcomes and refusals


class IgnoreReason(StrEnum):
    NOT_A_PUSH = "not_a_push"  # a ping, a tag or merge-request event...
    OTHER_REF = "other_ref"  # a push on another branch or a tag
    DELETED = "deleted"  # the tracked branch was deleted: nothing to fetch


@dataclass(frozen=True)
class Push:
    """A verified push on the tracked branch: fetch and reconcile now."""

    receiver: str
    delivery: str
    ref: str
    after: str | None  # the pushed commit, as the sender says (the reconciler reads git itself)


@dataclass(frozen=True)
class Ignored:
    """A verified delivery that asks for nothing."""

    receiver: str
    delivery: str
    reason: IgnoreReason
    detail: str


class Refusal(StrEnum):
    """Why a delivery was refused: the `reason` label of palisade_webhook_refusals_total."""

    UNKNOWN_RECEIVER = "unknown_receiver"
    TOO_LARGE = "too_large"
    MISSING_HEADER = "missing_header"
    MISSING_SIGNATURE = "missing_signature"
    BAD_SIGNATURE = "bad_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    REPLAYED = "replayed"
    RATE_LIMITED = "rate_limited"
    BAD_PAYLOAD = "bad_payload"
    STANDBY = "standby"


class HookRefused(Exception):
    """A delivery refused; `status`, `error` and `reason` are the class's, `detail` says what was wrong."""

    status: ClassVar[int]
    error: ClassVar[str]
    reason: ClassVar[Refusal]

    def __init__(self, receiver: str, detail: str) -> None:
        super().__init__(detail)
        self.receiver, self.detail = receiver, detail


class UnknownReceiver(HookRefused):
    status, error, reason = 404, "unknown receiver", Refusal.UNKNOWN_RECEIVER


class BodyTooLarge(HookRefused):
    status, error, reason = 413, "delivery too large", Refusal.TOO_LARGE


class MissingHeader(HookRefused):
    status, error, reason = 400, "missing header", Refusal.MISSING_HEADER


class MissingSignature(HookRefused):
    status, error, reason = 401, "missing signature", Refusal.MISSING_SIGNATURE


class BadSignature(HookRefused):
    status, error, reason = 401, "bad signature", Refusal.BAD_SIGNATURE


class StaleTimestamp(HookRefused):
    status, error, reason = 409, "stale timestamp", Refusal.STALE_TIMESTAMP


class Replayed(HookRefused):
    status, error, reason = 409, "replayed delivery", Refusal.REPLAYED


class RateLimited(HookRefused):
    status, error, reason = 429, "too many deliveries", Refusal.RATE_LIMITED

    def __init__(self, receiver: str, detail: str, retry_after: int) -> None:
        super().__init__(receiver, detail)
        self.retry_after = retry_after


class BadPayload(HookRefused):
    status, error, reason = 400, "bad payload", Refusal.BAD_PAYLOAD


class Standing(HookRefused):
    """This server stands by (--leader-elect): it cannot wake the leader, so the sender must reach the leader."""

    status, error, reason = 503, "standing by", Refusal.STANDBY


# ---------------------------------------------------------------------------
# Verification (pure)


@dataclass(frozen=True)
class _Delivery:
    """A delivery whose sender proved it holds the secret."""

    receiver: Receiver
    id: str
    event: str
    payload: bytes  # the JSON document (GitHub may wrap it in a form)


def generic_signature(secret: bytes, timestamp: str, delivery: str, body: bytes) -> str:
    """The X-Palisade-Signature value a generic sender computes."""
    mac = hmac.new(secret, f"{timestamp}.{delivery}.".encode(), hashlib.sha256)
    mac.update(body)
    return "sha256=" + mac.hexdigest()


def _hmac_header(receiver: Receiver, given: str | None, want: str) -> None:
    if not given:
        raise MissingSignature(receiver.name, "the delivery carries no signature header")
    if not hmac.compare_digest(given.strip().lower().encode(), want.encode()):
        raise BadSignature(receiver.name, "the signature does not match the body and this receiver's secret")


def _header(receiver: Receiver, h: Mapping[str, str], name: str) -> str:
    value = h.get(name.lower())
    if not value:
        raise MissingHeader(receiver.name, f"the delivery has no {name} header")
    return value


def _delivery_id(receiver: Receiver, value: str, header: str) -> str:
    if not _DELIVERY.match(value):
        raise MissingHeader(receiver.name, f"{header} must be 1-128 of A-Z a-z 0-9 . _ : - (got {value[:40]!r})")
    return value


def authenticate(receiver: Receiver, headers: Mapping[str, str], body: bytes, *, now: float) -> _Delivery:
    """Check the sender holds the secret (and, for generic, that the timestamp is fresh); `now` in unix seconds."""
    h = {k.lower(): v for k, v in headers.items()}
    if receiver.kind is HookKind.GITHUB:
        _hmac_header(receiver, h.get("x-hub-signature-256"),
                     "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest())
        delivery = _delivery_id(receiver, _header(receiver, h, "X-GitHub-Delivery"), "X-GitHub-Delivery")
        payload = body
        if h.get("content-type", "").split(";")[0].strip() == "application/x-www-form-urlencoded":
            payload = parse_qs(body.decode("utf-8", "replace")).get("payload", [""])[0].encode()
        return _Delivery(receiver, delivery, _header(receiver, h, "X-GitHub-Event"), payload)
    if receiver.kind is HookKind.GITLAB:
        token = h.get("x-gitlab-token")
        if not token:
            raise MissingSignature(receiver.name, "the delivery carries no X-Gitlab-Token header")
        # Compare digests: equal lengths, so the time taken says nothing about the secret's length either.
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), hashlib.sha256(receiver.secret).digest()):
            raise BadSignature(receiver.name, "the X-Gitlab-Token does not match this receiver's secret")
        header = "Idempotency-Key" if h.get("idempotency-key") else "X-Gitlab-Event-UUID"
        delivery = _delivery_id(receiver, _header(receiver, h, header), header)
        return _Delivery(receiver, delivery, _header(receiver, h, "X-Gitlab-Event"), body)
    delivery = _delivery_id(receiver, _header(receiver, h, "X-Palisade-Delivery"), "X-Palisade-Delivery")
    stamp = _header(receiver, h, "X-Palisade-Timestamp")
    _hmac_header(receiver, h.get("x-palisade-signature"), generic_signature(receiver.secret, stamp, delivery, body))
    if not re.fullmatch(r"[0-9]{1,12}", stamp):
        raise StaleTimestamp(receiver.name, f"X-Palisade-Timestamp is unix seconds (got {stamp[:20]!r})")
    if abs(now - int(stamp)) > receiver.max_skew:
        raise StaleTimestamp(receiver.name, f"the timestamp is {now - int(stamp):+.0f}s from this server's clock; "
                                            f"at most {receiver.max_skew:.0f}s either way")
    return _Delivery(receiver, delivery, _header(receiver, h, "X-Palisade-Event"), body)


_PUSH_EVENTS = {HookKind.GITHUB: "push", HookKind.GITLAB: "Push Hook", HookKind.GENERIC: "push"}


def classify(d: _Delivery, branch: str) -> Push | Ignored:
    """What an authenticated delivery asks for: a push on `branch`, or nothing (and why)."""
    name, kind = d.receiver.name, d.receiver.kind
    if d.event != _PUSH_EVENTS[kind]:
        return Ignored(name, d.id, IgnoreReason.NOT_A_PUSH,
                       f"{kind} event {d.event[:40]!r} is not a push ({_PUSH_EVENTS[kind]!r})")
    try:
        doc = json.loads(d.payload)
    except (ValueError, UnicodeDecodeError):
        raise BadPayload(name, "the push payload is not JSON") from None
    ref = doc.get("ref") if isinstance(doc, dict) else None
    if not isinstance(ref, str) or not ref:
        raise BadPayload(name, "the push payload has no ref")
    after = doc.get("after") if isinstance(doc.get("after"), str) else None
    tracked = f"refs/heads/{branch}"
    if ref != tracked:
        return Ignored(name, d.id, IgnoreReason.OTHER_REF, f"{ref[:200]} is not the tracked branch {tracked}")
    if doc.get("deleted") is True or (after is not None and _ZERO_SHA.match(after)):
        return Ignored(name, d.id, IgnoreReason.DELETED, f"the push deletes {tracked}")
    return Push(name, d.id, ref, after)


def verify(receiver: Receiver, headers: Mapping[str, str], body: bytes, *, branch: str,
           now: float) -> Push | Ignored:
    """One delivery, statelessly: authenticated, then classified. Replays and floods are `Webhooks`' part."""
    return classify(authenticate(receiver, headers, body, now=now), branch)


# ---------------------------------------------------------------------------
# The state a server keeps


class _Bucket:
    def __init__(self, rate: RateLimit, now: float) -> None:
        self.capacity, self.refill = float(rate.burst), rate.per_minute / 60.0
        self.tokens, self.at = self.capacity, now

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.refill)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.refill


class _Seen:
    """Delivery ids and body digests of recent deliveries: at most MAX_REMEMBERED, the oldest forgotten first."""

    def __init__(self) -> None:
        self._keys: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key → (monotonic time, delivery id)

    def first(self, keys: tuple[str, ...], now: float) -> str | None:
        while self._keys and next(iter(self._keys.values()))[0] < now - _REMEMBER_SECONDS:
            self._keys.popitem(last=False)
        return next((self._keys[k][1] for k in keys if k in self._keys), None)

    def add(self, keys: tuple[str, ...], delivery: str, now: float) -> None:
        for k in keys:
            self._keys[k] = (now, delivery)
            self._keys.move_to_end(k)
        while len(self._keys) > 2 * MAX_REMEMBERED:
            self._keys.popitem(last=False)


class Webhooks:
    """The receivers of one server: `receive()` verifies a delivery, refuses replays and floods, and says what
    to do. Thread-safe. `wall` and `mono` are the clocks (unix and monotonic seconds), for tests."""

    def __init__(self, config: HooksConfig, branch: str, *, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.config, self.branch = config, branch
        self._wall, self._mono = wall, mono
        self._lock = threading.Lock()
        self._buckets = {r.name: _Bucket(r.rate, mono()) for r in config.receivers}
        self._seen = {r.name: _Seen() for r in config.receivers}

    @property
    def max_body(self) -> int:
        return self.config.max_body

    def receiver(self, name: str) -> Receiver:
        r = self.config.receiver(name)
        if r is None:
            raise UnknownReceiver("", f"no receiver {name[:64]!r} is configured")
        return r

    def receive(self, receiver: Receiver, headers: Mapping[str, str], body: bytes) -> Push | Ignored:
        d = authenticate(receiver, headers, body, now=self._wall())
        outcome = classify(d, self.branch)
        keys = (f"id:{d.id}", "body:" + hashlib.sha256(body).hexdigest())
        with self._lock:
            now = self._mono()
            seen = self._seen[receiver.name].first(keys, now)
            if seen is not None:
                what = "this delivery id" if seen == d.id else f"the same body (as delivery {seen!r})"
                raise Replayed(receiver.name, f"{what} was received before")
            wait = self._buckets[receiver.name].take(now)
            if wait:
                raise RateLimited(receiver.name, f"more than {receiver.rate.burst} deliveries at once or "
                                                 f"{receiver.rate.per_minute:g} a minute", math.ceil(wait))
            # Only a delivery that was let through is remembered: one refused for the rate may be sent again.
            self._seen[receiver.name].add(keys, d.id, now)
        return outcome

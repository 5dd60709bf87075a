"""The notification configuration of `palisade serve --notify FILE`: read once at start, frozen
(schemas/notifications.schema.json describes it; a test keeps the two in agreement).

    apiVersion: palisade.dev/v1
    kind: Notifications
    spec:
      queueLimit: 1000            # undelivered notifications kept per target; beyond, the oldest is dropped
      backoff: {initial: 1s, max: 5m}
      links: [{title: Console, url: "https://palisade.example.com/ui"}]   # on every notification
      commitUrl: "https://github.com/acme/policy/commit/{commit}"       # a rejected commit's link
      targets:
        - name: ops
          kind: generic           # or slack
          urlFile: ops-webhook    # holds the URL (a secret); relative to this file's directory
          events: [commit-rejected, rollout-halted]   # default: every kind
          timeout: 5s

The webhook URL is a credential (a Slack incoming-webhook URL is all it takes to post), so it
never appears in this file, on the command line, in logs or in the delivery records: it is
read from `urlFile` once, here.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from reconciler.errors import UsageError
from reconciler.notify.events import EventKind
from reconciler.repository.model import parse_duration

__all__ = ["Backoff", "NotifyConfig", "NotifyConfigError", "Target", "TargetKind", "load", "parse"]

API_VERSION = "palisade.dev/v1"
KIND = "Notifications"
DEFAULT_QUEUE_LIMIT = 1000
DEFAULT_TIMEOUT = _dt.timedelta(seconds=5)


class NotifyConfigError(UsageError):
    """The --notify file is unreadable or wrong (exit 2); the message names the file and the member."""


class TargetKind(StrEnum):
    GENERIC = "generic"  # the notification as JSON (payload.py)
    SLACK = "slack"  # a Slack-compatible incoming-webhook message: text + blocks


@dataclass(frozen=True)
class Backoff:
    """Seconds before retry n (1-based): initial * 2**(n-1), at most `maximum`."""

    initial: float = 1.0
    maximum: float = 300.0

    def delay(self, attempts: int) -> float:
        return float(min(self.maximum, self.initial * 2 ** max(attempts - 1, 0)))


@dataclass(frozen=True)
class Target:
    name: str
    kind: TargetKind
    url: str  # from url_file; never shown
    url_file: Path
    events: frozenset[EventKind]
    timeout: float  # seconds for one POST (connect + response)

    def wants(self, kind: EventKind) -> bool:
        return kind in self.events

    def __repr__(self) -> str:  # the URL is a secret: keep it out of reprs and tracebacks
        return f"Target(name={self.name!r}, kind={self.kind!s}, url_file={str(self.url_file)!r})"


@dataclass(frozen=True)
class NotifyConfig:
    targets: tuple[Target, ...]
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    backoff: Backoff = Backoff()
    source: Path | None = None
    links: tuple[tuple[str, str], ...] = ()  # (title, URL) on every notification
    commit_url: str | None = None  # with `{commit}`: where a rejected commit is shown

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)


def load(path: Path) -> NotifyConfig:
    """The configuration in `path`; NotifyConfigError says what is wrong and where."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise NotifyConfigError(f"--notify {path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise NotifyConfigError(f"--notify {path}: not YAML: {e}") from None
    return parse(doc, path)


def parse(doc: Any, path: Path) -> NotifyConfig:
    where = f"--notify {path}"
    d = _obj(doc, "", where, ("apiVersion", "kind", "spec"), ())
    if d["apiVersion"] != API_VERSION or d["kind"] != KIND:
        raise NotifyConfigError(f"{where}: expected apiVersion {API_VERSION} and kind {KIND}, "
                                f"found {d['apiVersion']!r} and {d['kind']!r}")
    spec = _obj(d["spec"], "spec", where, ("targets",), ("queueLimit", "backoff", "links", "commitUrl"))
    limit = spec.get("queueLimit", DEFAULT_QUEUE_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise NotifyConfigError(f"{where}: spec.queueLimit must be a whole number of 1 or more, not {limit!r}")
    backoff = Backoff()
    if "backoff" in spec:
        b = _obj(spec["backoff"], "spec.backoff", where, (), ("initial", "max"))
        backoff = Backoff(_seconds(b.get("initial", "1s"), "spec.backoff.initial", where),
                          _seconds(b.get("max", "5m"), "spec.backoff.max", where))
        if backoff.maximum < backoff.initial:
            raise NotifyConfigError(f"{where}: spec.backoff.max is shorter than spec.backoff.initial")
    raw = spec["targets"]
    if not isinstance(raw, list) or not raw:
        raise NotifyConfigError(f"{where}: spec.targets must be a non-empty list")
    targets = tuple(_target(t, f"spec.targets[{i}]", where, path.parent) for i, t in enumerate(raw))
    names = [t.name for t in targets]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise NotifyConfigError(f"{where}: two targets are named {dup!r}")
    links = tuple(_link(v, f"spec.links[{i}]", where) for i, v in enumerate(_list(spec.get("links", []),
                                                                                   "spec.links", where)))
    commit_url = spec.get("commitUrl")
    if commit_url is not None and (not isinstance(commit_url, str) or "{commit}" not in commit_url
                                   or urlsplit(commit_url).scheme not in ("http", "https")):
        raise NotifyConfigError(f"{where}: spec.commitUrl must be an http(s) URL holding {{commit}}")
    return NotifyConfig(targets, limit, backoff, path, links, commit_url)


def _list(v: Any, at: str, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise NotifyConfigError(f"{where}: {at} must be a list")
    return v


def _link(v: Any, at: str, where: str) -> tuple[str, str]:
    d = _obj(v, at, where, ("title", "url"), ())
    if not isinstance(d["title"], str) or not isinstance(d["url"], str) or \
            urlsplit(d["url"]).scheme not in ("http", "https"):
        raise NotifyConfigError(f"{where}: {at} needs a title and an http(s) url")
    return d["title"], d["url"]


def _target(v: Any, at: str, where: str, base: Path) -> Target:
    d = _obj(v, at, where, ("name", "kind", "urlFile"), ("events", "timeout"))
    name = d["name"]
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "._-" for c in name):
        raise NotifyConfigError(f"{where}: {at}.name must be letters, digits, '.', '_' or '-', not {name!r}")
    try:
        kind = TargetKind(d["kind"])
    except ValueError:
        raise NotifyConfigError(f"{where}: {at}.kind must be one of {', '.join(TargetKind)}, "
                                f"not {d['kind']!r}") from None
    if not isinstance(d["urlFile"], str) or not d["urlFile"]:
        raise NotifyConfigError(f"{where}: {at}.urlFile must be a file name")
    url_file = base / d["urlFile"]
    try:
        url = url_file.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise NotifyConfigError(f"{where}: {at}.urlFile {url_file}: cannot read it: "
                                f"{getattr(e, 'strerror', None) or e}") from None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or "\n" in url:
        # the URL itself is not repeated: it is a secret
        raise NotifyConfigError(f"{where}: {at}.urlFile {url_file} must hold one http(s) URL")
    events = frozenset(EventKind)
    if "events" in d:
        raw = d["events"]
        if not isinstance(raw, list) or not raw:
            raise NotifyConfigError(f"{where}: {at}.events must be a non-empty list of {', '.join(EventKind)}")
        try:
            events = frozenset(EventKind(e) for e in raw)
        except ValueError:
            bad = next(e for e in raw if e not in set(EventKind))
            raise NotifyConfigError(f"{where}: {at}.events: unknown event {bad!r} "
                                    f"(known: {', '.join(EventKind)})") from None
    timeout = _seconds(d.get("timeout", "5s"), f"{at}.timeout", where)
    return Target(name, kind, url, url_file, events, timeout)


def _obj(v: Any, at: str, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    label = at or "the document"
    if not isinstance(v, dict):
        raise NotifyConfigError(f"{where}: {label} must be a mapping")
    missing = [k for k in required if k not in v]
    if missing:
        raise NotifyConfigError(f"{where}: {label} lacks {', '.join(missing)}")
    unknown = [str(k) for k in v if k not in required and k not in optional]
    if unknown:
        raise NotifyConfigError(f"{where}: {label} has unknown member(s) {', '.join(unknown)}")
    return v


def _seconds(v: Any, at: str, where: str) -> float:
    try:
        seconds = parse_duration(str(v)).total_seconds()
    except ValueError as e:
        raise NotifyConfigError(f"{where}: {at}: {e}") from None
    if seconds <= 0:
        raise NotifyConfigError(f"{where}: {at} must be longer than 0s")
    return seconds

"""The agent's configuration: command-line flags over an optional YAML file.

    server: http://127.0.0.1:8740
    bundles: {url: https://cdn.example.com/palisade, poll: 15}
    pubkeys: [/etc/palisade/palisade.pub]
    sensorId: node-1
    labels: {role: web}
    state: /var/lib/palisade-agent
    workloads:
      - {name: web, namespace: shop, labels: {app: web}, cgroup: /sys/fs/cgroup/shop/web}
    intervals: {wait: 30, heartbeat: 10, drift: 2}
    metrics: 127.0.0.1:9740
    events: {maxBytes: 10485760, keep: 3}
    callouts: {dnsResolver: 1.1.1.1:53, timeout: 5, ratePerSecond: 1, burst: 5}
    buildObjects: true
    placeholders: {PODCIDR: [10.244.0.0/16], SERVICECIDR: [10.96.0.0/12]}
    containers: {socket: /run/podman/podman.sock}

`server` is the reconciler: heartbeats go there, and so do index and bundle requests unless
`bundles.url` names another source (a static server, object store or CDN serving what `palisade
publish --to DIR` wrote). Such a source has no long-poll: the index is polled every `poll` seconds
(plus up to a fifth more, at random, so a fleet spreads out) with If-None-Match/If-Modified-Since, and
`wait` is never sent; `longPoll: true` says the source is a `palisade serve` after all.

The file is checked against schemas/agent-config.schema.json; a flag given on
the command line wins over the file. Workloads map cgroups to the labels that
`podSelector` and namespaced policies select, so scoping works without Kubernetes.
`containers.socket` names a container runtime's Docker-compatible API (podman's `podman system
service`, Docker's /run/docker.sock): the agent then also discovers containers as they start and stop
(agent/containers.py) and scopes policies to them; absent, only the `workloads` map is used.
`containers.cri` names a CRI socket instead (containerd's /run/containerd/containerd.sock under
Kubernetes; agent/cri.py, which needs the `cri` extra); the two are exclusive (one runtime per agent).
`buildObjects: false` keeps clang off the node: a policy is loaded only from a CO-RE
object its signed bundle carries for this kernel, and refused (saying why) otherwise.
`callouts` tune the GetUrl/DnsLookup requests policies ask for (agent/callouts.py): the resolver
DnsLookup asks (Tetragon's 1.1.1.1:53 by default), the timeout, and how often one target may be hit.
`placeholders` fill Tetragon's `${PODCIDR}`-style matchArgs values on this node; a policy
using one is compiled here (its object depends on the values), so it needs buildObjects.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

from .callouts import CalloutSettings
from .containers import Container
from .dnsquery import parse_server
from .errors import ConfigError

__all__ = ["AgentConfig", "BundleSource", "ContainerRuntime", "Intervals", "Workload", "load", "load_placeholders",
           "parse_labels"]

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$")
_SCHEMA_FILE = "agent-config.schema.json"


@dataclass(frozen=True)
class Workload:
    """A cgroup and the labels its processes carry (what a pod would have on Kubernetes)."""

    name: str
    cgroup: str
    namespace: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    container: Container | None = None  # set for a workload discovered from the container runtime

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @classmethod
    def of_container(cls, c: Container) -> Workload:
        """A discovered container as a workload: its pod's name, namespace and labels, its cgroup."""
        return cls(name=c.pod_name, cgroup=c.cgroup, namespace=c.namespace,
                   labels=tuple(sorted(c.pod_labels.items())), container=c)


@dataclass(frozen=True)
class ContainerRuntime:
    """Where the container runtime listens (a unix socket) and what it speaks there: the Docker-compatible
    API (`containers.socket`) or the CRI (`containers.cri`; agent/cri.py)."""

    socket: Path
    api: Literal["docker", "cri"] = "docker"


@dataclass(frozen=True)
class Intervals:
    """Seconds between the agent's periodic duties."""

    wait: float = 30.0  # long-poll hold asked of the server
    heartbeat: float = 10.0
    drift: float = 2.0
    retry_max: float = 30.0  # ceiling of the backoff between failed pulls


@dataclass(frozen=True)
class BundleSource:
    """Where the index, bundles and objects come from when it is not the reconciler (`server`)."""

    url: str  # base URL; the API's paths (/v1/index, ...) are appended to it
    long_poll: bool = False  # static servers, object stores and CDNs cannot hold a request
    poll: float = 15.0  # seconds between two index requests when there is no long-poll (before jitter)


@dataclass(frozen=True)
class AgentConfig:
    server: str
    pubkeys: tuple[Path, ...]
    sensor_id: str
    state: Path
    labels: tuple[tuple[str, str], ...] = ()
    workloads: tuple[Workload, ...] = ()
    intervals: Intervals = field(default_factory=Intervals)
    metrics: str | None = None  # HOST:PORT on loopback, None = no endpoint
    events_max_bytes: int = 10 * 1024 * 1024
    events_keep: int = 3
    engine: bool = True  # False: the NullEnforcer (no kernel), for simulations
    pin_root: Path | None = None  # bpffs directory of the engine's pins (default /sys/fs/bpf/palisade)
    build_objects: bool = True  # False: only the bundle's signed objects are loaded, nothing is compiled here
    #: Values of Tetragon's matchArgs placeholders on this node ("PODCIDR" → its CIDRs), filled in at load.
    placeholders: tuple[tuple[str, tuple[str, ...]], ...] = ()
    callouts: CalloutSettings = field(default_factory=CalloutSettings)
    containers: ContainerRuntime | None = None  # None: no container discovery (bare hosts)
    bundles: BundleSource | None = None  # None: the reconciler serves them, with long-poll

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def source_url(self) -> str:
        """The base URL of the index, bundles and objects."""
        return self.bundles.url if self.bundles is not None else self.server

    @property
    def long_poll(self) -> bool:
        """Whether the bundle source holds an index request until something changes (`wait`)."""
        return self.bundles is None or self.bundles.long_poll


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """`k=v,k2=v2` → sorted pairs; ConfigError names the bad item."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not _LABEL.match(k) or (v and not _LABEL.match(v)):
            raise ConfigError(f"--labels: {item!r} is not KEY=VALUE (letters, digits, . _ / -)")
        if k in out:
            raise ConfigError(f"--labels: {k} is given twice")
        out[k] = v
    return tuple(sorted(out.items()))


def _schema() -> dict[str, Any]:
    # The same lookup as the reconciler's schemas ($PALISADE_SCHEMAS, else the source tree).
    candidates = [Path(os.environ["PALISADE_SCHEMAS"])] if os.environ.get("PALISADE_SCHEMAS") else []
    candidates.append(Path(__file__).resolve().parent.parent / "schemas")
    for d in candidates:
        if (d / _SCHEMA_FILE).is_file():
            schema: dict[str, Any] = json.loads((d / _SCHEMA_FILE).read_text())
            return schema
    raise ConfigError(f"{_SCHEMA_FILE} not found (looked in {', '.join(map(str, candidates))}); "
                      "set PALISADE_SCHEMAS to the schemas/ directory")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not UTF-8 text") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if doc is None:
        doc = {}
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(top level)"
        raise ConfigError(f"config {path}: {where}: {first.message}")
    if not isinstance(doc, dict):  # the schema says object; keep mypy informed
        raise ConfigError(f"config {path}: expected a mapping")
    return doc


def load(file: Path | None, overrides: Mapping[str, Any]) -> AgentConfig:
    """The configuration from `file` (may be None) with `overrides` (flags; None values ignored).

    Overrides use the file's keys: server, pubkeys, sensorId, labels, state, metrics.
    """
    doc = _read_file(file) if file is not None else {}
    base = Path(file).parent if file is not None else Path.cwd()
    merged = {**doc, **{k: v for k, v in overrides.items() if v is not None}}
    missing = [flag for key, flag in (("server", "--server"), ("pubkeys", "--pubkey"),
                                      ("sensorId", "--sensor-id"), ("state", "--state")) if not merged.get(key)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (give the flag or set it in --config)")
    labels = merged.get("labels") or {}
    if isinstance(labels, str):
        label_pairs = parse_labels(labels)
    else:
        label_pairs = tuple(sorted((str(k), str(v)) for k, v in labels.items()))
    pubkeys = merged["pubkeys"]
    if isinstance(pubkeys, str | Path):
        pubkeys = [pubkeys]
    workloads = tuple(
        Workload(name=w["name"], cgroup=w["cgroup"], namespace=w.get("namespace"),
                 labels=tuple(sorted((w.get("labels") or {}).items())))
        for w in doc.get("workloads") or ()
    )
    names = [(w.namespace, w.name) for w in workloads]
    if len(set(names)) != len(names):
        raise ConfigError(f"config {file}: workloads: names must be unique per namespace")
    iv = doc.get("intervals") or {}
    intervals = Intervals(
        wait=float(iv.get("wait", Intervals.wait)), heartbeat=float(iv.get("heartbeat", Intervals.heartbeat)),
        drift=float(iv.get("drift", Intervals.drift)), retry_max=float(iv.get("retryMax", Intervals.retry_max)),
    )
    ev = doc.get("events") or {}
    server = str(merged["server"]).rstrip("/")
    if not re.match(r"^https?://[^/\s]+$", server):
        raise ConfigError(f"server {server!r}: expected http(s)://HOST[:PORT]")
    cfg = AgentConfig(
        server=server,
        pubkeys=tuple(_resolve(base, p) for p in pubkeys),
        sensor_id=str(merged["sensorId"]),
        state=_resolve(base, merged["state"]),
        labels=label_pairs,
        workloads=workloads,
        intervals=intervals,
        metrics=merged.get("metrics"),
        events_max_bytes=int(ev.get("maxBytes", AgentConfig.events_max_bytes)),
        events_keep=int(ev.get("keep", AgentConfig.events_keep)),
    )
    if doc.get("pinRoot"):
        cfg = replace(cfg, pin_root=_resolve(base, doc["pinRoot"]))
    if "engine" in merged:
        cfg = replace(cfg, engine=bool(merged["engine"]))
    if "buildObjects" in merged:
        cfg = replace(cfg, build_objects=bool(merged["buildObjects"]))
    if doc.get("placeholders"):
        cfg = replace(cfg, placeholders=_placeholders(doc))
    if doc.get("callouts"):
        cfg = replace(cfg, callouts=_callouts(doc["callouts"], file))
    if doc.get("containers"):
        c = doc["containers"]  # the schema lets through exactly one of the two
        runtime = ContainerRuntime(_resolve(base, c["cri"]), "cri") if "cri" in c else \
            ContainerRuntime(_resolve(base, c["socket"]))
        cfg = replace(cfg, containers=runtime)
    if doc.get("bundles"):
        b = doc["bundles"]
        cfg = replace(cfg, bundles=BundleSource(url=str(b["url"]).rstrip("/"), long_poll=bool(b.get("longPoll", False)),
                                                poll=float(b.get("poll", BundleSource.poll))))
    return cfg


def _callouts(c: Mapping[str, Any], file: Path | None) -> CalloutSettings:
    d = CalloutSettings()
    try:
        resolver = parse_server(str(c["dnsResolver"])) if "dnsResolver" in c else d.dns_resolver
    except ValueError as e:
        raise ConfigError(f"config {file}: callouts.dnsResolver {c['dnsResolver']!r}: "
                          f"an address[:port] ({e})") from None
    return CalloutSettings(dns_resolver=resolver, timeout=float(c.get("timeout", d.timeout)),
                           rate=float(c.get("ratePerSecond", d.rate)), burst=int(c.get("burst", d.burst)))


def load_placeholders(file: Path) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Only the `placeholders` of an agent configuration file (checked against the schema like `load`),
    for commands that need the node's values but not the rest (`palisade-agent try --config`)."""
    return _placeholders(_read_file(file))


def _placeholders(doc: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    ph = doc.get("placeholders") or {}
    return tuple(sorted((str(k), tuple(str(x) for x in (v if isinstance(v, list) else [v]))) for k, v in ph.items()))


def _resolve(base: Path, p: str | Path) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path)

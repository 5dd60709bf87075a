"""Observe, then enforce: an exec allowlist for one workload, from what it was seen to run.

Input is the exec evidence of one workload, from either source:

- Tetragon JSON events (`process_exec`, and any event whose `process` ran in the
  workload: its `process.binary` ran there; so did its `parent` when the parent
  is in the same pod), one JSON document per line or one per file, as
  `tetra getevents -o json`, Tetragon's export file or `palisade-agent events`
  write them;
- the fleet's observations (reconciler/state/fleet.py rows whose `workload` is it).

Output is a pack holding one TracingPolicy — on `sched:sched_process_exec`,
`matchBinaries NotIn <allowed>` with `Sigkill`, scoped to the workload with a
`podSelector` (and a namespaced policy when the namespace is known) — and an
enforcement file that assigns it at `observe`, the ladder's first state.

Binaries seen only under a package manager or a shell during the workload's
startup (the first `startup` seconds after its first sign of life) are typical
install-time or entrypoint-script activity: they are listed for review, in the
policy's comments and in the result, and are not allowed unless the operator
says so. Everything here is pure except `read_events`.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.state.fleet import ObservationRow
from wire.values import Scope

__all__ = ["Allowlist", "Candidate", "Exec", "GenerateError", "build", "execs_from_events",
           "execs_from_observations", "files", "pack_name", "policy_name", "read_events", "workloads_in_events"]

#: Parents whose children during startup are installation or entrypoint-script work, not the workload.
INSTALLERS = frozenset({"apt", "apt-get", "aptitude", "dpkg", "dpkg-deb", "yum", "dnf", "microdnf", "rpm", "apk",
                        "pip", "pip3", "pipx", "npm", "npx", "yarn", "pnpm", "gem", "bundle", "conda"})
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"})
#: Pod labels that differ between replicas of one workload: never part of its selector.
VOLATILE_LABELS = frozenset({"pod-template-hash", "controller-revision-hash", "statefulset.kubernetes.io/pod-name",
                             "pod-template-generation", "batch.kubernetes.io/controller-uid", "controller-uid"})
_MAX_EVENT_BYTES = 256 * 1024 * 1024
_REPLICA_SUFFIX = re.compile(r"^(?P<base>.+?)(-[0-9a-f]{6,10})?-[0-9a-z]{5}$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class GenerateError(ValueError):
    """The evidence cannot make a policy (nothing observed, no way to scope it, a bad events file)."""


@dataclass(frozen=True)
class Exec:
    """Evidence that `binary` ran in the workload (`count` times, first at `time` when known)."""

    binary: str
    parent: str | None = None
    time: _dt.datetime | None = None
    count: int = 1
    namespace: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    killed: bool = False  # the evidence is a policy killing or denying it: no proof that it is needed


@dataclass(frozen=True)
class Candidate:
    binary: str
    count: int
    parents: tuple[str, ...]
    first_seen: float | None  # seconds after the workload's start
    reason: str = ""  # why it is held for review

    def to_json(self) -> dict[str, Any]:
        return {"binary": self.binary, "count": self.count, "parents": list(self.parents),
                "firstSeenSeconds": self.first_seen, "reason": self.reason or None}


@dataclass(frozen=True)
class Allowlist:
    workload: str
    namespace: str | None
    labels: tuple[tuple[str, str], ...]
    allowed: tuple[Candidate, ...]
    review: tuple[Candidate, ...]
    start: _dt.datetime | None
    evidence: int  # events (or observation counts) used

    @property
    def binaries(self) -> tuple[str, ...]:
        return tuple(sorted(c.binary for c in self.allowed))

    def to_json(self) -> dict[str, Any]:
        return {"workload": self.workload, "namespace": self.namespace, "labels": dict(self.labels),
                "allowed": [c.to_json() for c in self.allowed], "review": [c.to_json() for c in self.review],
                "start": None if self.start is None else _stamp(self.start), "evidence": self.evidence}


# --------------------------------------------------------------------------- evidence


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Every JSON event object in `path` (a file or a directory of *.json / *.jsonl files): one document
    per line, or one (possibly pretty-printed) document per file. GenerateError for unreadable input."""
    p = Path(path)
    if p.is_dir():
        paths = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in (".json", ".jsonl", ".log"))
        if not paths:
            raise GenerateError(f"{p}: no .json or .jsonl files in the directory")
    elif p.is_file():
        paths = [p]
    else:
        raise GenerateError(f"{p}: no such file or directory")
    for f in paths:
        yield from _events_in(f)


def _events_in(f: Path) -> Iterator[dict[str, Any]]:
    try:
        if f.stat().st_size > _MAX_EVENT_BYTES:
            raise GenerateError(f"{f}: larger than {_MAX_EVENT_BYTES // (1024 * 1024)} MiB; filter it first (jq)")
        text = f.read_text(encoding="utf-8")
    except OSError as e:
        raise GenerateError(f"{f}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise GenerateError(f"{f}: not UTF-8 text") from None
    stripped = text.strip()
    if not stripped:
        return
    try:
        whole = json.loads(stripped)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        yield whole
        return
    if isinstance(whole, list):
        yield from (d for d in whole if isinstance(d, dict))
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            raise GenerateError(f"{f}:{n}: not a JSON event (expected one JSON object per line)") from None
        if isinstance(doc, dict):
            yield doc


def workload_of(process: Mapping[str, Any]) -> str | None:
    """A process's workload: `pod.workload`, else the pod name without a ReplicaSet/Deployment suffix."""
    pod = process.get("pod")
    if not isinstance(pod, Mapping):
        return None
    if isinstance(pod.get("workload"), str) and pod["workload"]:
        return str(pod["workload"])
    name = pod.get("name")
    if not isinstance(name, str) or not name:
        return None
    m = _REPLICA_SUFFIX.match(name)
    return m["base"] if m and _looks_generated(name, m["base"]) else name


def _looks_generated(name: str, base: str) -> bool:
    # deployment pods: <base>-<hash>-<5>; daemonset/statefulset-like: <base>-<5>, with a digit somewhere
    suffix = name[len(base) + 1:]
    return any(ch.isdigit() for ch in suffix)


def workloads_in_events(events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Workload → number of events, for a helpful error when the asked-for one is not there."""
    out: dict[str, int] = {}
    for ev in events:
        _, body = _body(ev)
        proc = body.get("process") if isinstance(body.get("process"), Mapping) else None
        w = workload_of(proc) if proc is not None else None
        if w:
            out[w] = out.get(w, 0) + 1
    return out


def execs_from_events(events: Iterable[Mapping[str, Any]], workload: str) -> list[Exec]:
    """The exec evidence of `workload` in Tetragon events (other workloads' events are skipped)."""
    out: list[Exec] = []
    seen_parents: set[str] = set()
    for ev in events:
        _, body = _body(ev)
        proc = body.get("process")
        if not isinstance(proc, Mapping) or workload_of(proc) != workload:
            continue
        binary = proc.get("binary")
        if not isinstance(binary, str) or not binary.startswith("/"):
            continue
        parent = body.get("parent") if isinstance(body.get("parent"), Mapping) else {}
        assert isinstance(parent, Mapping)
        pbin = parent.get("binary") if isinstance(parent.get("binary"), str) else None
        # the exec time is the process's start; any event of the process (an exit, a kprobe) proves it ran
        when = _time(proc.get("start_time")) or _time(ev.get("time"))
        pod = proc["pod"]
        ns = pod.get("namespace") if isinstance(pod.get("namespace"), str) else None
        labels = _labels(pod.get("pod_labels"))
        out.append(Exec(binary, pbin, when, 1, ns, labels, _killed(body.get("action"), _acted(ev))))
        # the parent ran in the same pod too (an entrypoint shell, a supervisor)
        if pbin and pbin.startswith("/") and workload_of(parent) == workload:
            key = str(parent.get("exec_id") or (pbin, parent.get("start_time")))
            if key not in seen_parents:
                seen_parents.add(key)
                out.append(Exec(pbin, None, _time(parent.get("start_time")), 1, ns, labels))
    return out


def execs_from_observations(rows: Iterable[ObservationRow], workload: str) -> list[Exec]:
    """The exec evidence of `workload` in the fleet's observations (first heartbeat as the time)."""
    return [Exec(r.binary, r.parent, r.first, r.count, killed=_killed(r.action, r.acted)) for r in rows
            if r.workload == workload and r.binary.startswith("/")]


def _killed(action: Any, acted: bool | None) -> bool:
    """An enforcing action that was taken (Tetragon's events report taken actions; palisade's say `acted`)."""
    if not isinstance(action, str):
        return False
    name = action.upper().removeprefix("KPROBE_ACTION_").lower()
    return name in ("sigkill", "signal", "override", "notifyenforcer") and acted is not False


def _acted(ev: Mapping[str, Any]) -> bool | None:
    pal = ev.get("palisade")
    acted = pal.get("acted") if isinstance(pal, Mapping) else None
    return acted if isinstance(acted, bool) else None


def _body(ev: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    for k, v in ev.items():
        if k.startswith("process_") and isinstance(v, Mapping):
            return k, v
    return "", {}


def _labels(raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in raw.items() if str(k) not in VOLATILE_LABELS))


def _time(raw: Any) -> _dt.datetime | None:
    if not isinstance(raw, str) or not raw:
        return None
    text = raw.replace("Z", "+00:00")
    # Tetragon writes nanoseconds; datetime takes microseconds
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=_dt.UTC)


# --------------------------------------------------------------------------- the allowlist


def build(workload: str, execs: Sequence[Exec], *, startup: _dt.timedelta = _dt.timedelta(seconds=60),
          allow: Sequence[str] = (), labels: Mapping[str, str] | None = None,
          namespace: str | None = None) -> Allowlist:
    """Allowed binaries and those held for review. `allow` adds binaries (reviewed by the operator);
    `labels` / `namespace` override what the evidence says about the workload's selector."""
    if not execs and not allow:
        raise GenerateError(f"no exec of workload {workload!r} was observed: nothing to allow")
    times = [e.time for e in execs if e.time is not None]
    start = min(times) if times else None
    by_binary: dict[str, list[Exec]] = {}
    for e in execs:
        by_binary.setdefault(e.binary, []).append(e)
    allowed: list[Candidate] = []
    review: list[Candidate] = []
    for binary, seen in sorted(by_binary.items()):
        parents = tuple(sorted({e.parent for e in seen if e.parent}))
        first = min((e.time for e in seen if e.time is not None), default=None)
        offset = (first - start).total_seconds() if first is not None and start is not None else None
        held = [_held(e, start, startup) for e in seen]
        cand = Candidate(binary, sum(e.count for e in seen), parents, offset)
        if binary not in allow and all(held):
            phrases = []
            kinds = sorted({h for h in held if h != _KILLED})
            if kinds:
                phrases.append(f"under {' or '.join(kinds)} ({', '.join(parents)}) within "
                               f"{int(startup.total_seconds())}s of the workload's start")
            if _KILLED in held:
                phrases.append("when a policy killed or denied it")
            review.append(Candidate(cand.binary, cand.count, cand.parents, cand.first_seen,
                                    "seen only " + "; or ".join(phrases)))
        else:
            allowed.append(cand)
    for binary in allow:
        if binary not in by_binary:
            allowed.append(Candidate(binary, 0, (), None, ""))
    ns = namespace if namespace is not None else _common(e.namespace for e in execs)
    if labels is not None:
        label_pairs = tuple(sorted(labels.items()))
    else:
        sets = [set(e.labels) for e in execs if e.labels]
        label_pairs = tuple(sorted(set.intersection(*sets))) if sets else ()
    return Allowlist(workload, ns, label_pairs, tuple(sorted(allowed, key=lambda c: c.binary)), tuple(review),
                     start, sum(e.count for e in execs))


_KILLED = "killed"


def _held(e: Exec, start: _dt.datetime | None, startup: _dt.timedelta) -> str:
    """Why this sighting alone would not justify allowing the binary ('' if it does)."""
    if e.killed:
        return _KILLED
    if e.parent is None or e.time is None or start is None or e.time - start > startup:
        return ""
    base = e.parent.rsplit("/", 1)[-1]
    if base in INSTALLERS or re.match(r"^pip[0-9.]*$", base):
        return "a package manager"
    if base in SHELLS:
        return "a shell"
    return ""


def _common(values: Iterable[str | None]) -> str | None:
    found = {v for v in values if v}
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------- the repository files


def pack_name(workload: str) -> str:
    """`<workload>-allowlist`, made a valid pack name."""
    base = re.sub(r"[^a-z0-9-]+", "-", workload.lower()).strip("-") or "workload"
    return f"{base[:50].rstrip('-')}-allowlist"


def policy_name(pack: str) -> str:
    """The TracingPolicy's name for pack `pack`: `web-allowlist` → `web-exec-allowlist`."""
    return f"{pack.removesuffix('-allowlist')}-exec-allowlist"


def files(allow: Allowlist, *, name: str, scope: Scope, owners: Sequence[str], source: str,
          now: _dt.datetime) -> dict[str, str]:
    """Repository path → text: packs/<name>/pack.yaml, packs/<name>/exec-allowlist.yaml,
    enforcement/<name>.yaml (at observe). GenerateError if the policy cannot be scoped."""
    if not _NAME.match(name) or len(name) > 63:
        raise GenerateError(f"{name!r} is not a valid pack name (lowercase letters, digits and -, at most 63)")
    if not allow.labels and not allow.namespace:
        raise GenerateError(f"workload {allow.workload!r}: no pod labels or namespace to scope the policy to; "
                            "pass --selector KEY=VALUE (the labels the workload's cgroup carries)")
    if not allow.allowed:
        raise GenerateError(f"workload {allow.workload!r}: every observed binary is held for review; an "
                            "allowlist of nothing would kill everything — pass --allow for the ones it needs")
    policy = policy_name(name)
    stamp = _stamp(now)
    head = [f"# Generated by `palisade generate` on {stamp} from {source}:",
            f"# {allow.evidence} observed exec(s) of workload {allow.workload}"
            + (f", first at {_stamp(allow.start)}." if allow.start else "."),
            "# Any exec in the workload of a binary not listed below is killed before its image runs",
            "# (once the enforcement file moves past observe). Review the list before merging."]
    if allow.review:
        head.append("#")
        head.append("# Held for review (NOT allowed): seen only under a package manager or shell during startup,")
        head.append("# or only when a policy killed or denied it.")
        head.append("# Add one to `values` (or re-run with --allow PATH) if the workload needs it at run time:")
        for c in allow.review:
            head.append(f"#   {c.binary}  ({c.count}x; {c.reason})")
    meta = [f"  name: {policy}"]
    kind = "TracingPolicy"
    if allow.namespace:
        kind = "TracingPolicyNamespaced"
        meta.append(f"  namespace: {_scalar(allow.namespace)}")
    body = [*head, "apiVersion: cilium.io/v1alpha1", f"kind: {kind}", "metadata:", *meta, "spec:"]
    if allow.labels:
        body += ["  podSelector:", "    matchLabels:"]
        body += [f"      {_scalar(k)}: {_scalar(v)}" for k, v in allow.labels]
    body += ["  tracepoints:", "    - subsystem: sched", "      event: sched_process_exec", "      selectors:",
             "        - matchBinaries:", "            - operator: NotIn", "              values:"]
    for c in allow.allowed:
        note = f"  # {c.count}x" + (f", parent {', '.join(c.parents[:3])}" if c.parents else "") if c.count else \
            "  # added by --allow"
        body.append(f"                - {_scalar(c.binary)}{note}")
    body += ["          matchActions:", "            - action: Sigkill"]
    owner_list = ", ".join(_scalar(o) for o in owners)
    pack = ["apiVersion: palisade.dev/v1", "kind: Pack", "metadata:", f"  name: {name}", "spec:",
            "  description: >-",
            f"    Exec allowlist for workload {allow.workload}, generated from {allow.evidence} observed",
            f"    exec(s) on {stamp[:10]}: anything not on the list is killed before its image runs.",
            f"  owners: [{owner_list}]", "  enforcementCapable: true"]
    scope_text = "{}" if scope.key == "fleet" else \
        f"{{sensor: {_scalar(scope.sensor or '')}}}" if scope.sensor else f"{{group: {_scalar(scope.group or '')}}}"
    enforcement = ["apiVersion: palisade.dev/v1", "kind: Enforcement", "metadata:", f"  name: {name}", "spec:",
                   f"  pack: {name}", "  assignments:",
                   "    # every new assignment starts at observe; advance it with `palisade advance` once",
                   "    # `palisade readiness` and `palisade impact` say the workload runs nothing else",
                   f"    - scope: {scope_text}", "      state: observe"]
    return {f"packs/{name}/pack.yaml": "\n".join(pack) + "\n",
            f"packs/{name}/exec-allowlist.yaml": "\n".join(body) + "\n",
            f"enforcement/{name}.yaml": "\n".join(enforcement) + "\n"}


def _scalar(s: str) -> str:
    """A YAML scalar for `s`: plain when unambiguous, JSON-quoted otherwise."""
    if re.match(r"^[A-Za-z0-9/_][A-Za-z0-9/_.+@-]*$", s) and s.lower() not in (
            "true", "false", "yes", "no", "on", "off", "null", "y", "n") and not re.match(r"^[0-9._+-]+$", s):
        return s
    return json.dumps(s)


def _stamp(t: _dt.datetime) -> str:
    return t.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""Audit one pack, rule or policy: who changed it, who approved it, where and when it was enforced.

The answer is assembled from what the reconciler keeps, all of it derived from
git and nothing an agent could forge:

- the **ledger** (every processed commit: result, bundle version, author, approvers);
- the **bundles** (immutable, one per accepted commit: each rendered policy with
  its origin, scope and ladder state), so a step is a difference between two
  consecutive bundles, exactly as agents received it;
- the **mirror** of the repository (commit subjects and times);
- the rollout controller's record of **when each sensor began and stopped running
  each version** (from heartbeats). With the bundle a sensor ran, the state it
  enforced the subject at follows (the same selection rule as the agent: the
  most specific scope wins, then the least enforcing state).

`build()` is pure; `gather()` reads a state directory (read-only, beside a running reconciler).
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import StateError, UsageError, VerificationError
from reconciler.repository.git import Git
from reconciler.state.statedir import StateView
from wire.bundle import Bundle, BundlePolicy, format_time, parse_bundle

if TYPE_CHECKING:
    from reconciler.state.fleet import AgentRecord

__all__ = ["Audit", "Change", "Interval", "Step", "build", "gather"]


@dataclass(frozen=True)
class Change:
    policy: str
    scope: str
    before: str | None  # None: the policy did not exist at this scope
    after: str | None  # None: removed

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "scope": self.scope, "from": self.before, "to": self.after}

    def text(self) -> str:
        return f"{self.policy} @ {self.scope}: {self.before or '(none)'} → {self.after or '(removed)'}"


@dataclass(frozen=True)
class Step:
    """One accepted commit that changed the subject, as the bundle that carried it."""

    version: int
    commit: str
    subject: str
    author: str
    approvers: tuple[str, ...]
    committed: _dt.datetime | None
    changes: tuple[Change, ...]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "commit": self.commit, "subject": self.subject, "author": self.author,
                "approvers": list(self.approvers),
                "committed": format_time(self.committed) if self.committed else None,
                "changes": [c.to_json() for c in self.changes]}


@dataclass(frozen=True)
class Interval:
    """A sensor enforcing one policy of the subject at one state, from `start` to `stop` (None: still)."""

    sensor: str
    policy: str
    state: str
    start: _dt.datetime
    stop: _dt.datetime | None
    versions: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "policy": self.policy, "state": self.state, "start": format_time(self.start),
                "stop": format_time(self.stop) if self.stop else None, "versions": list(self.versions)}


@dataclass(frozen=True)
class Audit:
    subject: str
    kind: str  # "pack", "rule", "policy"
    steps: tuple[Step, ...]
    versions: tuple[int, ...]  # every bundle version that carried it
    sensors: tuple[Interval, ...]
    rejected: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "kind": self.kind, "steps": [s.to_json() for s in self.steps],
                "versions": list(self.versions), "sensors": [i.to_json() for i in self.sensors],
                "rejected": [dict(r) for r in self.rejected]}


@dataclass(frozen=True)
class Run:
    """A sensor ran `version` from `began` to `ended` (from the rollout controller's record)."""

    sensor: str
    version: int
    began: _dt.datetime
    ended: _dt.datetime | None


@dataclass(frozen=True)
class CommitFacts:
    """What the ledger and the mirror say about one processed commit."""

    commit: str
    result: str
    version: int | None
    author: str
    approvers: tuple[str, ...]
    committed: _dt.datetime | None
    subject: str = ""
    paths: tuple[str, ...] = ()  # files the commit changed (read for rejected commits only)
    why: str = ""  # the first finding of a rejected commit


# ---------------------------------------------------------------------------
# Pure assembly


def _matches(p: BundlePolicy, subject: str) -> bool:
    return p.origin.name == subject or p.name == subject


def _kind(bundles: Sequence[Bundle], subject: str) -> str | None:
    for b in bundles:
        for p in b.policies:
            if p.origin.name == subject:
                return p.origin.kind
            if p.name == subject:
                return "policy"
    return None


def _states(b: Bundle | None, subject: str) -> dict[tuple[str, str], str]:
    if b is None:
        return {}
    return {(p.name, p.scope.key): str(p.state) for p in b.policies if _matches(p, subject)}


def _enforced(b: Bundle, subject: str, sensor: str, labels: Mapping[str, str],
              policies: Sequence[BundlePolicy] | None = None) -> dict[str, str]:
    """Policy name → the state this sensor enforces it at under bundle `b` (the agent's selection rule).
    `policies`: those of `b` that match `subject`, when the caller picked them once for many sensors."""
    chosen: dict[str, BundlePolicy] = {}
    for p in b.policies if policies is None else policies:
        if not _matches(p, subject) or not b.in_scope(p.scope, sensor, labels):
            continue
        cur = chosen.get(p.name)
        if cur is None or (p.scope.specificity, -p.state.rank) > (cur.scope.specificity, -cur.state.rank):
            chosen[p.name] = p
    return {name: str(p.state) for name, p in chosen.items()}


def build(subject: str, bundles: Sequence[Bundle], commits: Mapping[str, CommitFacts], runs: Sequence[Run],
          labels: Mapping[str, Mapping[str, str]], *, sensor: str | None = None) -> Audit:
    """The audit of `subject` (a pack, rule or policy name) from bundles (ascending), the ledger's commits,
    the sensors' runs and their labels."""
    kind = _kind(bundles, subject)
    if kind is None:
        raise UsageError(f"{subject!r} is not a pack, rule or policy of any published bundle")
    steps: list[Step] = []
    carried: list[int] = []
    prev: Bundle | None = None
    for b in bundles:
        before, after = _states(prev, subject), _states(b, subject)
        if after:
            carried.append(b.version)
        changes = tuple(Change(name, scope, before.get((name, scope)), after.get((name, scope)))
                        for name, scope in sorted(before.keys() | after.keys())
                        if before.get((name, scope)) != after.get((name, scope)))
        if changes:
            facts = commits.get(b.commit)
            steps.append(Step(b.version, b.commit, facts.subject if facts else "", b.author, b.approvers,
                              facts.committed if facts else None, changes))
        prev = b
    rejected = tuple({"commit": c.commit, "author": c.author, "subject": c.subject,
                      "committed": format_time(c.committed) if c.committed else None, "finding": c.why}
                     for c in commits.values() if c.result == "rejected" and _touches(c.paths, subject))
    by_version = {b.version: b for b in bundles}
    # a fleet's runs each look at the subject's few policies, not at every policy of the bundle
    mine = {b.version: tuple(p for p in b.policies if _matches(p, subject)) for b in bundles}
    intervals: list[Interval] = []
    for s in sorted({r.sensor for r in runs}):
        if sensor is not None and s != sensor:
            continue
        open_: dict[str, tuple[str, _dt.datetime, list[int]]] = {}
        for r in sorted((r for r in runs if r.sensor == s), key=lambda r: r.began):
            ran = by_version.get(r.version)
            now = _enforced(ran, subject, s, labels.get(s, {}), mine[r.version]) if ran is not None else {}
            for name in sorted(open_.keys() | now.keys()):
                cur = open_.get(name)
                state = now.get(name)
                if cur is not None and cur[0] == state:
                    cur[2].append(r.version)
                    continue
                if cur is not None:
                    intervals.append(Interval(s, name, cur[0], cur[1], r.began, tuple(cur[2])))
                    del open_[name]
                if state is not None:
                    open_[name] = (state, r.began, [r.version])
            last_end = r.ended
            if last_end is not None and not _followed(runs, s, last_end):
                for name, (state, start, versions) in open_.items():
                    intervals.append(Interval(s, name, state, start, last_end, tuple(versions)))
                open_.clear()
        for name, (state, start, versions) in sorted(open_.items()):
            intervals.append(Interval(s, name, state, start, None, tuple(versions)))
    intervals.sort(key=lambda i: (i.sensor, i.start, i.policy))
    return Audit(subject, kind, tuple(steps), tuple(carried), tuple(intervals), rejected)


def _followed(runs: Sequence[Run], sensor: str, at: _dt.datetime) -> bool:
    return any(r.sensor == sensor and r.began == at for r in runs)


def _touches(paths: Sequence[str], subject: str) -> bool:
    """A path of the subject's: its pack folder, its enforcement or rule file (by the naming convention)."""
    return any(subject in Path(p).parts[:-1] or Path(p).stem == subject for p in paths)


# ---------------------------------------------------------------------------
# Reading a state directory


def gather(state_dir: Path | StateView, subject: str, *, sensor: str | None = None,
           bundle: Callable[[int], Bundle | None] | None = None,
           agents: Callable[[], Sequence[AgentRecord]] | None = None) -> Audit:
    """The audit from a reconciler's state directory (read-only). A long-running reader (the console) may
    pass its own cached `bundle(version)` and `agents()` for the store's bundles and the fleet's sensors."""
    from reconciler.rollout.db import RolloutDB
    from reconciler.state.ledger import Ledger

    state = StateView.of(state_dir)
    with Ledger.open(state, readonly=True) as ledger:
        entries = ledger.entries()
    accepted = {e.version for e in entries if str(e.result) == "accepted"}
    bundles: list[Bundle] = []
    if bundle is not None:
        bundles = [b for v in sorted(v for v in accepted if v is not None) if (b := bundle(v)) is not None]
    for path in () if bundle is not None else sorted(
            state.store.bundles.glob("v*.json"), key=lambda p: int(p.stem[1:]) if p.stem[1:].isdigit() else 0):
        try:
            bundles.append(parse_bundle(path.read_bytes()))
        except (OSError, VerificationError) as e:
            raise StateError(f"cannot read {path}: {e}") from None
    bundles = [b for b in bundles if b.version in accepted]  # a file a crashed publish left is not history
    subjects = _subjects(state.mirror, [e.commit for e in entries])
    commits = {e.commit: CommitFacts(e.commit, str(e.result), e.version, e.author, e.approvers, e.committed,
                                     subjects.get(e.commit, ""),
                                     _paths(state.mirror, e.commit) if str(e.result) == "rejected" else (),
                                     e.findings[0].text() if e.findings and str(e.result) == "rejected" else "")
               for e in reversed(entries)}
    runs: list[Run] = []
    if state.has_rollouts():
        db = RolloutDB.open(state, readonly=True)
        try:
            runs = [Run(v.sensor, v.version, v.began, v.ended) for v in db.sensor_versions()]
        finally:
            db.close()
    labels: dict[str, Mapping[str, str]] = {}
    if agents is not None:
        labels = {a.id: dict(a.labels) for a in agents()}
    elif state.has_fleet():
        from reconciler.state.fleet import Fleet

        fleet = Fleet.open(state)
        try:
            labels = {a.id: dict(a.labels) for a in fleet.agents()}
        finally:
            fleet.close()
    if sensor is not None and sensor not in labels and not any(r.sensor == sensor for r in runs):
        raise UsageError(f"no sensor {sensor!r} has reported to this reconciler")
    return build(subject, bundles, commits, runs, labels, sensor=sensor)


def _subjects(mirror: Path, commits: Sequence[str]) -> dict[str, str]:
    """Commit id → subject line, from the reconciler's mirror (empty if it cannot be read)."""
    if not commits or not (mirror / "HEAD").exists():
        return {}
    text = Git(mirror).try_text("log", "--no-walk=unsorted", "--format=%H%x00%s", "--stdin", stdin="\n".join(commits))
    out = {}
    for line in (text or "").splitlines():
        commit, _, subject = line.partition("\0")
        out[commit] = subject
    return out


def _paths(mirror: Path, commit: str) -> tuple[str, ...]:
    """The files `commit` changed against its first parent."""
    text = Git(mirror).try_text("diff-tree", "--no-commit-id", "--name-only", "-r", "-m", "--first-parent", "--root",
                                commit)
    return tuple(text.split()) if text is not None else ()


# ---------------------------------------------------------------------------
# Text


def render_text(a: Audit) -> str:
    lines = [f"{a.subject} ({a.kind})", ""]
    lines.append("changes")
    for s in a.steps:
        when = format_time(s.committed) if s.committed else "?"
        approvers = ", ".join(s.approvers) or "none"
        lines.append(f"  v{s.version}  {s.commit[:12]}  {when}  {s.subject}")
        lines.append(f"        author: {s.author}; approved by: {approvers}")
        for c in s.changes:
            lines.append(f"        {c.text()}")
    if a.rejected:
        lines += ["", "rejected commits"]
        for r in a.rejected:
            lines.append(f"  {str(r['commit'])[:12]}  {r['committed'] or '?'}  {r['subject']}  by {r['author']}")
            if r.get("finding"):
                lines.append(f"        {r['finding']}")
    lines += ["", "carried by: " + (_ranges(a.versions) or "none"), "", "sensors"]
    if not a.sensors:
        lines.append("  no sensor reported running it")
    for i in a.sensors:
        stop = format_time(i.stop) if i.stop else "now"
        lines.append(f"  {i.sensor}  {i.policy}  {i.state}  {format_time(i.start)} → {stop}  "
                     f"({_ranges(i.versions)})")
    return "\n".join(lines)


def _ranges(versions: Sequence[int]) -> str:
    """`v1-v3, v5`."""
    runs: list[list[int]] = []
    for v in sorted(set(versions)):
        if runs and runs[-1][-1] == v - 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(f"v{r[0]}" if len(r) == 1 else f"v{r[0]}-v{r[-1]}" for r in runs)

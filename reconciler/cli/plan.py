"""`palisade plan`: what a change to the policy repository would do, before it is merged.

Per pack and rule, per scope: TracingPolicies added, removed and changed (with
a unified diff of the rendered YAML), ladder moves, approvals still needed and
observation-window problems, the rollout stages it will go through, and whether
it only relaxes enforcement. With --server, also per sensor, from the
reconciler's fleet view
(the sensors that sent heartbeats, with their labels).

What is compared (like a pull request's diff, `git diff main...HEAD`):
  head  the work tree, uncommitted changes included (what `git add -A` would
        commit), or --head REV;
  base  the merge-base of head with the branch a pull request targets (the first
        of origin/main, main, origin/master, master that exists), or --base REV.
        When head already is on that branch: with --head, its first parent (what
        the last commit did); for the work tree, HEAD (the uncommitted changes).
Nothing in the repository is written: a snapshot of the work tree lives in a
temporary object directory while the command runs.

`-o markdown` prints the plan as a pull-request comment (summary, ladder moves,
approvals still needed and from whom, rollout stages, commits, collapsible diffs);
its first line is `<!-- palisade-plan -->` so that CI can replace its last comment.

Exit codes (like `flux diff`): 0 no change, 1 changes, 2 error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import add_output

if TYPE_CHECKING:
    from reconciler.checks.plan import Plan, Sensor, SensorChange
    from reconciler.findings import Finding

def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("plan", help="show what a change would do (per unit, scope and sensor) before merging it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("."), help="policy repository (default: .)")
    p.add_argument("--base", metavar="REV", help="compare against this revision (default: see above)")
    p.add_argument("--head", metavar="REV", help="the revision to plan (default: the work tree)")
    p.add_argument("--server", metavar="URL",
                   help="a running `palisade serve`: also show the change per sensor of its fleet")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for --server (default: 10)")
    add_output(p, "markdown")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class _Side:
    label: str  # what the user named: a revision, "work tree", "(empty)"
    commit: str | None  # None: the empty repository (base of a root commit)


def run(args: argparse.Namespace) -> int:
    from ._gitwork import require_repo, scratch_objects

    require_repo(args.repo)
    with scratch_objects(args.repo):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from reconciler.checks import history, plan
    from reconciler.findings import has_errors, render_text
    from reconciler.repository import loader, render, source

    repo: Path = args.repo
    head, dirty = _head(repo, args.head)
    base = _base(repo, args.base, head, explicit_head=args.head is not None, dirty=dirty)
    today = _dt.datetime.now(_dt.UTC).date()

    head_loaded = loader.load(source.from_git(repo, head.commit or "HEAD"), today)
    if has_errors(head_loaded.findings):
        print(render_text(head_loaded.findings), file=sys.stderr)
        print(f"palisade plan: {head.label} does not load; fix the errors above (palisade validate shows all)",
              file=sys.stderr)
        return 2
    base_snap = source.from_git(repo, base.commit) if base.commit else source.Snapshot((), None)
    base_loaded = loader.load(base_snap, today)
    notes: list[str] = []
    if has_errors(base_loaded.findings):
        notes.append(f"the base {base.label} has errors of its own; what it renders is compared as far as it loads")
    try:
        old = plan.Revision(base_loaded.repository, render.render(base_loaded.repository, today))
        new = plan.Revision(head_loaded.repository, render.render(head_loaded.repository, today))
    except (ValueError, KeyError, TypeError) as e:
        print(f"palisade plan: cannot render: {e}; run palisade validate", file=sys.stderr)
        return 2
    result = plan.diff(old, new)

    findings: list[Finding] = []
    if base.commit and head.commit and base.commit != head.commit:
        findings = history.check(repo, base.commit, head.commit,
                                 load=lambda r: loader.load_revision(repo, r)[0], pending_approvals=True)
    sensors: tuple[SensorChange, ...] | None = None
    if args.server:
        fleet, why = _fleet(args.server, args.timeout)
        if fleet is None:
            notes.append(f"per-sensor view skipped: {why}")
        else:
            sensors = plan.per_sensor(old, new, fleet)
            notes.append(f"{len(fleet)} sensor(s) known to {args.server}; {len(sensors)} affected")
    if args.output == "json":
        print(json.dumps(_json(result, base, head, findings, sensors, notes, args.server), indent=2))
    elif args.output == "markdown":
        from reconciler.checks import plancomment

        print(plancomment.render(result, plancomment.Context(
            base.label, head.label, tuple(findings), head_loaded.repository.config,
            _subjects(repo, base.commit, head.commit), sensors, tuple(notes))), end="")
    else:
        print(_text(result, base, head, findings, sensors, notes, config_window=_window(head_loaded)))
    return 1 if result.changed else 0


# --- choosing what to compare --------------------------------------------------------------------


def _head(repo: Path, rev: str | None) -> tuple[_Side, bool]:
    from reconciler.repository import source

    from ._gitwork import snapshot_worktree, try_git

    if rev is not None:
        return _Side(rev, source.resolve(repo, rev)), False
    if try_git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}") is None:
        raise_usage("the repository has no commits yet; commit something or pass --head and --base")
    commit, dirty = snapshot_worktree(repo, "palisade plan: uncommitted changes of the work tree")
    return _Side("work tree" if dirty else "work tree (clean, HEAD)", commit), dirty


def _base(repo: Path, rev: str | None, head: _Side, *, explicit_head: bool, dirty: bool) -> _Side:
    from reconciler.repository import source
    from reconciler.repository.git import Git

    from ._gitwork import target_branch

    assert head.commit is not None
    if rev is not None:
        return _Side(rev, source.resolve(repo, rev))
    target = target_branch(repo)
    fork = Git(repo).merge_base(target, head.commit) if target else None
    if fork is not None and fork != head.commit:
        if dirty and fork == source.parent(repo, head.commit):
            return _Side("HEAD", fork)  # on the target branch itself: the uncommitted changes are the change
        return _Side(f"{target} (merge-base {fork[:12]})", fork)
    if not explicit_head:
        # on the target branch itself (or none exists): the uncommitted changes are the change
        parent = source.parent(repo, head.commit) if dirty else head.commit
        return _Side("HEAD", parent)
    parent = source.parent(repo, head.commit)
    if parent is None:
        return _Side("(empty)", None)
    return _Side(f"{head.label}^ (first parent)", parent)


def raise_usage(msg: str) -> None:
    from reconciler.errors import UsageError

    raise UsageError(msg)


def _subjects(repo: Path, base: str | None, head: str | None, most: int = 50) -> tuple[str, ...]:
    """The subjects of the commits the change adds, oldest first (at most `most`, the newest)."""
    from ._gitwork import try_git

    if head is None or base == head:
        return ()
    out = try_git(repo, "log", "--reverse", "--format=%s", f"{base}..{head}" if base else head)
    lines = out.splitlines() if out else []
    return tuple(lines[-most:])


# --- the fleet -----------------------------------------------------------------------------------


def _fleet(server: str, timeout: float) -> tuple[list[Sensor] | None, str]:
    """The sensors that reported to `server` (GET /v1/agents, as `palisade status` reads it), or None and
    why not: a server that is down or answers no fleet view skips the per-sensor view, it fails nothing."""
    from reconciler.checks.plan import Sensor
    from reconciler.errors import PalisadeError

    from ._fleetsource import FleetSource

    source = FleetSource(server, None, timeout)  # UsageError (exit 2) for what is not a URL
    try:
        agents = source.agents()
    except PalisadeError as e:
        return None, str(e)
    return [Sensor(a.id, tuple(sorted(a.labels.items()))) for a in agents], ""


# --- output --------------------------------------------------------------------------------------


def _window(loaded: Any) -> str | None:
    from reconciler.repository.model import format_duration

    cfg = loaded.repository.config
    return format_duration(cfg.min_observation) if cfg is not None else None


_SIGN = {"added": "+", "removed": "-", "changed": "~", "state": "~"}


def _text(result: Plan, base: _Side, head: _Side, findings: Sequence[Finding],
          sensors: Sequence[SensorChange] | None, notes: Sequence[str], config_window: str | None) -> str:
    from reconciler.findings import Severity

    out = [f"palisade plan: {base.label} → {head.label}"]
    if not result.changed:
        out.append("No changes: nodes would enforce exactly what they enforce now.")
        out.extend(f"Note: {n}" for n in notes)
        return "\n".join(out)
    c = result.classification
    out.append(f"This change is {c.label.upper()}: " + "; ".join(c.reasons[:3])
               + (f"; and {len(c.reasons) - 3} more" if len(c.reasons) > 3 else ""))
    counts = result.counts()
    out.append(f"{counts['added']} added, {counts['removed']} removed, {counts['changed']} changed, "
               f"{counts['state']} with only a new ladder state")
    out.append("")
    moves = [u for u in result.units if u.move.before != u.move.after]
    if moves:
        out.append("Ladder moves:")
        for u in moves:
            m = u.move
            before = m.before.value if m.before else "absent"
            after = m.after.value if m.after else "absent"
            what = "rule disabled" if u.disabled else {"new": "new", "forward": "forward", "back": "back",
                                                       "removed": "removed"}.get(m.kind.value, m.kind.value)
            out.append(f"  {m.unit.kind} {m.unit.name} @ {m.unit.scope.key}: {before} → {after} ({what})")
        out.append("")
    out.append("Policies:")
    shown: dict[str, str] = {}
    for u in result.units:
        for p in u.policies:
            states = _states(p.before, p.after)
            out.append(f"  {_SIGN[p.change.value]} {p.name} @ {u.unit.scope.key} "
                       f"({u.unit.kind} {u.unit.name}): {p.change.value}{states}")
            if p.diff and p.change.value in ("changed", "added"):
                if p.diff in shown:
                    out.append(f"      (same diff as {shown[p.diff]} above)")
                else:
                    shown[p.diff] = f"{p.name} @ {u.unit.scope.key}"
                    out.extend("      " + line for line in p.diff.rstrip("\n").split("\n"))
    out.append("")
    out.append("Approvals, observation window and ladder rules:")
    relevant = list(findings)
    if relevant:
        for f in relevant:
            tag = "needs" if f.code == "approval-pending" else str(f.severity)
            out.append(f"  {tag}[{f.code}] {f.file}:{f.line}: {f.message}")
        if any(f.severity is Severity.ERROR for f in relevant):
            out.append("  (errors above would make the reconciler reject the merge)")
    else:
        forward = any(u.move.kind.value == "forward" for u in result.units)
        out.append("  none needed" + ("" if forward else " (no forward steps)")
                   + (f"; minimum observation {config_window}" if config_window and forward else ""))
    out.append("")
    out.append(f"Rollout: {result.stages.describe()}")
    if sensors is not None:
        out.append("")
        out.append("Sensors:" if sensors else "Sensors: none of the known sensors is affected")
        for s in sensors:
            stage = f" [stage {s.stage}]" if s.stage else ""
            out.append(f"  {s.sensor.id}{stage}: " + "; ".join(p.describe() for p in s.policies))
    if notes or result.notes:
        out.append("")
        out.extend(f"Note: {n}" for n in (*result.notes, *notes))
    return "\n".join(out)


def _states(before: Any, after: Any) -> str:
    if before is None and after is not None:
        return f" at {after.value}"
    if after is None and before is not None:
        return f" (was {before.value})"
    if before != after:
        return f", {before.value} → {after.value}"
    return f" (at {after.value})" if after is not None else ""


def _json(result: Plan, base: _Side, head: _Side, findings: Sequence[Finding],
          sensors: Sequence[SensorChange] | None, notes: Sequence[str], server: str | None) -> dict[str, Any]:
    doc = result.to_json()
    doc["base"] = {"label": base.label, "commit": base.commit}
    doc["head"] = {"label": head.label, "commit": head.commit if head.label != "work tree" else None,
                   "worktree": head.label.startswith("work tree")}
    doc["approvals"] = [f.to_json() for f in findings]
    doc["sensors"] = None if sensors is None else [s.to_json() for s in sensors]
    doc["server"] = server
    doc["notes"] = [*doc["notes"], *notes]
    return doc

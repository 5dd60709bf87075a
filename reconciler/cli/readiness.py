"""`palisade readiness`: is a pack or rule ready for its next ladder step at a scope?

  palisade readiness pack/web-lockdown --scope group:web --server http://127.0.0.1:8740
  palisade readiness block-ptrace --scope fleet --state /var/lib/palisade -o json

Prints the class (CandidateForEnforceReady, CandidateForEnforced, NotReady, Enforced)
and the conditions behind it: time in the current state (from git history) against
the repository's minObservation, agents in scope that loaded it, refused loads,
unhealed drift, and what the agents observed (none is a caution, not a green light).

Exit codes: 0 a candidate for the next step (or already enforced), 1 not ready,
2 usage, repository or server error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import add_output
from ._fleetsource import FleetSource, Query, add_arguments

if TYPE_CHECKING:
    from reconciler.repository.acceptances import Acceptances
    from reconciler.repository.model import PolicyRepository, UnitKey
    from wire.values import State


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("readiness", help="is a unit ready for its next ladder step at a scope?",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_unit_arguments(p, "the revision whose state counts (default: HEAD)")
    add_arguments(p)
    add_output(p)
    p.set_defaults(func=run)


def add_unit_arguments(p: argparse.ArgumentParser, rev_help: str) -> None:
    """UNIT, --scope, --repo and --rev: the unit at a scope of a revision, as `load_unit` reads them."""
    p.add_argument("unit", metavar="UNIT", help="pack/NAME, rule/NAME or NAME")
    p.add_argument("--scope", required=True, help="fleet, group:NAME or sensor:ID")
    p.add_argument("--repo", type=Path, default=Path("."), help="policy repository (default: .)")
    p.add_argument("--rev", default="HEAD", help=rev_help)


@dataclass(frozen=True)
class LoadedUnit:
    """A unit resolved against a revision of the repository."""

    repo: PolicyRepository
    unit: UnitKey
    state: State
    commit: str


def load_unit(repo: Path, rev: str, ref: str, scope_text: str) -> LoadedUnit:
    """The repository at `rev` and the unit `ref` at `scope_text`; UsageError/SourceError (exit 2) otherwise."""
    from reconciler.errors import SourceError, UsageError
    from reconciler.findings import has_errors, render_text
    from reconciler.repository import loader, source
    from reconciler.repository.edit import Refusal, resolve
    from reconciler.repository.model import UnitKey
    from wire.values import Scope

    try:
        scope = Scope.parse(scope_text)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not Path(repo).is_dir():
        raise SourceError(f"--repo {repo}: not a directory")
    commit = source.resolve(repo, rev)
    loaded = loader.load(source.from_git(repo, commit))
    if has_errors(loaded.findings):
        raise SourceError(f"{rev} does not load; fix it first (palisade validate):\n"
                          + render_text(loaded.findings))
    model = loaded.repository
    try:
        kind, name = resolve(ref, model)
    except Refusal as e:
        raise UsageError(str(e)) from None
    unit = UnitKey(kind, name, scope)
    units = model.units()
    if unit not in units:
        at = sorted(u.scope.key for u in units if u.kind == kind and u.name == name)
        raise UsageError(f"{kind} {name} has no assignment at {scope.key}"
                         + (f"; it is assigned at {', '.join(at)}" if at else " (it is not on the ladder)"))
    return LoadedUnit(model, unit, units[unit], commit)


def run(args: argparse.Namespace) -> int:
    from reconciler.analysis import readiness
    from reconciler.analysis.readiness import Condition, Severity
    from reconciler.checks import history

    lu = load_unit(args.repo, args.rev, args.unit, args.scope)
    now = _dt.datetime.now(_dt.UTC)
    config = lu.repo.config
    if config is None:
        from reconciler.errors import SourceError

        raise SourceError(f"{args.repo}: no palisade.yaml at {args.rev}")
    # with the reconciler's state, time in state runs from its first acceptance, as the reconciler judges it
    accepted = _acceptances(args.state) if getattr(args, "state", None) else None
    entered = history.entered_at(args.repo, lu.commit, {lu.unit: lu.state}, accepted=accepted)[lu.unit]
    policies = readiness.unit_policies(lu.repo, lu.unit, now.date())
    pack = lu.repo.pack(lu.unit.name) if lu.unit.kind == "pack" else None
    fleet = FleetSource.from_args(args)
    agents: list[Any] = []
    rows: list[Any] = []
    if fleet is not None:
        try:
            agents = fleet.agents()
            rows = fleet.observations(Query(policies=tuple(policies), since=entered))
        finally:
            fleet.close()
    report = readiness.assess(
        lu.unit, lu.state, entered=entered, min_observation=config.min_observation, now=now,
        policies=policies, agents=agents, groups=lu.repo.groups, observations=rows,
        enforcement_capable=pack.enforcement_capable if pack is not None else True)
    if fleet is None:
        # without a fleet view nothing can be said about the nodes: say so instead of guessing
        kept = tuple(c for c in report.conditions if c.type in ("ObservationWindow", "Capability"))
        from dataclasses import replace

        report = replace(report, readiness=readiness.Readiness.NOT_READY if report.next_state else report.readiness,
                         conditions=(*kept, Condition("FleetView", Severity.BLOCKING,
                                                      "no --server or --state: whether agents loaded, refused or "
                                                      "observed it is unknown")))
    if args.output == "json":
        doc = report.to_json()
        doc["fleet"] = fleet.where if fleet is not None else None
        print(json.dumps(doc, indent=2))
    else:
        print(readiness.text(report))
    return 1 if report.readiness is readiness.Readiness.NOT_READY else 0


def _acceptances(state: Path) -> Acceptances | None:
    from reconciler.state.ledger import Ledger
    from reconciler.state.statedir import StateView

    if not StateView(state).has_ledger():
        return None  # no reconciler ran there: FleetSource reports what it can
    with Ledger.open(state, readonly=True) as ledger:
        return ledger.acceptances()

"""`palisade impact`: what enforcing a pack or rule would have done, from what agents observed.

  palisade impact pack/web-lockdown --scope group:web --days 7 --server http://127.0.0.1:8740

Sums the observations agents in scope reported for the unit's policies over the
period: how many events would have been acted on (killed, denied) had the unit
been enforced, per sensor, and the top binaries. No data is said explicitly,
because it does not mean enforcing is safe.

Exit codes: 0 report printed (with or without data), 2 usage, repository or server error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json

from . import add_output
from ._fleetsource import FleetSource, Query, add_arguments, parse_when
from .readiness import add_unit_arguments


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("impact", help="what enforcing a unit would have acted on, from observations",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_unit_arguments(p, "the revision whose policies count (default: HEAD)")
    p.add_argument("--days", type=float, default=7.0, help="the period: this many days up to now (default: 7)")
    p.add_argument("--since", help="start of the period instead of --days (24h, 7d or an RFC 3339 time)")
    p.add_argument("--until", help="end of the period (default: now)")
    p.add_argument("--top", type=int, default=10, help="how many binaries to list (default: 10)")
    add_arguments(p, required=True)
    add_output(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.analysis import impact, readiness
    from reconciler.errors import UsageError

    from .readiness import load_unit

    if args.days <= 0 or args.top < 1:
        raise UsageError("--days must be more than 0 and --top at least 1")
    now = _dt.datetime.now(_dt.UTC)
    since = parse_when(args.since, now, "--since") or now - _dt.timedelta(days=args.days)
    until = parse_when(args.until, now, "--until") or now + _dt.timedelta(seconds=1)  # stored to the second
    if since >= until:
        raise UsageError("the period is empty: --since must be before --until")
    lu = load_unit(args.repo, args.rev, args.unit, args.scope)
    policies = readiness.unit_policies(lu.repo, lu.unit, now.date())
    effects = {name: impact.policy_effect(doc) for name, doc in policies.items()}
    fleet = FleetSource.from_args(args)
    assert fleet is not None  # the group is required
    try:
        agents = fleet.agents()
        rows = fleet.observations(Query(policies=tuple(policies), since=since, until=until))
    finally:
        fleet.close()
    sensors = [a.id for a in agents if readiness.in_scope(lu.unit.scope, a, lu.repo.groups)]
    result = impact.preview(lu.unit, effects, rows, since=since, until=until, sensors=sensors, top=args.top)
    if args.output == "json":
        doc = result.to_json()
        doc["agentsInScope"] = sensors
        print(json.dumps(doc, indent=2))
    else:
        print(impact.text(result))
        if not sensors:
            print(f"  (no agent in scope {lu.unit.scope.key} has reported to {fleet.where})")
    return 0

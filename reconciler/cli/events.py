"""`palisade events`: the observations agents reported, as the reconciler stored them.

  palisade events --server http://127.0.0.1:8740 --workload web --since 24h
  palisade events --state /var/lib/palisade --policy web-exec-allowlist --binary /usr/bin/curl -o json

Each row sums the events of one policy by one binary on one sensor (with the
workload, parent binary and action when the agent said), with the first and last
heartbeat that carried them. For the raw event stream of a node, use
`palisade-agent events` on that node.

Exit codes: 0 rows printed (possibly none), 2 usage or server error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json

from . import add_output
from ._fleetsource import FleetSource, Query, add_arguments, parse_when


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("events", help="query the observations agents reported (by workload, policy, binary, "
                                      "sensor, time)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, required=True)
    p.add_argument("--workload", help="only this workload")
    p.add_argument("--policy", action="append", help="only this policy (repeatable)")
    p.add_argument("--binary", help="only this binary (full path)")
    p.add_argument("--sensor", help="only this sensor id")
    p.add_argument("--since", default="24h", help="start: a duration before now or an RFC 3339 time (default: 24h)")
    p.add_argument("--until", help="end: a duration before now or an RFC 3339 time (default: now)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many rows (default: 1000)")
    add_output(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.errors import UsageError

    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit must be from 1 to 100000")
    now = _dt.datetime.now(_dt.UTC)
    since, until = parse_when(args.since, now, "--since"), parse_when(args.until, now, "--until")
    if since is not None and until is not None and since >= until:
        raise UsageError("the period is empty: --since must be before --until")
    fleet = FleetSource.from_args(args)
    assert fleet is not None
    try:
        rows = fleet.observations(Query(policies=tuple(args.policy) if args.policy else None, sensor=args.sensor,
                                        binary=args.binary, workload=args.workload, since=since, until=until,
                                        limit=args.limit))
    finally:
        fleet.close()
    if args.output == "json":
        print(json.dumps({"observations": [r.to_json() for r in rows]}, indent=2))
        return 0
    if not rows:
        print("no observations match")
        return 0
    header = ("LAST SEEN", "SENSOR", "WORKLOAD", "POLICY", "BINARY", "PARENT", "ACTION", "COUNT")
    table = [header] + [(
        r.last.strftime("%Y-%m-%dT%H:%M:%SZ"), r.sensor, r.workload or "-", r.policy, r.binary, r.parent or "-",
        _action(r.action, r.acted), str(r.count)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1].rjust(5))
    print(f"{len(rows)} row(s), {sum(r.count for r in rows)} event(s)")
    return 0


def _action(action: str | None, acted: bool | None) -> str:
    if action is None:
        return "-"
    verb = action.removeprefix("KPROBE_ACTION_").lower()
    return verb if acted or verb in ("post", "nopost") or acted is None else f"would {verb}"

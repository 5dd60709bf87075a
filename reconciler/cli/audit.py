"""`palisade audit <pack-rule-or-policy> [--sensor ID] [--state DIR] [-o json]`.

Answers, from git history (the reconciler's mirror), the ledger, the published
bundles and the sensors' heartbeats: which commits changed it (as the bundle
versions that carried each change), who authored and who approved each step, every
bundle version that carried it, and when each sensor started and stopped enforcing
it at each state. Reads the state directory without locking it.

Exit codes: 0 answered, 2 unknown subject or sensor, or the state cannot be read.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import add_output

STATE_ENV = "PALISADE_STATE"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="who changed and approved a policy, and when each sensor enforced it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subject", metavar="NAME", help="a pack, a rule, or a rendered policy's name")
    p.add_argument("--sensor", metavar="ID", help="only this sensor's enforcement periods")
    p.add_argument("--state", type=Path, metavar="DIR",
                   help=f"the reconciler's state directory (default: ${STATE_ENV})")
    add_output(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from reconciler.analysis.audit import gather, render_text
    from reconciler.errors import UsageError

    state = args.state or (Path(os.environ[STATE_ENV]) if os.environ.get(STATE_ENV) else None)
    if state is None:
        raise UsageError(f"give the reconciler's state directory with --state DIR (or ${STATE_ENV})")
    audit = gather(state, args.subject, sensor=args.sensor)
    if args.output == "json":
        print(json.dumps(audit.to_json(), indent=2))
    else:
        print(render_text(audit))
    return 0

"""`palisade validate`: the check a team's CI runs on every pull request.

Exit codes: 0 valid (warnings allowed), 1 findings of severity error, 2 usage or I/O error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_output


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("validate", help="validate a policy repository (schemas, semantics, history)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("."), help="policy repository (default: .)")
    p.add_argument("--rev", help="validate this git revision instead of the work tree")
    p.add_argument("--base", help="check history against this revision (default: the first parent of --rev)")
    p.add_argument("--pending-approvals", action="store_true",
                   help="PR mode: report forward steps still awaiting a reviewer's signed merge as warnings")
    add_output(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..findings import Severity, render_json, render_text
    from ..validate import validate

    report = validate(args.repo, args.rev, args.base, pending_approvals=args.pending_approvals)
    if args.output == "json":
        print(render_json(report.findings))
    elif report.findings:
        print(render_text(report.findings))
        errors = sum(f.severity is Severity.ERROR for f in report.findings)
        warnings = len(report.findings) - errors
        print(f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 0 if report.ok else 1

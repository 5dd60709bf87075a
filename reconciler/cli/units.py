"""`palisade units`: which packs and rules apply to which scope, at which ladder state."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import add_output


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("units", help="list packs and rules by scope and ladder state", description=__doc__)
    p.add_argument("--repo", type=Path, default=Path("."), help="policy repository (default: .)")
    p.add_argument("--rev", help="a git revision instead of the work tree")
    add_output(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.checks.validate import validate_snapshot
    from reconciler.findings import render_text
    from reconciler.repository import render, source, summary

    snap = source.from_worktree(args.repo) if args.rev is None else source.from_git(args.repo, args.rev)
    report = validate_snapshot(snap)
    if not report.ok:
        print(render_text(report.findings), file=sys.stderr)
        print("palisade units: the repository does not validate; fix the errors above", file=sys.stderr)
        return 1
    rendered = render.render(report.repository)
    if args.output == "json":
        print(json.dumps(summary.to_json(report.repository, rendered), indent=2))
    else:
        print(summary.text(report.repository, rendered))
    return 0

"""`palisade validate`: the check a team's CI runs on every pull request.

`-o sarif` writes a SARIF 2.1.0 log for code scanning (one rule per finding code, with
what it means and what to do; paths relative to the root of the git checkout).

Exit codes: 0 valid (warnings allowed), 1 findings of severity error, 2 usage or I/O error (with
`--objects`: also when this host cannot compile objects).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import add_output

if TYPE_CHECKING:
    from reconciler.checks.validate import Report


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("validate", help="validate a policy repository (schemas, semantics, history)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("."), help="policy repository (default: .)")
    p.add_argument("--rev", help="validate this git revision instead of the work tree")
    p.add_argument("--base", help="check history against this revision (default: the first parent of --rev)")
    p.add_argument("--pending-approvals", action="store_true",
                   help="PR mode: report forward steps still awaiting a reviewer's signed merge as warnings")
    p.add_argument("--objects", action="store_true",
                   help="also compile every policy's CO-RE object as the reconciler will (needs clang and "
                        "bpftool; a policy that does not compile is an error at its file)")
    p.add_argument("--objects-cache", type=Path, default=None, metavar="DIR",
                   help="where compiled objects are kept between runs (default: a temporary directory)")
    add_output(p, "sarif")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.checks.validate import validate
    from reconciler.findings import Severity, render_json, render_text

    report = validate(args.repo, args.rev, args.base, pending_approvals=args.pending_approvals)
    if args.objects and report.rendered is not None:
        report, unavailable = _with_objects(report, args.objects_cache)
        if unavailable is not None:
            print(f"palisade validate: cannot compile objects here: {unavailable}", file=sys.stderr)
            return 2
    if args.output == "json":
        print(render_json(report.findings))
    elif args.output == "sarif":
        from reconciler.checks import sarif

        print(sarif.render(report.findings, tool_version=_version(), prefix=_checkout_prefix(args.repo)))
    elif report.findings:
        print(render_text(report.findings))
        errors = sum(f.severity is Severity.ERROR for f in report.findings)
        warnings = len(report.findings) - errors
        print(f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 0 if report.ok else 1


def _with_objects(report: Report, cache: Path | None) -> tuple[Report, str | None]:
    """The report plus what compiling the policies' objects found (a host that cannot build says so)."""
    import dataclasses
    import tempfile

    from reconciler.publish.objects import ObjectBuilder

    assert report.rendered is not None
    with tempfile.TemporaryDirectory(prefix="palisade-validate-") as tmp:
        built = ObjectBuilder(cache or Path(tmp)).build(report.rendered, report.repository)
    findings = tuple(sorted(set(report.findings) | set(built.findings)))
    return dataclasses.replace(report, findings=findings), built.unavailable


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("palisade")
    except PackageNotFoundError:
        return "0"


def _checkout_prefix(repo: Path) -> str:
    """Where the policy repository sits in its git checkout ("" at the root, "policies/" below it):
    forges resolve SARIF paths against the checkout's root."""
    from ._gitwork import try_git

    prefix = try_git(repo, "rev-parse", "--show-prefix")
    return prefix.strip() if prefix else ""

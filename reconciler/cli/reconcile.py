"""`palisade reconcile`: process new commits of the tracked branch into signed bundles.

Exit codes: 0 done (rejected commits are recorded, not an error of the command),
2 usage, I/O or state error, 3 history rewritten (refused until --accept-rewrite).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import add_output


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("reconcile", help="turn new commits into signed, published bundles",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_reconciler_arguments(p)
    p.add_argument("--once", action="store_true", help="one pass, then exit (default: keep polling)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between passes without --once")
    p.add_argument("--accept-rewrite", action="store_true",
                   help="operator override: accept a branch that no longer descends from the last accepted commit")
    add_output(p)
    p.set_defaults(func=run)


def add_reconciler_arguments(p: argparse.ArgumentParser) -> None:
    """--repo, --branch, --state and --key: what a `Reconciler` runs on (`reconcile` and `serve`)."""
    p.add_argument("--repo", required=True, help="policy repository: a local path or a git URL")
    p.add_argument("--branch", default="main", help="tracked branch (default: main)")
    p.add_argument("--state", type=Path, required=True, help="state directory (ledger, bundle store, mirror)")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 signing key (palisade keygen)")


def run(args: argparse.Namespace) -> int:
    from reconciler.errors import RewriteRefused
    from reconciler.keys import load_signing_key
    from reconciler.publish.reconcile import Reconciler

    key = load_signing_key(args.key)
    with Reconciler(args.repo, args.state, key, branch=args.branch) as rec:
        accept = args.accept_rewrite
        while True:
            try:
                outcome = rec.run_once(accept_rewrite=accept)
            except RewriteRefused as e:
                print(f"palisade reconcile: refused: {e}", file=sys.stderr)
                return e.exit_code
            accept = False
            if args.output == "json":
                print(json.dumps({"head": outcome.head, "processed": [x.to_json() for x in outcome.processed],
                                  "resigned": outcome.resigned}), flush=True)
            else:
                for entry in outcome.processed:
                    what = f"v{entry.version}" if entry.version is not None else f"{len(entry.findings)} finding(s)"
                    print(f"{entry.commit[:12]} {entry.result} {what}", file=sys.stderr, flush=True)
            if args.once:
                return 0
            time.sleep(args.interval)

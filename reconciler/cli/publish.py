"""`palisade publish --to DIR [--state DIR]`: mirror the bundle store for a static server, bucket or CDN.

DIR gets the API's paths (`DIR/v1/index`, `DIR/v1/bundles/<N>`, `DIR/v1/objects/<sha256>`): serve it
as the document root of any static server, or upload it as is, and point agents' `bundles.url` at it.
Objects and bundles are written before the index, each atomically; publishing again is a no-op.
Run it after every reconcile (the index is also re-signed before it expires: publish that too).

Exit codes: 0 the mirror holds the store's index (written now or already there); 2 usage, I/O or
state error: nothing published yet, a damaged store, or a mirror holding other bytes under an
immutable name or a newer index (nothing is written then).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_output
from ._statearg import add_state_argument, state_of


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("publish", help="mirror the bundle store into a directory a static server can serve",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", type=Path, required=True, metavar="DIR", help="the mirror directory (made if absent)")
    add_state_argument(p)
    add_output(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from reconciler.state.mirror import mirror
    from reconciler.state.statedir import StateView

    result = mirror(StateView.of(state_of(args)).store.root, args.to)
    if args.output == "json":
        print(json.dumps(result.to_json()))
        return 0
    print(f"published v{result.index.version} (index serial {result.index.serial}) to {result.root}: "
          f"wrote {len(result.written)} file(s), {result.unchanged} already current")
    for path in result.written:
        print(f"  {path}")
    return 0

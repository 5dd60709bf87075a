"""`palisade publish --to DIR [--state DIR] [--prune] [--watch]`: mirror the bundle store for a static
server, bucket or CDN.

DIR gets the API's paths (`DIR/v1/index`, `DIR/v1/bundles/<N>`, `DIR/v1/objects/<sha256>`): serve it
as the document root of any static server, or upload it as is, and point agents' `bundles.url` at it.
Objects and bundles are written before the index, each atomically; publishing again is a no-op.
Run it after every reconcile (the index is also re-signed before it expires: publish that too), or
leave it running with --watch, which mirrors again whenever the store's index changes.

--prune removes, once the new index is in place, the bundles and objects it no longer lists (as
`palisade serve` stops serving them); without it the mirror keeps every file it ever held.

Exit codes: 0 the mirror holds the store's index (written now or already there; with --watch: stopped
by SIGTERM/SIGINT); 2 usage, I/O or state error: nothing published yet, a damaged store, or a mirror
holding other bytes under an immutable name or a newer index (nothing is written then; --watch stops).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from . import add_output
from ._statearg import add_state_argument, state_of

if TYPE_CHECKING:
    from reconciler.state.mirror import MirrorResult


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("publish", help="mirror the bundle store into a directory a static server can serve",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", type=Path, required=True, metavar="DIR", help="the mirror directory (made if absent)")
    p.add_argument("--prune", action="store_true",
                   help="remove the bundles and objects the new index no longer lists")
    p.add_argument("--watch", action="store_true",
                   help="keep running: mirror again whenever the store's index changes (stop with SIGTERM)")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="--watch: how often to look at the store's index (default: 1)")
    add_state_argument(p)
    add_output(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from reconciler.errors import UsageError
    from reconciler.state.mirror import mirror
    from reconciler.state.statedir import StateView

    if args.interval <= 0 or args.interval > 3600:
        raise UsageError(f"--interval {args.interval:g}: give seconds between 0 and 3600")
    store = StateView.of(state_of(args)).store.root
    if not args.watch:
        _report(args, mirror(store, args.to, prune=args.prune))
        return 0
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopping)
    seen: tuple[int, int, int] | None = None
    while not stop.is_set():
        index = store / "index.json"
        try:
            st = index.stat()
            now: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            now = None  # nothing published yet: wait for the first publish
        if now is not None and now != seen:
            result = mirror(store, args.to, prune=args.prune)  # a StateError stops the watch (exit 2)
            seen = now
            if result.written or result.pruned:
                _report(args, result)
        stop.wait(args.interval)
    return 0


def _report(args: argparse.Namespace, result: MirrorResult) -> None:
    if args.output == "json":
        print(json.dumps(result.to_json()), flush=True)
        return
    print(f"published v{result.index.version} (index serial {result.index.serial}) to {result.root}: "
          f"wrote {len(result.written)} file(s), {result.unchanged} already current"
          + (f", pruned {len(result.pruned)}" if result.pruned else ""), flush=True)
    for path in result.written:
        print(f"  {path}")
    for path in result.pruned:
        print(f"  - {path}")
    sys.stdout.flush()  # --watch: each publish is seen as it happens

"""`palisade-agent reset`: unload every policy this node's engine pinned, and stop enforcing.

Enforcement outlives the agent (the engine pins what it loads in bpffs), so
stopping the agent does not stop enforcement; this does. Use it to decommission
a node or to clean up after a test. It removes the programs, links, maps and pins
under the pin root; the agent's state directory (last-known-good, trust) is kept
unless --state is given with --forget.

Exit codes: 0 nothing left pinned; 1 some policies could not be removed; 2 usage error.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("reset", help="unload everything the engine pinned (stop enforcing on this node)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pin-root", type=Path, default=Path("/sys/fs/bpf/palisade"),
                   help="bpffs directory the engine pins under (default: /sys/fs/bpf/palisade)")
    p.add_argument("--state", type=Path, help="the agent's state directory (with --forget)")
    p.add_argument("--forget", action="store_true", help="also delete the state directory")
    p.set_defaults(func=_reset)


def _reset(args: argparse.Namespace) -> int:
    from bpf.engine import Engine

    if args.forget and args.state is None:
        print("palisade-agent reset: --forget needs --state", file=sys.stderr)
        return 2
    failed = 0
    with Engine(args.pin_root) as engine:
        for key in engine.adopt():
            try:
                engine.unload(key)
                print(f"unloaded {key}", file=sys.stderr)
            except Exception as e:  # keep going: remove as much as possible
                failed += 1
                print(f"palisade-agent reset: {key}: {e}", file=sys.stderr)
    if args.forget and args.state is not None:
        shutil.rmtree(args.state, ignore_errors=True)
    return 1 if failed else 0

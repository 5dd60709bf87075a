"""`palisade-agent events`: the node's events, as Tetragon-shaped JSON or one compact line each.

    palisade-agent events --state /var/lib/palisade-agent -o compact
    palisade-agent events --state /var/lib/palisade-agent -f | jq 'select(.process_tracepoint)'

Exit codes: 0 success (also after Ctrl-C with -f); 2 no such state directory.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli import add_output
from agent.errors import AgentError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("events", help="print the node's events (Tetragon export shape or compact)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", type=Path, required=True, help="the agent's state directory")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    add_output(p, "compact")
    p.set_defaults(func=_events)


def _events(args: argparse.Namespace) -> int:
    from agent.events import compact, follow, read_all

    if not args.state.is_dir():
        raise AgentError(f"{args.state} is not a directory")

    def show(ev: dict[str, object]) -> None:
        line = json.dumps(ev, sort_keys=True) if args.output == "json" else compact(ev)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    for ev in read_all(args.state):
        show(ev)
    if args.follow:
        try:
            for ev in follow(args.state):
                show(ev)
        except KeyboardInterrupt:
            return 0
    return 0

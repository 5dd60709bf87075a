"""`palisade-agent run`: the node agent.

Enforces the last-known-good bundle from the state directory at once, then
long-polls the reconciler for new signed bundles, verifies, selects and applies
them, heartbeats, watches drift and writes events, until SIGTERM or SIGINT.
What the engine loaded stays pinned in the kernel after the agent exits.

No server can hold it silently: every request has a total deadline (index: the
long-poll wait + 15 s; bundle: 30 s + its size at 256 KiB/s; heartbeat: 10 s),
after which it is retried with backoff and reported as a stalled transfer;
index requests start at least 1 s apart whatever the server answers; an index
that expires on the clock is reported while the last verified bundle stays
enforced. A state directory that is full or read-only does not stop it: it
enforces from memory, reports the disk error (status, metrics, heartbeat:
degraded) and writes what it kept once the disk takes it again.

Exit codes: 0 stopped by a signal; 2 usage, configuration or key error, or a
state directory that cannot be created or is locked by another agent.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="pull, verify and enforce signed policy bundles (the node agent)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", help="reconciler API base URL, e.g. http://127.0.0.1:8740")
    p.add_argument("--pubkey", type=Path, action="append", help="pinned public key file (repeatable)")
    p.add_argument("--sensor-id", help="this node's sensor id")
    p.add_argument("--labels", help="this node's labels, KEY=VALUE,...")
    p.add_argument("--state", type=Path, help="state directory (trust state, last-known-good, events)")
    p.add_argument("--config", type=Path, help="configuration file (YAML, schemas/agent-config.schema.json)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics on this loopback address")
    p.add_argument("--no-engine", action="store_true",
                   help="do not touch the kernel (simulation: policies are checked and held in memory)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent import config
    from agent.daemon import run

    overrides = {
        "server": args.server,
        "pubkeys": [str(p.resolve()) for p in args.pubkey] if args.pubkey else None,
        "sensorId": args.sensor_id,
        "labels": args.labels,
        "state": str(args.state.resolve()) if args.state else None,
        "metrics": args.metrics,
        "engine": False if args.no_engine else None,
    }
    cfg = config.load(args.config, overrides)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per long-poll is noise
    return run(cfg)

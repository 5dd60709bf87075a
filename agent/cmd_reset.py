"""`palisade-agent reset`: unload everything palisade enforces on this node.

Enforcement outlives the agent (what it loads is pinned in bpffs), so stopping
the agent does not stop enforcement; this does. Refused while an agent runs on
the given state directory (it would load everything again).

Exit codes: 0 done (also when nothing was loaded); 2 an agent is running, or not root.
"""
from __future__ import annotations

import argparse
import fcntl
import os
from pathlib import Path

from .errors import AgentError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("reset", help="unload every policy palisade pinned on this node", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pin-root", type=Path, default=None, help="bpffs directory (default /sys/fs/bpf/palisade)")
    p.add_argument("--state", type=Path, help="the agent's state directory (refused while an agent runs there)")
    p.set_defaults(func=_reset)


def _reset(args: argparse.Namespace) -> int:
    from bpf.engine import DEFAULT_PIN_ROOT, Engine

    from .daemon import LOCK_FILE

    if args.state is not None and (args.state / LOCK_FILE).exists():
        fd = os.open(args.state / LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AgentError(f"an agent is running on {args.state}; stop it first") from None
        finally:
            os.close(fd)
    if os.geteuid() != 0:
        raise AgentError("reset needs root (it unpins BPF programs)")
    root = args.pin_root or DEFAULT_PIN_ROOT
    engine = Engine(pin_root=root)
    try:
        keys = engine.adopt()
        for key in keys:
            engine.unload(key)
            print(f"unloaded {key}")
        for name, why in engine.broken.items():
            print(f"left {root / name}: {why}")
    finally:
        engine.close()
    if not keys:
        print(f"nothing is loaded under {root}")
    return 0

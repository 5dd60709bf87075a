"""`palisade-agent reset`: unload every policy this node's engine pinned, and stop enforcing.

Enforcement outlives the agent (the engine pins what it loads in bpffs), so
stopping the agent does not stop enforcement; this does. Use it to decommission
a node or to clean up after a test. It removes the programs, links, maps and pins
under the pin root, and the base sensor's pins beside it (`<pin root>-sensor`,
left only by an agent that died). With --state it is refused while an agent runs
on that state directory (the agent would load everything again); the state
directory (last-known-good, trust) is kept unless --forget is given too.

Exit codes: 0 nothing left pinned; 1 some policies could not be removed;
2 usage error, not root, or an agent is running on --state.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
from pathlib import Path

from agent.errors import AgentError, ConfigError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("reset", help="unload everything the engine pinned (stop enforcing on this node)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pin-root", type=Path, default=Path("/sys/fs/bpf/palisade"),
                   help="bpffs directory the engine pins under (default: /sys/fs/bpf/palisade)")
    p.add_argument("--state", type=Path, help="the agent's state directory (refused while an agent runs there)")
    p.add_argument("--forget", action="store_true", help="also delete the state directory (needs --state)")
    p.set_defaults(func=_reset)


def _reset(args: argparse.Namespace) -> int:
    from agent.daemon import LOCK_FILE
    from bpf.engine import remove_all

    if args.forget and args.state is None:
        raise ConfigError("--forget needs --state")
    if args.state is not None:
        # a running agent holds its lock file, or the directory itself when the lock file could not be made
        for held in (args.state / LOCK_FILE, args.state):
            if held.exists():
                _refuse_if_locked(held, args.state)
    if os.geteuid() != 0:
        raise AgentError("reset needs root (it unpins BPF programs)")
    from agent.sensor import pin_dir, remove_pins

    unpinned, problems = remove_pins(args.pin_root)  # first: a sensor left by an agent that died
    if unpinned:
        print(f"unloaded the base sensor ({pin_dir(args.pin_root)})", file=sys.stderr)
    unloaded, more = remove_all(args.pin_root)
    problems += more
    for key in unloaded:
        print(f"unloaded {key}", file=sys.stderr)
    for problem in problems:
        print(f"palisade-agent reset: {problem}", file=sys.stderr)
    if not unloaded and not unpinned and not problems:
        print(f"nothing is loaded under {args.pin_root}", file=sys.stderr)
    if args.forget:
        from agent.runner import runtime_status_path

        shutil.rmtree(args.state, ignore_errors=True)
        runtime_status_path(args.state).unlink(missing_ok=True)
    return 1 if problems else 0


def _refuse_if_locked(path: Path, state: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AgentError(f"an agent is running on {state}; stop it first") from None
    finally:
        os.close(fd)

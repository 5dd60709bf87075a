"""`--state DIR` of the commands that read a state directory, defaulting to $PALISADE_STATE."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from reconciler.errors import UsageError

STATE_ENV = "PALISADE_STATE"


def add_state_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", type=Path, metavar="DIR",
                   help=f"the reconciler's state directory (default: ${STATE_ENV})")


def state_of(args: argparse.Namespace) -> Path:
    """The state directory the command line or the environment names (UsageError when neither does)."""
    if args.state is not None:
        return Path(args.state)
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    raise UsageError(f"give the reconciler's state directory with --state DIR (or ${STATE_ENV})")

"""`palisade`: the command line of the reconciler.

Every module in this package is one subcommand: it defines `register(subparsers)`,
which adds its parser and sets `func` to a function taking the parsed arguments and
returning the exit code. Modules import their heavy dependencies inside `func` so
that `palisade validate` does not pay for the web server.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from reconciler.errors import PalisadeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="palisade",
        description="GitOps control plane for kernel-level runtime security policy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except PalisadeError as e:
        print(f"palisade {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def add_output(p: argparse.ArgumentParser, *more: str) -> None:
    """The ecosystem's `-o text|json`, plus the formats `more` names (sarif, markdown)."""
    p.add_argument("-o", "--output", choices=("text", "json", *more), default="text", help="output format")

"""`palisade-agent`: the node agent's command line.

`probe` is defined here. Every other subcommand lives in its own module of
this package (`run.py`, `events.py`, `try_.py` for `try`, …), found at start-up,
that defines `register(subparsers)`: it adds its parser and sets `func` to a
function taking the parsed arguments and returning the exit code. Modules
import heavy dependencies inside `func`, so `palisade-agent probe` does not
pay for the HTTP client.

Exit codes: 0 success; 1 the command ran and found a problem; 2 usage or
environment error (message on stderr, never a traceback); 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
from collections.abc import Sequence

_PROG = "palisade-agent"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        # The boundary: a message, never a traceback (PALISADE_DEBUG=1 shows it).
        if os.environ.get("PALISADE_DEBUG"):
            raise
        print(f"{_PROG} {args.command}: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))


def add_output(p: argparse.ArgumentParser, *choices: str) -> None:
    """The ecosystem's `-o text|json` (plus extra formats, e.g. `compact` for events)."""
    formats = ("text", "json", *choices)
    p.add_argument("-o", "--output", choices=formats, default="text", help="output format")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Palisade node agent: pull signed policy bundles and enforce them in the kernel.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_probe(sub)
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}").register(sub)
    return parser


# ---------------------------------------------------------------- probe


def _register_probe(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "probe",
        help="show which eBPF features this kernel has, proved by loading test programs",
        description="Probe the running kernel (needs root): tracepoints, kprobes, kprobe_multi, BPF LSM, "
        "bpf_send_signal, bpf_override_return, cgroup socket hooks, ring and perf buffers, BTF, bpf_loop, "
        "uprobes, uretprobes, fentry, fexit, fmod_ret. Exit 0 whatever the kernel lacks; missing features "
        "are listed with the reason. `-o tetra` prints the same facts under the names `tetra probe` "
        "prints (`name: true|false`, `unknown` where palisade does not probe it).",
    )
    add_output(p, "tetra")
    p.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> int:
    from bpf.probe import probe

    if os.geteuid() != 0:
        print(f"{_PROG} probe: not running as root: every feature will look missing", file=sys.stderr)
    features = probe(cache=False)
    if args.output == "json":
        print(json.dumps(features.to_json(), indent=2))
        return 0
    if args.output == "tetra":
        for name, answer in features.tetra().items():
            print(f"{name}: {'unknown' if answer is None else str(answer).lower()}")
        return 0
    rows = [(name, "yes" if f.available else "no", f.reason) for name, f in features.items()]
    width = max(len(name) for name, _, _ in rows)
    print(f"kernel {features.kernel_release}")
    print(f"{'FEATURE':<{width}}  {'AVAILABLE':<9}  REASON")
    for name, available, reason in rows:
        print(f"{name:<{width}}  {available:<9}  {reason}")
    return 0

"""`palisade ledger [--state DIR] [-o json] [--limit N] [--notifications]`: the history of processed commits,
or (--notifications) every notification delivery attempt of `palisade serve --notify` and every drop."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import add_output

STATE_ENV = "PALISADE_STATE"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ledger",
        help="show the ledger of processed commits",
        description="Every commit the reconciler processed, newest first: when, the outcome, the bundle "
        "version, author, approvers and the first finding (-o json carries all findings). Reads the "
        "state directory without locking it, so it works beside a running reconciler.",
    )
    p.add_argument("--state", type=Path, metavar="DIR",
                   help=f"the reconciler's state directory (default: ${STATE_ENV})")
    p.add_argument("--limit", type=_positive, metavar="N", help="show only the newest N entries")
    p.add_argument("--notifications", action="store_true",
                   help="show notification deliveries instead (each attempt: target, notification id, outcome, "
                        "HTTP status; drops from a full queue), from the state directory's outbox")
    add_output(p)
    p.set_defaults(func=_run)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return n


def _run(args: argparse.Namespace) -> int:
    from reconciler.errors import UsageError
    from reconciler.state.ledger import Ledger
    from wire.bundle import format_time

    state = args.state or (Path(os.environ[STATE_ENV]) if os.environ.get(STATE_ENV) else None)
    if state is None:
        raise UsageError(f"give the reconciler's state directory with --state DIR (or ${STATE_ENV})")
    if args.notifications:
        return _notifications(state, args)
    with Ledger.open(state, readonly=True) as ledger:
        entries = ledger.entries(limit=args.limit)
    if args.output == "json":
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("TIME", "COMMIT", "RESULT", "VERSION", "AUTHOR", "APPROVERS", "FINDING")]
    for e in entries:
        first = e.findings[0].text() if e.findings else ""
        more = f" (+{len(e.findings) - 1} more)" if len(e.findings) > 1 else ""
        rows.append((format_time(e.processed), e.commit[:12], str(e.result),
                     "" if e.version is None else f"v{e.version}", e.author,
                     ", ".join(e.approvers) or "-", first + more))
    _table(rows, "the ledger is empty")
    return 0


def _notifications(state: Path, args: argparse.Namespace) -> int:
    from reconciler.notify.outbox import Outbox
    from wire.bundle import format_time

    with Outbox.open(state, readonly=True) as outbox:
        deliveries = outbox.deliveries(limit=args.limit)
        pending = outbox.pending()
    if args.output == "json":
        print(json.dumps({"pending": pending, "deliveries": [d.to_json() for d in deliveries]}, indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("TIME", "TARGET", "ATTEMPT", "OUTCOME", "STATUS", "NOTIFICATION", "ERROR")]
    for d in deliveries:
        rows.append((format_time(d.time), d.target, str(d.attempt), str(d.outcome),
                     "" if d.status is None else str(d.status), d.event, d.error or ""))
    for target, n in sorted(pending.items()):
        print(f"{target}: {n} undelivered")
    _table(rows, "no notification deliveries yet")
    return 0


def _table(rows: list[tuple[str, ...]], empty: str) -> None:
    """Columns padded to their widest cell; the last one (free text) is not padded."""
    if len(rows) == 1:
        print(empty)
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])

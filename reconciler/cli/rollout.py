"""`palisade rollout`: watch and steer the progressive rollout (canary → group → fleet).

    palisade rollout status  (--state DIR | --server URL) [-o json]
    palisade rollout history --state DIR [--sensors] [--limit N] [-o json]
    palisade rollout pause   --state DIR --reason TEXT [--operator NAME] [--wait SECONDS]
    palisade rollout resume  --state DIR --reason TEXT [--operator NAME] [--wait SECONDS]
    palisade rollout abort   --state DIR --reason TEXT [--operator NAME] [--wait SECONDS]

`status` shows each stage: the pinned version, its agents (known, reporting, running the
pin), the gate values against their limits, the time left in the bake, and why the
rollout holds or halted. It reads the state directory without locking it.

`history` lists the ledger's rollout rows (who, when, why), newest first.

`pause` stops promotions (gates are still watched: a failing gate still halts);
`resume` continues a paused rollout, or retries a halted or aborted one from the first
stage; `abort` pins every stage running the new version back to the last version that
completed a rollout. Each is recorded in the ledger with the operator and the reason.
The request is queued in the state directory and applied by the reconciler at its next
tick (`palisade serve` ticks every second); the command waits for it.

Exit codes: status: 0 fine, 1 the rollout halted or was aborted; pause/resume/abort:
0 applied, 1 refused (e.g. nothing to pause) or not applied within --wait (is the
reconciler running?); 2 usage or state error.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.errors import StateError, UsageError

from . import add_output

STATE_ENV = "PALISADE_STATE"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("rollout", help="show, pause, resume or abort the progressive rollout",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    st = verbs.add_parser("status", help="each stage: pinned version, agents, gates, bake left, halt reason")
    where = st.add_mutually_exclusive_group()
    where.add_argument("--state", type=Path, metavar="DIR", help=f"state directory (default: ${STATE_ENV})")
    where.add_argument("--server", metavar="URL", help="base URL of a running `palisade serve`")
    st.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for --server (default: 10)")
    add_output(st)
    st.set_defaults(func=_status)
    hi = verbs.add_parser("history", help="the ledger's rollout rows: starts, promotions, halts, rollbacks, "
                                          "pauses, resumes, aborts (newest first)")
    hi.add_argument("--state", type=Path, metavar="DIR", help=f"state directory (default: ${STATE_ENV})")
    hi.add_argument("--limit", type=int, default=50, metavar="N", help="newest N rows (default: 50)")
    hi.add_argument("--sensors", action="store_true", help="also each sensor's version changes")
    add_output(hi)
    hi.set_defaults(func=_history)
    for verb, text in (("pause", "stop promotions (gates still halt)"),
                       ("resume", "continue a paused rollout, or retry a halted/aborted one from the first stage"),
                       ("abort", "pin every stage running the new version back to the last completed one")):
        v = verbs.add_parser(verb, help=text)
        v.add_argument("--state", type=Path, metavar="DIR", help=f"state directory (default: ${STATE_ENV})")
        v.add_argument("--reason", required=True, help="why (recorded in the ledger)")
        v.add_argument("--operator", help="who (recorded in the ledger; default: the login name)")
        v.add_argument("--wait", type=float, default=15.0, metavar="SECONDS",
                       help="how long to wait for the reconciler to apply it (default: 15)")
        add_output(v)
        v.set_defaults(func=_operate)


def _state(args: argparse.Namespace) -> Path:
    state: Path | None = args.state or (Path(os.environ[STATE_ENV]) if os.environ.get(STATE_ENV) else None)
    if state is None:
        raise UsageError(f"give the reconciler's state directory with --state DIR (or ${STATE_ENV})")
    return state


def _status(args: argparse.Namespace) -> int:
    if args.server:
        from .status import from_server

        doc = from_server(args.server, args.timeout).get("rollout")
        if not isinstance(doc, dict):
            raise StateError(f"{args.server} does not report a rollout")
    else:
        from reconciler.rollout.status import read_status

        doc = read_status(_state(args))
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_text(doc))
    return 1 if doc.get("state") in ("halted", "aborted") else 0


def _history(args: argparse.Namespace) -> int:
    from reconciler.state.ledger import Ledger
    from wire.bundle import format_time

    if args.limit < 1:
        raise UsageError("--limit must be 1 or more")
    with Ledger.open(_state(args), readonly=True) as ledger:
        events = [e for e in ledger.events()
                  if e.kind.startswith("rollout-") or (args.sensors and e.kind == "sensor-version")][: args.limit]
    if args.output == "json":
        print(json.dumps([e.to_json() for e in events], indent=2, sort_keys=True))
        return 0
    if not events:
        print("no rollout rows in the ledger")
        return 0
    for e in events:
        d = e.detail
        what = d.get("reason") or d.get("result") or ""
        if e.kind == "rollout-started":
            kind = (d.get("classification") or {}).get("kind", "?")
            what = f"{kind} change, " + ("fast-tracked to every stage" if d.get("fastTracked") else "stage by stage")
            if d.get("supersedes"):
                what += f"; supersedes v{d['supersedes']}"
        if e.kind == "sensor-version":
            what = f"runs v{d.get('version')} (was {'v' + str(d['previous']) if d.get('previous') else 'nothing'})"
        stage = f" {d['stage']}" if d.get("stage") else ""
        print(f"{format_time(e.time)}  {e.kind:<20} {e.subject}{stage}  by {e.actor or '-'}  {what}")
    return 0


def _operate(args: argparse.Namespace) -> int:
    import datetime as _dt

    from reconciler.rollout.db import RolloutDB
    from reconciler.state.statedir import StateView

    if not args.reason.strip():
        raise UsageError("--reason must not be empty")
    state = _state(args)
    if not StateView(state).has_rollouts():
        raise StateError(f"no rollout state in {state} (has a reconciler run with --state {state}?)")
    operator = args.operator or _login()
    db = RolloutDB.open(state)
    try:
        rid = db.request(args.verb, args.reason.strip(), operator, _dt.datetime.now(_dt.UTC))
        deadline = time.monotonic() + max(args.wait, 0.0)
        req = db.get_request(rid)
        while req is not None and req.applied is None and time.monotonic() < deadline:
            time.sleep(0.2)
            req = db.get_request(rid)
    finally:
        db.close()
    assert req is not None
    doc = {"verb": args.verb, "operator": operator, "reason": args.reason.strip(), "applied": req.applied is not None,
           "result": None if req.result is None else str(req.result)}
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif req.applied is None:
        print(f"{args.verb} queued; the reconciler has not applied it within {args.wait:g}s (is it running?)")
    else:
        print(f"{args.verb} by {operator}: {req.result}")
    if req.applied is None or (req.result is not None and req.result.refused):
        return 1
    return 0


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def render_text(doc: Mapping[str, Any]) -> str:
    """The human view of a rollout status document (reconciler.rollout.controller)."""
    lines = []
    target, stable = doc.get("target"), doc.get("stable")
    head = f"{doc.get('state')}"
    if target is not None:
        head += f": v{target}" + (f" (stable v{stable})" if stable is not None and stable != target else "")
    if doc.get("started"):
        head += f", started {doc['started']}"
    lines.append(f"rollout   {head}")
    cls = doc.get("classification")
    if cls:
        fast = "fast-tracked to every stage" if cls.get("fastTracked") else "stage by stage"
        lines.append(f"change    {cls.get('kind')}, {fast}")
        for r in cls.get("reasons") or []:
            lines.append(f"            {r}")
    if doc.get("haltReason"):
        lines.append(f"HALTED    {doc['haltReason']}")
    if doc.get("abortReason"):
        lines.append(f"ABORTED   {doc['abortReason']}")
    if doc.get("reason") and not str(doc["reason"]).startswith(("halted:", "aborted:")):
        lines.append(f"reason    {doc['reason']}")
    stages = doc.get("stages") or []
    if stages:
        rows = [("STAGE", "PINNED", "AGENTS", "REPORTING", "AT PIN", "BAKE LEFT", "STATE", "GATES")]
        for s in stages:
            bake = s.get("bakeLeftSeconds")
            gates = ", ".join(_gate(g) for g in s.get("gates") or []) or "-"
            rows.append((str(s.get("name")), f"v{s['pinned']}" if s.get("pinned") is not None else "-",
                         str(s.get("agents")), str(s.get("reporting")), str(s.get("atPinned")),
                         "-" if bake is None else f"{bake}s", str(s.get("state") or ""), gates))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines.append("")
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return "\n".join(lines)


def _gate(g: Mapping[str, Any]) -> str:
    name = str(g.get("gate"))
    value, limit = g.get("value"), g.get("limit")
    if name.startswith("min"):
        text = f"{name} {float(value or 0):.2f}>={float(limit or 0):.2f}"
    else:
        text = f"{name} {_num(value)}<={_num(limit)}"
    return text + ("" if g.get("ok") else " FAILED")


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, int | float) else str(v)

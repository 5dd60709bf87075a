"""`palisade-agent status`: what this node enforces and why, and what keeps it from being up to date.

Reads `<state>/status.json`, written by the running agent after every apply:
the bundle version, its commit, author and approvers, the stage, and for every
selected policy its origin (pack or rule), scope, state, and whether it is
loaded or why it was refused. Then the agent's health: `degraded` while its
state directory cannot be written (disk), a transfer fails or stalls past its
deadline (transfer), or the index it holds has expired (index_expired) — it
keeps enforcing the last verified bundle meanwhile — and the last index or
bundle it refused, with the reason and the time.

While the state directory refuses writes, the agent writes its status to a
runtime copy (/run/palisade-agent, or $PALISADE_RUNTIME_DIR); the newer of the
two is shown.

Exit codes: 0 every selected policy is loaded and the agent is not degraded;
1 some are refused or the agent is degraded; 2 no status yet.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any

from agent.cli import add_output
from agent.errors import AgentError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="what this node enforces and why", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", type=Path, required=True, help="the agent's state directory")
    add_output(p)
    p.set_defaults(func=_status)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise AgentError(f"{path}: {e}") from None
    if not isinstance(doc, dict):
        raise AgentError(f"{path}: not a status document")
    return doc


def _load(state: Path) -> dict[str, Any]:
    from agent.runner import STATUS_FILE, runtime_status_path

    docs = [d for d in (_read(state / STATUS_FILE), _read(runtime_status_path(state))) if d is not None]
    if not docs:
        raise AgentError(f"no status in {state} (has `palisade-agent run` started there?)")
    return max(docs, key=lambda d: float(d.get("updated") or 0))


def _clock_expired(doc: dict[str, Any]) -> str | None:
    """The index's expiry by this clock, when the agent has not said so itself (stopped, or stuck)."""
    expires = doc.get("indexExpires")
    health = doc.get("health") or {}
    if not expires or any(p.get("kind") == "index_expired" for p in health.get("problems", [])):
        return None
    try:
        t = _dt.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC)
    except ValueError:
        return None
    return expires if t <= _dt.datetime.now(_dt.UTC) else None


def _status(args: argparse.Namespace) -> int:
    doc = _load(args.state)
    refused = [p for p in doc.get("policies", []) if p.get("status") != "loaded"]
    health = doc.get("health") or {"state": "ok", "problems": [], "lastRefusal": None}
    expired = _clock_expired(doc)
    degraded = health.get("state") == "degraded" or expired is not None
    code = 1 if refused or degraded else 0
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
        return code
    if doc.get("version") is None:
        print(f"sensor {doc.get('sensor')}: enforcing nothing yet")
    else:
        approvers = ", ".join(doc.get("approvers") or []) or "none"
        print(f"sensor {doc['sensor']}  stage {doc.get('stage')}  bundle v{doc['version']}  "
              f"commit {str(doc.get('commit'))[:12]}  by {doc.get('author')}  approved by {approvers}")
    rows = [("POLICY", "ORIGIN", "SCOPE", "STATE", "STATUS")]
    for p in doc.get("policies", []):
        origin = f"{p['origin']['kind']}/{p['origin']['name']}"
        status = "loaded" if p["status"] == "loaded" else f"{p['status']}: {p.get('reason')}"
        rows.append((p["name"], origin, p["scope"], p["mode"], status))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    print(f"health: {'degraded' if degraded else 'ok'}")
    for p in health.get("problems", []):
        print(f"  {p['kind']} ({p['reason']}) since {p['since']}, {p['count']}x, last {p['last']}: {p['detail']}")
    if expired is not None:
        print(f"  index_expired (by this clock) at {expired}: the agent has not reported it; is it running?")
    age = time.time() - float(doc.get("updated") or 0)
    if age > 120:
        print(f"  status written {age:.0f}s ago")
    last = health.get("lastRefusal")
    if last:
        print(f"last refused: {last['what']} at {last['time']} ({last['reason']}): {last['detail']}")
    counts = doc.get("refusals") or {}
    if counts:
        print("refusals: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if doc.get("lastError"):
        print(f"last error: {doc['lastError']}")
    return code

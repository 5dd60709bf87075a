"""`palisade-agent status`: what this node enforces and why.

Reads `<state>/status.json`, written by the running agent after every apply:
the bundle version, its commit, author and approvers, the stage, and for every
selected policy its origin (pack or rule), scope, state, and whether it is
loaded or why it was refused.

Exit codes: 0 every selected policy is loaded; 1 some are refused; 2 no status yet.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import add_output
from .errors import AgentError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="what this node enforces and why", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", type=Path, required=True, help="the agent's state directory")
    add_output(p)
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    from .runner import STATUS_FILE

    path = args.state / STATUS_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise AgentError(f"no status in {args.state} (has `palisade-agent run` started there?)") from None
    except (OSError, ValueError) as e:
        raise AgentError(f"{path}: {e}") from None
    refused = [p for p in doc.get("policies", []) if p.get("status") != "loaded"]
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 1 if refused else 0
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
    if doc.get("lastError"):
        print(f"last error: {doc['lastError']}")
    return 1 if refused else 0

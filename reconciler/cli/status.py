"""`palisade status`: what the reconciler last accepted and rejected, and what it serves.

Reads a state directory (beside a running reconciler: it takes no lock and
changes nothing) or asks a running `palisade serve` over HTTP.

Exit codes: 0 healthy, 1 needs attention (history rewrite refused, the last pass
failed, or the index has expired), 2 the state or the server cannot be read.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.errors import StateError, UsageError

from . import add_output

#: The status of a server is small; anything larger is not a palisade server.
_MAX_STATUS_BYTES = 4 * 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="show the reconcile status (last accepted/rejected commit, served index)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--state", type=Path, help="state directory of a reconciler")
    where.add_argument("--server", metavar="URL", help="base URL of a running `palisade serve`, e.g. http://127.0.0.1:8740")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for --server (default: 10)")
    add_output(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    doc = from_server(args.server, args.timeout) if args.server else from_state(args.state)
    doc["fleet"] = _fleet(args)
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_text(doc))
    return 1 if attention(doc) else 0


def _fleet(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each sensor that reported: its version, stage, health and when it was last seen."""
    from reconciler.state.statedir import StateView

    from ._fleetsource import FleetSource

    if args.state is not None and not StateView(args.state).has_fleet():
        return []  # no agent has reported yet
    source = FleetSource(args.server, args.state, args.timeout)
    try:
        agents = source.agents()
    finally:
        source.close()
    now = _dt.datetime.now(_dt.UTC)
    return [
        {"id": a.id, "version": a.version, "stage": a.stage, "health": a.condition(now),
         "lastSeen": a.last_seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
         "refused": a.refused}
        for a in agents
    ]


def from_state(state: Path) -> dict[str, Any]:
    """The status document from a state directory alone (read-only)."""
    from reconciler.errors import VerificationError
    from reconciler.publish.reconcile import status
    from reconciler.rollout.status import read_status
    from reconciler.state.ledger import Ledger
    from reconciler.state.statedir import StateView
    from reconciler.state.store import Store

    view = StateView(state)
    store = Store(view.store.root)  # no key: a reader, it creates and tidies nothing
    try:
        with Ledger.open(view, readonly=True) as ledger:
            doc = status(ledger, store)
    except VerificationError as e:
        raise StateError(f"{store.index_path}: {e}") from None
    if view.has_rollouts():
        doc["rollout"] = read_status(view)
    return doc


def from_server(url: str, timeout: float) -> dict[str, Any]:
    """The status document of a running server."""
    import httpx

    from ._token import HINT, auth_headers

    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--server {url!r}: expected an http:// or https:// URL")
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            resp = client.get(f"{base}/v1/status", headers={"Accept": "application/json", **auth_headers()})
    except httpx.HTTPError as e:
        raise StateError(f"cannot reach {base}: {e}") from None
    if resp.status_code == 401:
        raise StateError(f"{base}/v1/status answered 401: {HINT}")
    if resp.status_code != 200:
        raise StateError(f"{base}/v1/status answered {resp.status_code}: {resp.text[:200]}")
    if len(resp.content) > _MAX_STATUS_BYTES:
        raise StateError(f"{base}/v1/status answered {len(resp.content)} bytes; not a palisade server?")
    try:
        doc = resp.json()
    except ValueError:
        raise StateError(f"{base}/v1/status did not answer JSON; not a palisade server?") from None
    if not isinstance(doc, dict):
        raise StateError(f"{base}/v1/status did not answer a JSON object; not a palisade server?")
    return doc


def attention(doc: Mapping[str, Any], now: _dt.datetime | None = None) -> bool:
    """True when an operator should look: rewrite refused, last pass failed, or index expired."""
    if doc.get("refused") or doc.get("lastError"):
        return True
    if (doc.get("rollout") or {}).get("state") in ("halted", "aborted"):
        return True
    expires = _time(doc.get("indexExpires"))
    return expires is not None and expires <= (now or _dt.datetime.now(_dt.UTC))


def render_text(doc: Mapping[str, Any], now: _dt.datetime | None = None) -> str:
    """The human table."""
    now = now or _dt.datetime.now(_dt.UTC)
    rows: list[tuple[str, str]] = []
    if doc.get("source"):
        rows.append(("source", f"{doc['source']} (branch {doc.get('branch') or '?'})"))
    if doc.get("version") is None:
        rows.append(("version", "nothing published yet"))
    else:
        rows.append(("version", f"v{doc['version']}"))
        expires = _time(doc.get("indexExpires"))
        when = "?" if expires is None else f"{doc['indexExpires']} ({_relative(expires, now)})"
        rows.append(("index", f"serial {doc.get('serial')}, expires {when}"))
        stages = doc.get("stages") or {}
        if stages:
            rows.append(("stages", ", ".join(f"{k}=v{v}" for k, v in sorted(stages.items()))))
    rollout = doc.get("rollout") or {}
    if rollout.get("target") is not None:
        line = f"{rollout.get('state')} v{rollout['target']}"
        if rollout.get("stable") not in (None, rollout["target"]):
            line += f" (stable v{rollout['stable']})"
        if rollout.get("reason"):
            line += f": {rollout['reason']}"
        rows.append(("rollout", line))
    if doc.get("role"):  # only a server knows its role (`palisade serve --leader-elect`)
        line = str(doc["role"])
        if doc.get("roleSince"):
            line += f" since {doc['roleSince']}"
        leader = doc.get("leader") or {}
        if leader.get("pid") is not None:
            line += f" (the leader is pid {leader['pid']})"
        rows.append(("role", line))
    rows.append(("last run", doc.get("lastRun") or "-"))
    rows.append(("last accepted", _entry(doc.get("lastAccepted"))))
    rows.append(("last rejected", _entry(doc.get("lastRejected"))))
    if doc.get("refused"):
        rows.append(("REFUSED", str(doc["refused"])))
    if doc.get("lastError"):
        rows.append(("LAST ERROR", str(doc["lastError"])))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    rejected = doc.get("lastRejected") or {}
    for f in rejected.get("findings") or []:
        lines.append(f"{' ' * width}    {f.get('file')}:{f.get('line')}:{f.get('column')}: "
                     f"{f.get('severity')}[{f.get('code')}]: {f.get('message')}")
    fleet = doc.get("fleet") or []
    if fleet:
        table = [("SENSOR", "VERSION", "STAGE", "HEALTH", "LAST SEEN")]
        for a in fleet:
            seen = _time(a.get("lastSeen"))
            health = str(a.get("health"))
            if a.get("refused"):
                health += f" ({a['refused']} refused)"
            table.append((str(a.get("id")), f"v{a['version']}" if a.get("version") else "-",
                          str(a.get("stage") or "-"), health,
                          f"{_span(max(0, int((now - seen).total_seconds())))} ago" if seen else "-"))
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines.append("")
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join(lines)


def _entry(e: Mapping[str, Any] | None) -> str:
    if not e:
        return "none"
    parts = [str(e.get("commit", ""))[:12]]
    if e.get("version") is not None:
        parts.append(f"v{e['version']}")
    parts.append(f"by {e.get('author')}")
    if e.get("processed"):
        parts.append(f"processed {e['processed']}")
    if e.get("result") == "rejected":
        parts.append(f"{len(e.get('findings') or [])} finding(s)")
    return "  ".join(parts)


def _time(text: Any) -> _dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


def _relative(t: _dt.datetime, now: _dt.datetime) -> str:
    secs = int((t - now).total_seconds())
    if secs <= 0:
        return f"EXPIRED {_span(-secs)} ago"
    return f"in {_span(secs)}"


def _span(secs: int) -> str:
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"

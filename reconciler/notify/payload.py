"""The body a target receives for a notification, by the target's kind.

generic: the notification itself as JSON — {id, kind, severity, summary, details, links, time}.
slack:   a Slack incoming-webhook message — `text` (the fallback shown in notifications) and
         `blocks` (a header, the summary, the details as fields, links as buttons' text); Mattermost,
         Rocket.Chat and Teams' Slack-compatible endpoints read the same shape.
Both carry the id (slack: in a context block), so a person or a receiver can match repeats.
"""
from __future__ import annotations

import json
from typing import Any

from reconciler.notify.config import TargetKind
from reconciler.notify.events import EventKind, Notification, Severity

__all__ = ["body"]

_ICON = {Severity.WARNING: ":warning:", Severity.ERROR: ":x:", Severity.CRITICAL: ":rotating_light:"}
_TITLE = {
    EventKind.COMMIT_REJECTED: "Commit rejected",
    EventKind.ROLLOUT_HALTED: "Rollout halted",
    EventKind.ROLLOUT_ROLLED_BACK: "Rollout rolled back",
    EventKind.DRIFT_UNHEALED: "Unhealed drift",
    EventKind.POLICY_REFUSED: "Policy refused on a node",
    EventKind.AGENT_STALE: "Agent stale",
}
_SLACK_TEXT = 3000  # Slack's limit for a section's text


def body(kind: TargetKind, n: Notification) -> bytes:
    doc = n.to_json() if kind is TargetKind.GENERIC else _slack(n)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _slack(n: Notification) -> dict[str, Any]:
    title = f"{_ICON[n.severity]} {_TITLE[n.kind]}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _TITLE[n.kind]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(_escape(n.summary))}},
    ]
    fields = [{"type": "mrkdwn", "text": _cut(f"*{k}*\n{_escape(_short(v))}", 2000)}
              for k, v in n.details.items() if k not in ("findings",) and v not in (None, "", [], {})][:10]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    findings = n.details.get("findings")
    if n.kind is EventKind.COMMIT_REJECTED and findings:
        lines = [f"• `{f['file']}:{f['line']}` {f['severity']}[{f['code']}]: {_escape(f['message'])}"
                 for f in findings]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut("\n".join(lines))}})
    if n.links:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": " · ".join(f"<{u}|{_escape(t)}>" for t, u in n.links)}})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"{n.severity} · {n.kind} · id `{n.id}` · {n.to_json()['time']}"}]})
    return {"text": f"{title}: {_escape(n.summary)}", "blocks": blocks}


def _short(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _escape(text: str) -> str:
    # Slack's mrkdwn reads these three as markup (links, mentions)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int = _SLACK_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

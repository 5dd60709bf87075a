"""A plan as a pull-request comment (`palisade plan -o markdown`), as pure rendering.

GitHub and GitLab render the comment as Markdown with HTML allowed, so every
string that comes from the repository (policy, pack, rule and group names,
finding messages, commit subjects, diffs) goes through one of three escapes:
inline code (`_code`, names), escaped text (`_text`, prose), or a fenced
block longer than any backtick run inside (`_fence`, diffs). None of them
can close a `<details>`, open a tag or start a link. The first line is a
marker (`MARKER`) so that CI can find and replace its previous comment.
"""
from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.checks.plan import Change, Plan, PolicyChange, SensorChange, UnitChange
from reconciler.findings import Finding, Severity
from reconciler.repository.model import RepositoryConfig

MARKER = "<!-- palisade-plan -->"
#: GitHub refuses comments over 65536 characters (GitLab notes take 1,000,000)
LIMIT = 65_000
#: diffs past this budget are left to `palisade plan`
DIFF_BUDGET = 40_000

_SIGN = {Change.ADDED: "+", Change.REMOVED: "-", Change.CHANGED: "~", Change.STATE: "~"}
# Markdown punctuation that could start emphasis, a link, an image, a code span, a table cell or an
# autolink; backslash-escaped in prose (CommonMark escapes any ASCII punctuation this way)
_MD = re.compile(r"([\\`*_{}\[\]()#+!|~])")


@dataclass(frozen=True)
class Context:
    """What the plan was made from, beside the plan itself."""

    base: str  # the base's label, as the text plan prints it
    head: str
    findings: tuple[Finding, ...] = ()  # history checks of the change (approvals, window, ladder)
    config: RepositoryConfig | None = None  # the head's palisade.yaml: who approves, how many
    commits: tuple[str, ...] = ()  # subjects of the commits base..head, oldest first
    sensors: tuple[SensorChange, ...] | None = None  # None: no fleet view asked for
    notes: tuple[str, ...] = ()


def render(plan: Plan, ctx: Context) -> str:
    """The comment; within LIMIT characters (without diffs, then cut short, when the change is that large)."""
    text = _render(plan, ctx, DIFF_BUDGET)
    if len(text) > LIMIT:
        text = _render(plan, ctx, 0)
    if len(text) > LIMIT:
        cut = text.rfind("\n", 0, LIMIT - 200)
        tail = "</details>\n" if text.count("<details>", 0, cut) > text.count("</details>", 0, cut) else ""
        text = text[:cut] + "\n" + tail + "\n…cut short to fit the forge's comment limit: run `palisade plan`.\n"
    return text


def _render(plan: Plan, ctx: Context, budget: int) -> str:
    out = [MARKER, "### Palisade plan", ""]
    out.append(f"{_text(ctx.base)} → {_text(ctx.head)}")
    out.append("")
    if not plan.changed:
        out.append("**No changes**: nodes would enforce exactly what they enforce now.")
        out.extend(_notes((*plan.notes, *ctx.notes)))
        return "\n".join(out) + "\n"
    out.append(_summary(plan))
    out.append("")
    reasons = plan.classification.reasons
    out.append(f"This change is **{plan.classification.label}**: " + "; ".join(_text(r) for r in reasons[:5])
               + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""))
    out += _moves(plan.units)
    out += _approvals(plan, ctx)
    out += ["", "#### Rollout", "", *_rollout(plan)]
    if ctx.sensors is not None:
        out += _sensors(ctx.sensors)
    out += _diffs(plan.units, budget)
    if ctx.commits:
        out += ["", "#### Commits", ""] + [f"- {_text(c)}" for c in ctx.commits]
    out.extend(_notes((*plan.notes, *ctx.notes)))
    return "\n".join(out) + "\n"


def _summary(plan: Plan) -> str:
    relaxing = sum(u.relaxing for u in plan.units)
    tightening = len(plan.units) - relaxing
    c = plan.counts()
    policies = ", ".join(f"{n} {what}" for what, n in (("added", c["added"]), ("removed", c["removed"]),
                                                       ("changed", c["changed"]), ("state only", c["state"])) if n)
    return (f"**{plan.classification.label.upper()}** · {tightening} unit(s) tightening · {relaxing} relaxing · "
            f"{plan.unchanged} unchanged" + (f" · policies: {policies}" if policies else ""))


def _unit(u: UnitChange) -> str:
    return f"{u.unit.kind} {_code(u.unit.name)} @ {_code(u.unit.scope.key)}"


def _moves(units: Sequence[UnitChange]) -> list[str]:
    moved = [u for u in units if u.move.before != u.move.after]
    if not moved:
        return []
    out = ["", "#### Ladder moves", ""]
    for u in moved:
        m = u.move
        before = m.before.value if m.before else "absent"
        after = m.after.value if m.after else "absent"
        what = "rule disabled" if u.disabled else m.kind.value
        verdict = "relaxing" if u.relaxing else "tightening"
        out.append(f"- {_unit(u)}: `{before}` → `{after}` ({what}, {verdict})")
    return out


def _approvals(plan: Plan, ctx: Context) -> list[str]:
    out = ["", "#### Approvals", ""]
    pending = [f for f in ctx.findings if f.code == "approval-pending"]
    problems = [f for f in ctx.findings if f.code != "approval-pending"]
    for f in pending:
        out.append(f"- ⏳ **needs approval** ({_code(f.file)}:{f.line}): {_text(f.message)}")
    for f in problems:
        mark = "❌" if f.severity is Severity.ERROR else "⚠️"
        out.append(f"- {mark} **{f.severity}** `{f.code}` ({_code(f.file)}:{f.line}): {_text(f.message)}")
    if any(f.severity is Severity.ERROR for f in problems):
        out.append("")
        out.append("The errors above would make the reconciler **reject** the merge.")
    forward = any(u.move.kind.value == "forward" for u in plan.units)
    if not ctx.findings:
        out.append("- none needed" + ("" if forward else " (no forward steps)"))
    cfg = ctx.config
    if cfg is not None and (forward or pending):
        who = ", ".join(_text(f"{r.name} <{r.email}>") for r in cfg.reviewers) or "nobody (no reviewers listed)"
        out.append("")
        out.append(f"Approval takes {cfg.approvals_required} reviewer signature(s) from: {who}; "
                   "a reviewer cannot approve a change they wrote.")
    return out


def _rollout(plan: Plan) -> list[str]:
    s = plan.stages
    if s.rollout is None or not s.stages:
        return ["No staging file: every sensor receives the change at once."]
    if s.fast_tracked:
        return [f"Fast-tracked to every stage at once ({', '.join(_code(x) for x in s.stages)}): the change "
                f"relaxes and rollout {_code(s.rollout)} has `fastTrack: true`."]
    out = [f"{i}. {_code(name)} (bake {_text(bake)})" for i, (name, bake) in
           enumerate(zip(s.stages, s.bakes, strict=True), 1)]
    return [*out, "", f"Rollout {_code(s.rollout)}; each stage bakes before the next receives the change."]


def _sensors(sensors: Sequence[SensorChange]) -> list[str]:
    out = ["", "#### Sensors", ""]
    if not sensors:
        return [*out, "None of the known sensors is affected."]
    for s in sensors:
        stage = f" (stage {_code(s.stage)})" if s.stage else ""
        out.append(f"- {_code(s.sensor.id)}{stage}: " + "; ".join(_text(p.describe()) for p in s.policies))
    return out


def _diffs(units: Sequence[UnitChange], budget: int) -> list[str]:
    out = ["", "#### Policies", ""]
    spent = 0
    shown: set[str] = set()
    for u in units:
        for p in u.policies:
            head = f"{_SIGN[p.change]} {p.name} @ {u.unit.scope.key} ({u.unit.kind} {u.unit.name}): " \
                   f"{p.change.value}{_states(p)}"
            if not p.diff or p.diff in shown:
                note = " (same diff as above)" if p.diff else ""
                out.append(f"- {_code(head)}{note}")
                continue
            shown.add(p.diff)
            out.append("<details>")
            out.append(f"<summary><code>{html.escape(head)}</code></summary>")
            out.append("")
            if spent + len(p.diff) > budget:
                out.append("Diff left out to keep the comment within the forge's size limit; "
                           "run `palisade plan` to see it.")
            else:
                spent += len(p.diff)
                out.append(_fence(p.diff, "diff"))
            out.append("")
            out.append("</details>")
            out.append("")
    return out


def _states(p: PolicyChange) -> str:
    if p.before is None and p.after is not None:
        return f" at {p.after.value}"
    if p.after is None and p.before is not None:
        return f" (was {p.before.value})"
    if p.before is not None and p.after is not None and p.before != p.after:
        return f", {p.before.value} → {p.after.value}"
    return ""


def _notes(notes: Sequence[str]) -> list[str]:
    if not notes:
        return []
    return ["", "#### Notes", ""] + [f"- {_text(n)}" for n in notes]


# --- escaping ------------------------------------------------------------------------------------


def _text(s: str) -> str:
    """Prose from the repository, inert: one line, HTML as entities, Markdown punctuation escaped, and
    '@' as an entity so that a name cannot mention (and notify) a user or team."""
    one = " ".join(s.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD.sub(r"\\\1", one).replace("@", "&#64;")


def _code(s: str) -> str:
    """A name as an inline code span: its content is never Markdown or HTML (nor a mention). The
    delimiter is one backtick longer than the longest run inside."""
    one = " ".join(s.split())
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", one)), default=0) + 1)
    pad = " " if one.startswith("`") or one.endswith("`") or not one.strip() else ""
    return f"{ticks}{pad}{one}{pad}{ticks}"


def _fence(body: str, info: str) -> str:
    """A fenced code block that no line of `body` can close."""
    longest = max((len(m) for m in re.findall(r"`{3,}", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{body.rstrip(chr(10))}\n{ticks}"

"""`palisade advance` and `palisade revert`: one ladder move, as a commit on a new branch ready for review.

  palisade advance pack/web-lockdown --scope group:web
  palisade revert no-ptrace-attach --scope group:web --dry-run

UNIT is pack/NAME, rule/NAME, or a bare NAME when only a pack or only a rule has
it. SCOPE is fleet, group:NAME or sensor:ID. `advance` moves exactly one step
forward (observe → enforce_ready → enforced); `revert` moves back, to observe
unless --to says enforce_ready, and needs no approval.

The move is read from --from (default HEAD) and written to the enforcement or
rule file with every other byte unchanged; the commit goes on a new branch
(default palisade/<advance|revert>-<unit>-<scope>-<state>) made without touching
the work tree or the checked-out branch. The branch name is printed on stdout,
so `git push origin "$(palisade advance ...)"` works. --dry-run prints the diff.

Exit codes: 0 done (or dry run), 1 move refused (the reason is printed),
2 usage, repository or git error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.repository.model import PolicyRepository, UnitKey
    from wire.values import Scope, State


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for action, help_text in (
        ("advance", "move a pack or rule one ladder step forward at a scope (commits on a new branch)"),
        ("revert", "move a pack or rule back on the ladder at a scope (commits on a new branch)"),
    ):
        p = sub.add_parser(action, help=help_text, description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("unit", metavar="UNIT", help="pack/NAME, rule/NAME or NAME")
        p.add_argument("--scope", required=True, help="fleet, group:NAME or sensor:ID")
        p.add_argument("--repo", type=Path, default=Path("."), help="policy repository (default: .)")
        p.add_argument("--from", dest="start", default="HEAD", metavar="REV",
                       help="the revision to start from (default: HEAD)")
        p.add_argument("--dry-run", action="store_true", help="print the diff; change nothing")
        p.add_argument("--branch", help="name of the new branch (default: palisade/<action>-<unit>-<scope>-<state>)")
        p.add_argument("--message", help="commit message (default: states the move and what it needs)")
        if action == "revert":
            p.add_argument("--to", choices=("observe", "enforce_ready"), default="observe",
                           help="the state to go back to (default: observe)")
        else:
            p.add_argument("--to", choices=("enforce_ready", "enforced"),
                           help="the state you expect to reach; refused unless it is the next step")
        p.set_defaults(func=run, action=action)


def run(args: argparse.Namespace) -> int:
    from reconciler.checks import plan
    from reconciler.errors import UsageError
    from reconciler.findings import has_errors, render_text
    from reconciler.repository import edit, loader, source
    from reconciler.repository.git import Git
    from reconciler.repository.model import UnitKey
    from wire.values import Scope, State

    from ._gitwork import changed_paths, commit_files, create_branch, require_repo

    repo: Path = args.repo
    require_repo(repo)
    try:
        scope = Scope.parse(args.scope)
    except ValueError as e:
        raise UsageError(str(e)) from None
    start = source.resolve(repo, args.start)
    loaded = loader.load(source.from_git(repo, start))
    if has_errors(loaded.findings):
        print(render_text(loaded.findings), file=sys.stderr)
        print(f"palisade {args.action}: {args.start} does not load; fix it first", file=sys.stderr)
        return 2
    model = loaded.repository
    kind, name = edit.resolve(args.unit, model)
    unit = UnitKey(kind, name, scope)
    units = model.units()
    if unit not in units:
        raise edit.Refusal(_missing(model, unit, args.action))
    current = units[unit]
    try:
        target = edit.step(current, args.action, State(args.to) if args.to else None)
    except edit.Refusal as e:
        raise edit.Refusal(f"{unit}: {e}") from None
    path = _file_of(model, unit)
    before = Git(repo).blob(start, path).decode("utf-8")
    after = edit.set_state(before, kind=kind, name=name, scope=scope, state=target)

    move = f"{args.action} {kind} {name} @ {scope.key}: {current.value} → {target.value}"
    notes = _needs(repo, model, unit, current, target, start, args.action)
    if changed_paths(repo, [path]):
        print(f"palisade {args.action}: note: {path} has uncommitted changes; they are not part of this move "
              f"(it starts from {args.start}) and stay in your work tree", file=sys.stderr)
    if args.dry_run:
        sys.stdout.write(plan.unified(before, after, path))
        print(f"palisade {args.action} (dry run): {move}", file=sys.stderr)
        for n in notes:
            print(f"  {n}", file=sys.stderr)
        return 0
    message = args.message or _message(move, notes)
    branch = args.branch or _branch_name(args.action, name, scope, target)
    commit = commit_files(repo, start, {path: after.encode("utf-8")}, message)
    create_branch(repo, branch, commit)
    print(branch)
    print(f"palisade {args.action}: {move}\n  committed {commit[:12]} on the new branch {branch} "
          f"(edits {path}); your checkout is unchanged", file=sys.stderr)
    for n in notes:
        print(f"  {n}", file=sys.stderr)
    print(f"  next: git push -u origin {branch}, and open a pull request", file=sys.stderr)
    return 0


def _missing(model: PolicyRepository, unit: UnitKey, action: str) -> str:
    """Why the unit is not on the ladder at that scope, and how to put it there."""
    from reconciler.repository.edit import flow_scope

    if unit.kind == "rule":
        rule = next(r for r in model.rules if r.name == unit.name)
        if not rule.enabled:
            return (f"rule {unit.name} is disabled (enabled: false in {rule.path}), so it is off the ladder; "
                    "enabling it again is an edit of its own (it must be at observe when re-enabled)")
        return (f"rule {unit.name} applies at {rule.scope.key}, not {unit.scope.key}: a rule has one scope "
                f"(spec.scope in {rule.path}); for another scope, write another rule (it starts at observe)")
    have = sorted((u.scope.key, s.value) for u, s in model.units().items()
                  if u.kind == "pack" and u.name == unit.name)
    where = next((e.path for e in model.enforcements if e.pack == unit.name), f"enforcement/{unit.name}.yaml")
    has = ", ".join(f"{k} ({s})" for k, s in have) or "no assignments at all"
    nothing = "nothing to revert" if action == "revert" else \
        "advance moves existing assignments, it does not create them"
    return (f"pack {unit.name} has no assignment at {unit.scope.key} (it has: {has}); {nothing}. "
            f"A new assignment starts at observe: add to {where}:\n"
            f"    - scope: {flow_scope(unit.scope)}\n      state: observe")


def _file_of(model: PolicyRepository, unit: UnitKey) -> str:
    if unit.kind == "rule":
        return next(r.path for r in model.rules if r.name == unit.name and r.scope == unit.scope and r.enabled)
    return next(e.path for e in model.enforcements
                if e.pack == unit.name and any(a.scope == unit.scope for a in e.assignments))


def _needs(repo: Path, model: PolicyRepository, unit: UnitKey, current: State, target: State, start: str,
           action: str) -> list[str]:
    """What the move needs before the reconciler accepts it: approval and the observation window."""
    from reconciler.checks import history
    from reconciler.repository.model import format_duration

    from ._gitwork import try_git

    if action == "revert":
        return ["Moving back needs no approval; a change that only relaxes may be fast-tracked to every stage."]
    cfg = model.config
    me = _email(try_git(repo, "var", "GIT_AUTHOR_IDENT") or "")
    reviewers = [r for r in (cfg.reviewers if cfg else ()) if r.email.strip().lower() != me]
    required = cfg.approvals_required if cfg else 1
    signs = try_git(repo, "config", "--bool", "commit.gpgSign") == "true"
    if not signs and required < 2:
        # an unsigned commit proves nothing about who wrote it (README, "Governance rules")
        required = 2
    who = ", ".join(f"{r.name} <{r.email}>" for r in reviewers) or "nobody (no other reviewer is listed)"
    if required > 1:
        if not signs:
            who += ("; this commit is unsigned, so its author is not proven: set commit.gpgSign with a key "
                    "listed in palisade.yaml and one reviewer suffices")
        out = [f"Needs {required} approvals by reviewers who did not author it: a signed merge plus signed "
               f"empty approval commits, from {who}."]
    else:
        out = [f"Needs a signed merge by a reviewer who did not author this change: {who}."]
    if cfg is not None:
        entered = history.entered_at(repo, start, {unit: current}).get(unit)
        if entered is not None:
            ready = entered + cfg.min_observation
            now = _dt.datetime.now(_dt.UTC)
            stamp = ready.strftime("%Y-%m-%d %H:%M UTC")
            if now < ready:
                out.append(f"WARNING: the observation window has not passed: {unit} entered {current.value} at "
                           f"{entered.strftime('%Y-%m-%d %H:%M UTC')}, the window is "
                           f"{format_duration(cfg.min_observation)}; merge on or after {stamp} "
                           f"(in {_human(ready - now)}), earlier merges are rejected.")
            else:
                out.append(f"Observation window ({format_duration(cfg.min_observation)}) passed at {stamp}.")
    return out


def _email(ident: str) -> str:
    m = re.search(r"<([^>]*)>", ident)
    return m.group(1).strip().lower() if m else ""


def _human(d: _dt.timedelta) -> str:
    secs = max(int(d.total_seconds()), 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return " ".join(parts[:2]) or "under a minute"


def _message(move: str, notes: list[str]) -> str:
    body = "\n".join(n.removeprefix("WARNING: ") for n in notes)
    return f"{move}\n\n{body}\n"


def _branch_name(action: str, name: str, scope: Scope, target: State) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}-{scope.key.replace(':', '-')}").strip("-.")
    return f"palisade/{action}-{slug}-{target.value}"

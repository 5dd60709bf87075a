"""`palisade generate`: an exec allowlist for one workload, from what it was observed to run.

  palisade generate --workload xwing --events ../shared/tetragon-corpus/events/
  palisade generate --workload web --server http://127.0.0.1:8740 --since 24h --scope group:web
  palisade generate --workload web --state /var/lib/palisade --selector app=web --branch allowlist-web

Writes, into the policy repository, packs/<name>/pack.yaml, packs/<name>/exec-allowlist.yaml
(a TracingPolicy: sched_process_exec, matchBinaries NotIn <observed binaries>, Sigkill,
scoped to the workload) and enforcement/<name>.yaml assigning it at `observe` — or, with
--branch, commits them on a new branch without touching the work tree. Binaries seen only
under a package manager or a shell during the workload's startup are listed for review
and NOT allowed; add the ones it needs with --allow. Next: open a pull request,
`palisade validate`, then watch `palisade readiness` and `palisade impact`.

Exit codes: 0 files written, 2 usage, input or repository error (nothing written).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

from . import add_output
from ._fleetsource import FleetSource, Query, parse_when


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("generate", help="write an exec allowlist pack for a workload from observed execs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", required=True, help="the workload (Tetragon's pod.workload, or the pod name)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", type=Path, metavar="PATH",
                     help="Tetragon JSON events: a file (JSON lines or one document) or a directory of them")
    src.add_argument("--server", metavar="URL", help="the fleet's observations from a running `palisade serve`")
    src.add_argument("--state", metavar="DIR", type=Path, help="the fleet's observations from the state directory")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for --server (default: 10)")
    p.add_argument("--since", default=None, help="fleet only: observations since (default: 24h; or an RFC 3339 time)")
    p.add_argument("--repo", type=Path, default=Path("."), help="policy repository (default: .)")
    p.add_argument("--name", help="pack name (default: <workload>-allowlist)")
    p.add_argument("--scope", default="fleet",
                   help="where to assign it: fleet, group:NAME or sensor:ID (default: fleet)")
    p.add_argument("--selector", help="the workload's labels, KEY=VALUE,... (default: from the events' pod labels)")
    p.add_argument("--namespace", help="make a namespaced policy in this namespace (default: from the events)")
    p.add_argument("--owner", action="append", help="pack owner (repeatable; default: the git user's e-mail)")
    p.add_argument("--allow", action="append", default=[], metavar="PATH",
                   help="also allow this binary (e.g. one held for review); repeatable")
    p.add_argument("--startup", default="60s", help="the startup window for the review rule (default: 60s)")
    p.add_argument("--branch", help="commit the files on this new branch instead of writing the work tree")
    p.add_argument("--force", action="store_true", help="overwrite existing files of the same name")
    p.add_argument("--dry-run", action="store_true", help="print the files, write nothing")
    add_output(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.analysis import generate
    from reconciler.errors import PalisadeError, SourceError, UsageError
    from reconciler.repository.model import parse_duration
    from wire.values import Scope

    now = _dt.datetime.now(_dt.UTC)
    try:
        scope = Scope.parse(args.scope)
        startup = parse_duration(args.startup)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.since is not None and args.events is not None:
        raise UsageError("--since applies to --server/--state; an events file is used whole (filter it with jq)")
    labels = _labels(args.selector) if args.selector else None
    for b in args.allow:
        if not b.startswith("/"):
            raise UsageError(f"--allow {b!r}: give the binary's absolute path")
    repo: Path = args.repo
    if not repo.is_dir():
        raise SourceError(f"--repo {repo}: not a directory")
    if not (repo / "palisade.yaml").is_file() and args.branch is None:
        raise SourceError(f"--repo {repo}: no palisade.yaml; is it a policy repository?")

    try:
        if args.events is not None:
            events = list(generate.read_events(args.events))
            execs = generate.execs_from_events(events, args.workload)
            source = f"Tetragon events in {args.events}"
            if not execs:
                known = generate.workloads_in_events(events)
                hint = f"; workloads in the events: {', '.join(sorted(known))}" if known else \
                    "; the events name no workload (no process.pod)"
                raise generate.GenerateError(f"no events of workload {args.workload!r} in {args.events}{hint}")
        else:
            fleet = FleetSource(args.server, args.state, args.timeout)
            since = parse_when(args.since or "24h", now, "--since")
            try:
                rows = fleet.observations(Query(workload=args.workload, since=since))
            finally:
                fleet.close()
            execs = generate.execs_from_observations(rows, args.workload)
            source = f"observations of {fleet.where} since {since:%Y-%m-%dT%H:%M:%SZ}"
            if not execs:
                raise generate.GenerateError(
                    f"{fleet.where} has no observations of workload {args.workload!r} since "
                    f"{since:%Y-%m-%dT%H:%M:%SZ}: agents report a workload's execs while a policy that observes "
                    f"sched_process_exec (e.g. baseline-observe) is loaded for it")
            if labels is None and args.namespace is None:
                labels = {"app": args.workload}
                print(f"note: observations carry no pod labels; scoping by app={args.workload} "
                      "(pass --selector to change)", file=sys.stderr)
        allow = generate.build(args.workload, execs, startup=startup, allow=args.allow, labels=labels,
                               namespace=args.namespace)
        name = args.name or generate.pack_name(args.workload)
        _check_names(repo, args.branch, name, generate.policy_name(name), args.force)
        owners = args.owner or [_git_email(repo)]
        texts = generate.files(allow, name=name, scope=scope, owners=owners, source=source, now=now)
    except generate.GenerateError as e:
        raise UsageError(str(e)) from None

    written: list[str] = []
    branch_commit = None
    if not args.dry_run:
        if args.branch:
            branch_commit = _commit(repo, args.branch, texts, args.workload, args.force)
        else:
            existing = [p for p in texts if (repo / p).exists()]
            if existing and not args.force:
                raise PalisadeError(f"{', '.join(existing)} already exist(s); pass --force to overwrite or --name "
                                    "for another pack")
            for rel, text in texts.items():
                (repo / rel).parent.mkdir(parents=True, exist_ok=True)
                (repo / rel).write_text(text, encoding="utf-8")
        written = list(texts)

    if args.output == "json":
        doc = allow.to_json()
        doc.update({"pack": name, "files": list(texts), "written": written, "branch": args.branch,
                    "commit": branch_commit, "source": source})
        if args.dry_run:
            doc["contents"] = texts
        print(json.dumps(doc, indent=2))
        return 0
    if args.dry_run:
        for rel, text in texts.items():
            print(f"--- {rel}\n{text}")
    print(f"workload {args.workload}: {len(allow.allowed)} binar{'y' if len(allow.allowed) == 1 else 'ies'} allowed, "
          f"{len(allow.review)} held for review ({allow.evidence} observed exec(s))")
    for c in allow.allowed:
        print(f"  allow   {c.binary}" + (f"  ({c.count}x)" if c.count else "  (--allow)"))
    for c in allow.review:
        print(f"  REVIEW  {c.binary}  ({c.reason}); add with --allow {c.binary} if it is needed")
    if written:
        where = f"on branch {args.branch} ({branch_commit[:12]})" if branch_commit else f"in {repo}"
        print(f"wrote {', '.join(written)} {where}")
        print("next: palisade validate, open a pull request; the pack starts at observe")
    return 0


def _check_names(repo: Path, branch: str | None, pack: str, policy: str, force: bool) -> None:
    """Refuse names the repository already uses (a pack overwritten with --force may keep its own)."""
    from reconciler.errors import UsageError
    from reconciler.repository import loader, source

    snap = source.from_git(repo, "HEAD") if branch else source.from_worktree(repo)
    model = loader.load(snap).repository
    if not force and (model.pack(pack) is not None or any(e.name == pack for e in model.enforcements)):
        raise UsageError(f"pack {pack} already exists in the repository; pass --name for another, or --force")
    for p in model.packs:
        for tp in p.policies:
            if tp.name == policy and not (force and p.name == pack):
                raise UsageError(f"the policy name {policy} is already used in {tp.path}; pass --name "
                                 f"(the policy is named after the pack)")
    if any(r.name == policy for r in model.rules):
        raise UsageError(f"a rule is named {policy}; pass --name (policies and rules share one namespace)")


def _labels(text: str) -> dict[str, str]:
    from reconciler.errors import UsageError

    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"--selector: {item!r} is not KEY=VALUE")
        out[k] = v
    return out


def _git_email(repo: Path) -> str:
    from ._gitwork import try_git

    return try_git(repo, "config", "user.email") or "unknown-owner"


def _commit(repo: Path, branch: str, texts: dict[str, str], workload: str, force: bool) -> str:
    from reconciler.errors import PalisadeError

    from ._gitwork import commit_files, create_branch, git, require_repo, try_git

    require_repo(repo)
    head = git(repo, "rev-parse", "--verify", "HEAD^{commit}")
    existing = [p for p in texts if try_git(repo, "cat-file", "-e", f"{head}:{p}") is not None]
    if existing and not force:
        raise PalisadeError(f"{', '.join(existing)} already exist(s) at HEAD; pass --force or --name")
    commit = commit_files(repo, head, {p: t.encode() for p, t in texts.items()},
                          f"Exec allowlist for workload {workload}, at observe\n\n"
                          f"Generated by `palisade generate`: {', '.join(texts)}.")
    create_branch(repo, branch, commit)
    return commit

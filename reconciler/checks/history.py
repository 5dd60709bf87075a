"""History checks (DESIGN.md §2): the ladder, approvals by SSH-signed commits, the observation window.

A *change* is everything between an accepted revision `base` and a new revision
`head` (normally `head`'s first parent is `base`: one merge or commit on the
tracked branch). This module reads the facts from git — the units of both
revisions, who authored and who signed the commits of the change, and when each
unit entered its current state — and lets `ladder` judge them.

Decisions worth knowing (each one a place where the design leaves room):

- **The introducing commit is `head`.** Its signature is the approval. When
  `base` is further back than `head`'s parent (the reconciler skipped rejected
  commits), the whole range is one change approved by `head`, so "one step per
  accepted commit" is measured between accepted commits.
- **Authors** are the authors (by e-mail, case-insensitive) of every commit in
  `git rev-list base..head`, and the signers of those commits, except: `head`
  itself when it is a merge (merging is how a reviewer approves; its author is
  the merger) and empty non-merge commits (they change nothing; see below). A
  reviewer who signed an ordinary commit of the change authored it, whatever its
  author field says. A commit merging the tracked branch into the feature
  branch counts as authored by whoever made it (its conflict resolution is content).
- **`approvals.required` > 1**: a git commit carries one signature, so further
  approvals are *approval commits*: empty commits (`git commit --allow-empty -S`)
  in the change, signed by other reviewers, whose tree is the tree that gets
  merged (the tip of the merged branch; for a non-merge head, head itself). An
  approval commit made before later changes no longer matches that tree and does
  not count. Distinct reviewers are counted (by key), each valid and not an author.
- **Approval settings** (reviewers, `approvals.required`, `minObservation`) come from
  `base`'s palisade.yaml; changing them is itself a step needing the approval of
  `base`'s reviewers. A repository's first palisade.yaml is trusted (nobody to ask).
- **Time**: a unit entered its state at the committer time of the oldest
  first-parent commit (of `base`'s history) from which on it held that state;
  the step happens at `head`'s committer time, capped at the wall clock so a
  commit dated in the future cannot shorten the window. In pull-request mode
  (`pending_approvals`) the step has not happened yet: the wall clock is used.
"""
from __future__ import annotations

import datetime as _dt
import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.checks import ladder
from reconciler.checks.ladder import Approval, MoveKind
from reconciler.checks.tightening import Tightening, tightenings
from reconciler.findings import Finding, Severity, error, warning
from reconciler.repository import render, signatures, source
from reconciler.repository.acceptances import Acceptances
from reconciler.repository.git import Git
from reconciler.repository.model import Location, PolicyRepository, RepositoryConfig, Reviewer, UnitKey
from reconciler.repository.signatures import Signature, Status
from wire.values import State

Loader = Callable[[str], PolicyRepository]

#: Only these folders decide a unit's state; older revisions that did not touch them are skipped.
LADDER_PATHS = ("enforcement", "rules")

_STATUS_CODE = {
    Status.UNSIGNED: ladder.UNSIGNED,
    Status.BAD: ladder.BAD_SIGNATURE,
    Status.NOT_REVIEWER: ladder.NOT_REVIEWER,
    Status.UNVERIFIABLE: ladder.NOT_REVIEWER,
}


def check(
    repo: Path,
    base: str,
    head: str,
    *,
    load: Loader,
    pending_approvals: bool = False,
    now: _dt.datetime | None = None,
    accepted: Acceptances | None = None,
) -> list[Finding]:
    """Every history finding for the change `base..head`.

    `load(rev)` returns the typed model of a revision (it is called with full
    commit ids and memoised here). `pending_approvals` is for pull-request CI,
    where the approving merge does not exist yet: missing approvals become
    `approval-pending` warnings naming what is needed. `now` is the wall clock
    (tests pass one; default: the real time). `accepted` is the reconciler's
    record of when it accepted the commits of the first-parent chain: with it,
    observation time runs from what the reconciler saw, not from commit dates.
    """
    repo = Path(repo)
    clock = now or _dt.datetime.now(_dt.UTC)
    base_sha, head_sha = source.resolve(repo, base), source.resolve(repo, head)
    if base_sha == head_sha:
        return []
    if not Git(repo).is_ancestor(base_sha, head_sha):
        fork = Git(repo).merge_base(base_sha, head_sha) if pending_approvals else None
        if fork is None:
            return [error(source.ROOT_FILE, 0, 0, "not-descendant",
                          f"{head} ({head_sha[:12]}) does not descend from the accepted revision {base} "
                          f"({base_sha[:12]}); rebase or merge {base} first")]
        base_sha = fork  # a pull request behind its target: judge what it changes since it forked
    cached = _memo(load)
    before, after = cached(base_sha), cached(head_sha)
    before_units, after_units = before.units(), after.units()
    moves = ladder.moves(before_units, after_units)
    forward = {m.unit: m.before for m in moves if m.kind is MoveKind.FORWARD and m.before is not None}
    config = before.config or RepositoryConfig("", ())
    step_time = clock if pending_approvals or accepted is not None else min(_commit_time(repo, head_sha), clock)
    tight = _tightenings(before, after, before_units, after_units, step_time.date())
    needs_approval = bool(forward) or any(t.reasons for t in tight) or \
        bool(ladder.config_changes(before.config, after.config))
    # reading signatures costs a process per signed commit: only when something needs approval
    approval = _Change(repo, base_sha, head_sha).approval(config, pending=pending_approvals) \
        if needs_approval else Approval()
    entered = entered_at(repo, base_sha, forward, accepted=accepted) if forward else {}
    problems = ladder.check(moves, approval, entered, config.min_observation, step_time)
    problems += ladder.check_tightenings(tight, approval)
    problems += ladder.check_config(before.config, after.config, approval)
    return [_finding(p, after, repo, head_sha) for p in problems]


def _tightenings(before: PolicyRepository, after: PolicyRepository, before_units: Mapping[UnitKey, State],
                 after_units: Mapping[UnitKey, State], today: _dt.date) -> list[Tightening]:
    if not any(s is not State.OBSERVE for s in before_units.values()):
        return []  # nothing enforces yet: rendering both sides would find nothing
    try:
        old, new = render.render(before, today), render.render(after, today)
    except ValueError:
        return []  # the revision does not render: validation reports that as an error of its own
    return tightenings(before_units, after_units, old, new, base_groups=before.groups, head_groups=after.groups,
                       base_rules=before.rules, head_rules=after.rules)


def approvers(repo: Path, base: str, head: str, config: RepositoryConfig) -> list[Reviewer]:
    """The reviewers (of `config`, normally `base`'s) whose signatures approve `base..head`.

    For the reconciler's ledger: valid SSH signatures on `head` or on approval
    commits bound to the merged tree, by reviewers who wrote none of the change.
    """
    base_sha, head_sha = source.resolve(repo, base), source.resolve(repo, head)
    if base_sha == head_sha:
        return []
    return _Change(Path(repo), base_sha, head_sha).valid_approvers(config, pending=False)


def entered_at(
    repo: Path, base: str, units: Mapping[UnitKey, State | None],
    units_at: Callable[[str], Mapping[UnitKey, State]] | None = None,
    *, accepted: Acceptances | None = None,
) -> dict[UnitKey, _dt.datetime]:
    """When each unit entered the state it has at `base`, from the first-parent history of `base`.

    Walks the first-parent commits that touched enforcement/ or rules/, newest
    first, and stops as soon as every unit is accounted for; a unit whose state
    runs back to the oldest such commit entered it there. `units_at(commit)`
    gives the ladder of a revision (default: `ladder_units`, which reads only
    enforcement/ and rules/ and caches per commit). With `accepted`, a commit's
    time is when it went live (never earlier than its commit date).
    """
    read = units_at or (lambda sha: ladder_units(repo, sha))
    want = {u: s for u, s in units.items() if s is not None}
    found: dict[UnitKey, _dt.datetime] = {}
    held: dict[UnitKey, _dt.datetime] = {}
    log = Git(repo).text("log", "--first-parent", "--format=%H %ct", base, "--", *LADDER_PATHS).split()
    live = _live_times(repo, base, accepted) if accepted is not None else {}
    for sha, stamp in zip(log[0::2], log[1::2], strict=True):
        if not want:
            break
        when = _dt.datetime.fromtimestamp(int(stamp), _dt.UTC)
        if sha in live:
            when = max(when, live[sha])
        states = read(sha)
        for unit, state in list(want.items()):
            if states.get(unit) == state:
                held[unit] = when
            else:
                # the unit left (or had not yet reached) this state here: it entered at the newer commit
                found[unit] = held.get(unit, when)
                del want[unit]
    found.update({u: held[u] for u in want if u in held})
    if want.keys() - found.keys():
        # not found in any touching commit (should not happen): measure from base, the safe side
        base_time = max(_commit_time(repo, base), live.get(source.resolve(repo, base), _EPOCH))
        found.update({u: base_time for u in want if u not in found})
    return found


_EPOCH = _dt.datetime.fromtimestamp(0, _dt.UTC)


def _live_times(repo: Path, base: str, accepted: Acceptances) -> dict[str, _dt.datetime]:
    """First-parent commits of `base` -> when they went live (commits the reconciler never saw: absent)."""
    chain = Git(repo).text("rev-list", "--first-parent", base).split()  # newest first
    times = accepted.live_times(len(chain))
    return {sha: t for i, sha in enumerate(chain) if (t := times[len(chain) - 1 - i]) is not None}


def ladder_units(repo: Path, commit: str) -> Mapping[UnitKey, State]:
    """The units on the ladder at `commit`, from enforcement/ and rules/ only (nothing else can change them).

    Walking history reads many old revisions; packs (often hundreds of
    TracingPolicies) are the expensive part and play no role here. Git objects
    are immutable, so each file version is loaded once per process (keyed by
    path and blob id) and each commit's result is cached too.
    """
    return _ladder_units(str(Path(repo).resolve()), source.resolve(repo, commit))


#: (path, blob id) -> the units that file version defines, in document order.
_FILE_UNITS: dict[tuple[str, str], tuple[tuple[UnitKey, State], ...]] = {}
_FILE_UNITS_MAX = 200_000


@functools.lru_cache(maxsize=4096)
def _ladder_units(repo_text: str, sha: str) -> Mapping[UnitKey, State]:
    from reconciler.repository import loader  # the loader imports the schemas: only when history is walked

    repo = Path(repo_text)
    git = Git(repo)
    entries = [e for e in git.ls_tree(sha, *LADDER_PATHS) if e.type == "blob" and source.wanted(e.path)]
    if any(e.is_symlink for e in entries):
        # symlinks resolve against other files of the revision: let the source reader handle them
        snap = source.from_git(repo, sha)
        files = tuple(f for f in snap.files if f.path.split("/", 1)[0] in LADDER_PATHS)
        return types.MappingProxyType(loader.load(source.Snapshot(files, sha)).repository.units())
    misses = [(e.sha, e.path) for e in entries
              if (e.path, e.sha) not in _FILE_UNITS and e.size <= source.MAX_FILE_BYTES]
    if len(_FILE_UNITS) + len(misses) > _FILE_UNITS_MAX:
        _FILE_UNITS.clear()
    data = git.cat_blobs(blob for blob, _ in misses)
    for blob, path in misses:
        one = source.Snapshot((source.SourceFile(path, data[blob]),), sha)
        _FILE_UNITS[(path, blob)] = tuple(loader.load(one).repository.units().items())
    out: dict[UnitKey, State] = {}
    # in path order, as the full loader reads them (enforcement/ before rules/; later wins)
    for e in sorted(entries, key=lambda e: e.path):
        out.update(_FILE_UNITS.get((e.path, e.sha), ()))  # too large: no units, like the full loader
    return types.MappingProxyType(out)


# --- the commits of a change ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Commit:
    sha: str
    parents: tuple[str, ...]
    tree: str
    author: str
    email: str
    subject: str


@dataclass(frozen=True)
class _Content:
    """A commit that writes something, and what is proven about who wrote it."""

    commit: _Commit
    signer: str | None  # fingerprint of the listed person whose good signature proves the author
    own_merge: tuple[str, ...] = ()  # for a merge: the paths it changes beyond a clean merge of its parents


class _Change:
    """The commits `base..head`: which of them write content, who provably wrote it, who approved it.

    - An empty non-merge commit writes nothing (an approval commit).
    - A merge whose tree is exactly what `git merge-tree` makes of its parents writes
      nothing of its own. Any other merge (an evil merge, a conflict resolution)
      writes its own changes, and they are its signer's.
    - Who wrote a commit is proven only by a good signature of a person listed in
      the governing palisade.yaml (reviewers and contributors): author fields are
      claims. A claim naming a reviewer still counts against that reviewer.
    """

    def __init__(self, repo: Path, base: str, head: str) -> None:
        self.repo, self.base, self.head = repo, base, head
        self.git = Git(repo)
        out = self.git.text("log", "--format=%H%x00%P%x00%T%x00%an%x00%ae%x00%s%x1e", f"{base}..{head}")
        self.commits: list[_Commit] = []
        for rec in out.split("\x1e"):
            rec = rec.strip("\n")
            if rec:
                sha, parents, tree, name, email, subject = rec.split("\x00")
                self.commits.append(_Commit(sha, tuple(parents.split()), tree, name, email, subject))
        self._by_sha = {c.sha: c for c in self.commits}
        self._empty = self._empty_commits()
        self._own = {c.sha: self._merge_own_changes(c) for c in self.commits if len(c.parents) > 1}

    def _empty_commits(self) -> set[str]:
        singles = [c for c in self.commits if len(c.parents) == 1]
        if not singles:
            return set()
        # on stdin, so a long branch cannot overflow the command line
        trees = self.git.text("cat-file", "--batch-check=%(objectname)",
                              stdin="".join(f"{c.parents[0]}^{{tree}}\n" for c in singles)).split()
        return {c.sha for c, parent_tree in zip(singles, trees, strict=True) if c.tree == parent_tree}

    def _merge_own_changes(self, c: _Commit) -> tuple[str, ...]:
        """The paths a merge changes beyond the clean merge of its parents (empty: a clean merge)."""
        if len(c.parents) != 2:
            return ("(an octopus merge: its result is its author's)",)
        # exit 1: the merge conflicts (its tree is still written)
        merged = self.git.run("merge-tree", "--write-tree", "--no-messages", "-z", *c.parents, ok=(0, 1))
        clean = merged.stdout.split(b"\0", 1)[0].decode().strip()
        if merged.returncode == 0 and clean == c.tree:
            return ()
        changed = self.git.text("diff-tree", "-r", "--name-only", "-z", clean, c.tree).split("\0")
        # a conflicted merge whose resolution equals a side still changed the conflicted files
        return tuple(p for p in changed if p) or ("(the conflict resolution)",)

    @property
    def _head(self) -> _Commit:
        return self._by_sha[self.head]

    def _head_is_clean_merge(self) -> bool:
        return len(self._head.parents) > 1 and not self._own.get(self.head)

    def _writes(self, c: _Commit) -> bool:
        if len(c.parents) > 1:
            return bool(self._own.get(c.sha))
        return c.sha not in self._empty

    def _approval_commits(self, pending: bool) -> list[_Commit]:
        """Commits whose signature may approve: a merging head, and signed empty commits bound to the tree
        that gets merged (the merged branch's tip). A merge with changes of its own was not what the
        approval commits saw, so then only the merge's signature can count (and it is its author's)."""
        h = self._head
        out: list[_Commit] = []
        if not pending:
            out.append(h)
        if len(h.parents) > 1 and not self._head_is_clean_merge():
            return out
        tip = self.git.text("rev-parse", f"{h.parents[1]}^{{tree}}").strip() if len(h.parents) > 1 else h.tree
        out += [c for c in self.commits if c.sha in self._empty and c.tree == tip]
        return out

    def _judge(self, config: RepositoryConfig, pending: bool) -> _Verdicts:
        writers = [c for c in self.commits if self._writes(c)]
        candidates = self._approval_commits(pending)
        shas = list(dict.fromkeys([c.sha for c in writers] + [c.sha for c in candidates]))
        sigs = signatures.verify_many(self.repo, shas, config.people)
        reviewer_keys = {fp for r in config.reviewers if (fp := signatures.fingerprint(r.key))}
        content = [_Content(c, s.fingerprint if (s := sigs[c.sha]).status is Status.GOOD else None,
                            self._own.get(c.sha, ())) for c in writers]
        claimed: dict[str, _Commit] = {}
        for c in writers:
            claimed.setdefault(c.email.strip().lower(), c)
        return _Verdicts(tuple(candidates), sigs, tuple(content), claimed, frozenset(reviewer_keys))

    def valid_approvers(self, config: RepositoryConfig, pending: bool) -> list[Reviewer]:
        return self._judge(config, pending).valid()

    def approval(self, config: RepositoryConfig, *, pending: bool) -> Approval:
        v = self._judge(config, pending)
        valid = v.valid()
        names = tuple(f"{r.name} <{r.email}>" for r in valid)
        unproven = v.unproven()
        required = max(config.approvals_required, 1)
        if unproven:
            required = max(required, 2)  # any one approver might have written the unproven commit
        if len(valid) >= required:
            return Approval(names, required)
        eligible = [r for r in config.reviewers if v.wrote(r) is None]
        eligible_text = ", ".join(f"{r.name} <{r.email}>" for r in eligible) or "nobody"
        if not config.reviewers:
            return Approval(names, required, ladder.NOT_REVIEWER,
                            "the accepted palisade.yaml lists no reviewers, so nobody can approve", pending)
        why_two = ""
        if unproven:
            c = unproven[0]
            why_two = (f"commit {c.sha[:12]} ({c.subject!r}, author field {c.author} <{c.email}>) is not signed "
                       "by a reviewer or contributor of palisade.yaml, so who wrote it is not proven and any one "
                       "approver might have: two reviewers must approve, or its author signs it with a key listed "
                       "under spec.contributors")
        if pending:
            if not eligible:
                reason = ("no reviewer can approve it: every reviewer wrote a commit of this change "
                          "(a reviewer who did not write it must review and sign the merge)")
            elif required == 1:
                reason = f"the merge must be SSH-signed by a reviewer who did not write it: {eligible_text}"
            else:
                have = f" (so far: {', '.join(names)})" if names else ""
                because = f"; {why_two}" if why_two else ""
                reason = (f"{required} distinct reviewers who did not write it must approve{have}: "
                          f"a signed merge plus signed empty approval commits, from {eligible_text}{because}")
            return Approval(names, required, "approval-pending", reason, pending=True)
        sig = v.sigs[self.head]
        if sig.status is not Status.GOOD or sig.reviewer is None or sig.fingerprint not in v.reviewer_keys:
            status = sig.status if sig.status is not Status.GOOD else Status.NOT_REVIEWER
            what = sig.describe() if sig.status is not Status.GOOD else \
                f"commit {self.head[:12]} is signed by {sig.reviewer.name if sig.reviewer else 'someone'}, " \
                "who is not a reviewer"
            return Approval(names, required, _STATUS_CODE.get(status, ladder.NOT_REVIEWER),
                            f"{what}; it must be signed by a reviewer who did not write the "
                            f"change: {eligible_text}")
        wrote = v.wrote(sig.reviewer)
        if wrote is not None:
            return Approval(names, required, ladder.SELF_APPROVED,
                            f"{sig.describe()}, who {wrote}; another reviewer must approve: {eligible_text}")
        if unproven and len(valid) == 1 and config.approvals_required < 2:
            others = ", ".join(f"{r.name} <{r.email}>" for r in eligible if r not in valid) or "nobody"
            return Approval(names, required, ladder.UNPROVEN_AUTHOR, f"{why_two}; approved so far by "
                            f"{', '.join(names)}; add a signed empty approval commit by another reviewer: "
                            f"{others}")
        return Approval(names, required, ladder.INSUFFICIENT,
                        f"{len(valid)} of {required} required approvals ({', '.join(names) or 'none'}); "
                        f"add signed empty approval commits by other reviewers: {eligible_text}")


@dataclass(frozen=True)
class _Verdicts:
    candidates: tuple[_Commit, ...]
    sigs: dict[str, Signature]
    content: tuple[_Content, ...]
    claimed: dict[str, _Commit]  # author e-mail (lower case) -> a commit claiming it
    reviewer_keys: frozenset[str]

    def wrote(self, r: Reviewer) -> str | None:
        """How reviewer `r` took part in writing the change ("signed commit X ..."), or None."""
        fp = signatures.fingerprint(r.key)
        for w in self.content:
            if fp is not None and w.signer == fp:
                if w.own_merge:
                    shown = ", ".join(w.own_merge[:3]) + (" ..." if len(w.own_merge) > 3 else "")
                    return (f"signed merge {w.commit.sha[:12]}, which changes {shown} beyond a clean merge of its "
                            "parents (a merge's own changes are its signer's)")
                return f"signed commit {w.commit.sha[:12]} ({w.commit.subject!r}) of this change, so wrote it"
        c = self.claimed.get(r.email.strip().lower())
        if c is not None:
            return f"is the author of commit {c.sha[:12]} ({c.subject!r}) of this change"
        return None

    def unproven(self) -> list[_Commit]:
        """Content commits no listed person's good signature vouches for."""
        return [w.commit for w in self.content if w.signer is None]

    def valid(self) -> list[Reviewer]:
        """Distinct reviewers (by key) with a good signature on a candidate commit who wrote none of it."""
        out: dict[str, Reviewer] = {}
        for c in self.candidates:
            s = self.sigs[c.sha]
            if (s.status is Status.GOOD and s.reviewer is not None and s.fingerprint in self.reviewer_keys
                    and self.wrote(s.reviewer) is None):
                out.setdefault(s.fingerprint or s.reviewer.email, s.reviewer)
        return list(out.values())


# --- findings ------------------------------------------------------------------------------------


def _finding(p: ladder.Problem, model: PolicyRepository, repo: Path, head: str) -> Finding:
    where = _unit_location(model, p.unit) if p.unit is not None else _config_location(repo, head)
    make = warning if p.severity is Severity.WARNING else error
    return make(where.path, where.line, where.column, p.code, p.message)


def _unit_location(model: PolicyRepository, unit: UnitKey) -> Location:
    """The `state` node of the unit in the head revision (the file, when the loader gave no position)."""
    if unit.kind == "pack":
        for e in model.enforcements:
            if e.pack == unit.name:
                for a in e.assignments:
                    if a.scope == unit.scope:
                        return a.where if a.where.path else Location(e.path)
    else:
        for r in model.rules:
            if r.name == unit.name and r.scope == unit.scope and r.enabled:
                return r.where if r.where.path else Location(r.path)
    return Location(source.ROOT_FILE)


def _config_location(repo: Path, head: str) -> Location:
    """`spec.reviewers` of palisade.yaml at `head` (the file itself when it cannot be located)."""
    data = Git(repo).find_blob(head, source.ROOT_FILE)
    if data is None:
        return Location(source.ROOT_FILE)
    docs, _ = source.parse_file(source.SourceFile(source.ROOT_FILE, data))
    for d in docs:
        if d.kind == "Repository":
            line, col = d.locate(("spec", "reviewers"))
            return Location(source.ROOT_FILE, line, col)
    return Location(source.ROOT_FILE)


# --- git -----------------------------------------------------------------------------------------


def _memo(load: Loader) -> Loader:
    cache: dict[str, PolicyRepository] = {}

    def cached(rev: str) -> PolicyRepository:
        if rev not in cache:
            cache[rev] = load(rev)
        return cache[rev]

    return cached


def _commit_time(repo: Path, rev: str) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(int(Git(repo).text("log", "-1", "--format=%ct", rev).strip()), _dt.UTC)

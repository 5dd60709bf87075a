"""Reconcile: every new commit on the tracked branch → validated, signed, versioned bundle.

The reconciler keeps a bare mirror of the policy repository in its state
directory (`mirror.git`), fetched from a local path or a URL, so both kinds of
source behave the same and a force-push upstream cannot erase what was accepted.
For each first-parent commit after the last accepted one, oldest first, it runs
the validator (history against the last *accepted* commit), renders, builds and
signs a bundle, asks the rollout controller for the pins of the index that
publishes it, and publishes it in one call to the ledger (the row, the bundle,
the index: ledger.py explains the crash safety). The signed bytes travel with
the typed bundle they encode, so nothing on the way parses them back. Before
signing it builds the policies' CO-RE objects (reconciler/publish/objects.py)
into the store, so the bundle lists them by digest and nodes load exactly those
bytes; a policy whose C does not compile rejects the commit. A rejected commit
is recorded with every finding; later commits are still processed against the
last accepted one. A branch that no longer descends from the last accepted
commit is refused until an operator accepts the rewrite.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from reconciler.checks import history
from reconciler.checks.validate import validate
from reconciler.errors import PalisadeError, RewriteRefused, SourceError, StateError
from reconciler.findings import error, has_errors
from reconciler.publish.objects import Build, ObjectBuilder
from reconciler.repository import loader, render, source
from reconciler.repository.git import Git, UnknownRevision
from reconciler.repository.model import PolicyRepository
from reconciler.rollout.controller import Controller
from reconciler.state.ledger import CommitInfo, Ledger, LedgerEntry
from reconciler.state.statedir import StateDir
from reconciler.state.store import SignedBundle, Store
from wire import bundle as _bundle

log = logging.getLogger("palisade.reconcile")



@dataclass(frozen=True)
class Outcome:
    """What one reconcile pass did."""

    head: str | None
    processed: tuple[LedgerEntry, ...] = ()
    resigned: bool = False
    refused: str | None = None  # why the branch was refused (history rewritten)
    duration: float = 0.0

    @property
    def published(self) -> tuple[int, ...]:
        return tuple(e.version for e in self.processed if e.version is not None and e.result == "accepted")


@dataclass
class _Cache:
    """Loaded revisions by commit id; history walks revisit the same ones on every pass."""

    repo: Path
    models: dict[str, PolicyRepository] = field(default_factory=dict)

    def load(self, rev: str) -> PolicyRepository:
        if rev not in self.models:
            if len(self.models) > 256:
                self.models.clear()
            self.models[rev] = loader.load_revision(self.repo, rev)[0]
        return self.models[rev]


class Reconciler:
    """One tracked branch of one policy repository, reconciled into one state directory."""

    def __init__(self, repo: str, state_dir: Path | StateDir, key: SigningKey, *, branch: str = "main",
                 clock: Callable[[], _dt.datetime] | None = None,
                 objects: ObjectBuilder | bool = True) -> None:
        """`objects`: how CO-RE objects are built into bundles (True: for this host's kernel, cached in
        the state directory; False: bundles carry none and nodes build their own)."""
        self.source = repo
        self.branch = branch
        self.state = StateDir.of(state_dir)
        self.state_dir = self.state.root
        self.key = key
        self._clock = clock or (lambda: _dt.datetime.now(_dt.UTC))
        self.last_build: Build | None = None
        self.refused: str | None = None
        self.last_run: _dt.datetime | None = None
        self.last_error: str | None = None
        self.ledger = Ledger.open(self.state)  # takes the state directory's lock
        try:
            self.store = Store(self.state.store.root, key)
            self.rollouts = Controller(self.state, self.ledger, self.store, clock=self._clock)
            self.mirror = self.state.mirror
            self._cache = _Cache(self.mirror)
            self.objects: ObjectBuilder | None = (ObjectBuilder(self.state) if objects is True
                                                  else objects or None)
            self.recover()
        except BaseException:
            # a failed start must not keep the lock: a standby in this process retries, and a test opens again
            rollouts = getattr(self, "rollouts", None)
            if rollouts is not None:
                rollouts.close()
            self.ledger.close()
            raise

    def close(self) -> None:
        self.rollouts.close()
        self.ledger.close()

    def __enter__(self) -> Reconciler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pass -----------------------------------------------------------

    def run_once(self, *, accept_rewrite: bool = False) -> Outcome:
        """Fetch, process every new commit, re-sign the index if due. Raises RewriteRefused."""
        t0 = time.perf_counter()
        self.recover()
        try:
            head = self.fetch()
        except SourceError as e:
            self.last_error = str(e)
            raise
        self.last_error = None
        last = self.ledger.last_accepted()
        base = last.commit if last else None
        if base is not None and head != base and not self._descends(base, head):
            if not accept_rewrite:
                reason = (f"branch {self.branch} at {head[:12]} does not descend from the last accepted "
                          f"commit {base[:12]} (history rewritten); nothing is published until an operator "
                          "runs `palisade reconcile --accept-rewrite`")
                if self.refused != reason:
                    self.ledger.record_event("rewrite-refused", head, {"accepted": base})
                self.refused = reason
                self.last_run = self._clock()
                raise RewriteRefused(reason)
            self.ledger.record_event("rewrite-accepted", head, {"accepted": base})
            self.refused = None
            # the rewritten branch is judged from where it forked off the accepted history
            fork = self._merge_base(base, head)
            processed = [self._process(head, base=fork)] if not self.ledger.is_processed(head) else []
            self.tick()
            return Outcome(head, tuple(processed), self._resign(), None, time.perf_counter() - t0)
        commits = self._new_commits(base, head)
        self.refused = None
        processed = [self._process(c) for c in commits]
        self.tick()
        resigned = self._resign()
        self.last_run = self._clock()
        return Outcome(head, tuple(processed), resigned, None, time.perf_counter() - t0)

    def recover(self) -> LedgerEntry | None:
        """Settle a publish a crash interrupted, pinning its index as a publish would (ledger.py)."""
        unsettled = self.ledger.unsettled(self.store)
        if unsettled is None:
            return None
        # Publishes pin only the first rollout stage; the controller promotes the rest (rollout/controller.py).
        pins = self.rollouts.publish_pins(unsettled.bundle) if unsettled.bundle is not None else None
        return self.ledger.recover(self.store, unsettled, stages=pins)

    def resign(self) -> bool:
        """Re-sign the index if less than half its life is left (also when nothing changed)."""
        return self._resign()

    def tick(self) -> None:
        """One step of the rollout controller (after each pass, and on a timer in `palisade serve`)."""
        try:
            self.rollouts.tick()
        except PalisadeError as e:
            log.error("rollout controller: %s", e)
        except Exception:  # a bug there must not stop reconciling
            log.exception("rollout controller failed")

    def _resign(self) -> bool:
        return self.store.resign_if_due(now=self._clock()) is not None

    def _process(self, commit: str, *, base: str | bool | None = True) -> LedgerEntry:
        """Validate, and publish or reject, one commit; `base` overrides the history base (None: none)."""
        if base is True:
            last = self.ledger.last_accepted()
            base = last.commit if last else None
        assert base is None or isinstance(base, str)
        report = validate(self.mirror, commit, base, history=base is not None, load=self._cache.load,
                          accepted=self.ledger.acceptances(), now=self._clock())
        self._cache.models[commit] = report.repository  # the next commit's history base
        info = self._info(commit, base, report.repository)
        if has_errors(report.findings):
            entry = self.ledger.record_rejected(info, report.findings, now=self._clock())
            log.info("rejected %s: %d finding(s)", commit[:12], len(report.findings))
            return entry
        now = self._clock()
        repo = report.repository
        rendered = report.rendered if report.rendered is not None else render.render(repo, now.date())
        built = self._build_objects(rendered, repo)
        if built.findings:
            entry = self.ledger.record_rejected(info, (*report.findings, *built.findings), now=now)
            log.info("rejected %s: %d object(s) do not compile", commit[:12], len(built.findings))
            return entry
        version = self.ledger.next_version(self.store)
        try:
            b = self._bundle(commit, base, info, repo, version, now, rendered, built)
        except ValueError as e:
            # validation should have caught it; never let one commit stop the loop
            found = (*report.findings, error("", 0, 0, "bundle", f"cannot build the bundle: {e}"))
            return self.ledger.record_rejected(info, found, now=now)
        signed = SignedBundle.sign(b, self.key)
        expiry = repo.config.bundle_expiry if repo.config else None
        # Publishes pin only the first rollout stage; the controller promotes the rest (rollout/controller.py).
        pins = self.rollouts.publish_pins(signed)
        entry = self.ledger.record_accepted(info, report.findings, signed, self.store, stages=pins, now=now,
                                            expiry=expiry)
        log.info("accepted %s as v%d", commit[:12], version)
        return entry

    def _build_objects(self, rendered: tuple[render.RenderedPolicy, ...], repo: PolicyRepository) -> Build:
        """The commit's objects, written to the store (before the bundle that lists them)."""
        if self.objects is None:
            return Build()
        built = self.objects.build(rendered, repo)
        self.last_build = built
        if built.compiled:
            log.info("built %d object(s) in %.2f s", built.compiled, built.seconds)
        for data in built.data.values():
            self.store.write_object(data)
        return built

    def _bundle(self, commit: str, base: str | None, info: CommitInfo, repo: PolicyRepository, version: int,
                now: _dt.datetime, rendered: tuple[render.RenderedPolicy, ...] | None = None,
                built: Build | None = None) -> _bundle.Bundle:
        if rendered is None:
            rendered = render.render(repo, now.date())
        return _bundle.Bundle(
            version=version,
            commit=commit,
            parent=base,
            author=info.author,
            approvers=info.approvers,
            created=now.replace(microsecond=0),  # what the file says (second precision)
            policies=tuple(
                _bundle.BundlePolicy.of(p.name, _bundle.Origin(p.origin_kind, p.origin_name), p.scope, p.state,
                                        p.yaml)
                for p in rendered
            ),
            groups=tuple(
                _bundle.BundleGroup(g.name, g.sensors, g.match_labels) for g in repo.groups
            ),
            staging=_bundle.Staging.from_rollout(repo.rollouts[0]) if repo.rollouts else None,
            objects=built.objects if built is not None else (),
        )

    # -- git ----------------------------------------------------------------

    def fetch(self) -> str:
        """Bring the mirror up to date with the source; the commit the tracked branch names."""
        ref = f"refs/heads/{self.branch}"
        if not (self.mirror / "HEAD").exists():
            git = Git.init_bare(self.mirror)
            git.run("remote", "add", "origin", self.source)
        else:
            git = Git(self.mirror)
            tracked = git.text("remote", "get-url", "origin").strip()
            if tracked != self.source:
                raise StateError(f"the state directory {self.state_dir} tracks {tracked}, not {self.source}; "
                                 "use another --state for another repository")
        # forced: a rewritten branch must become visible so it can be refused loudly
        # a first fetch of a large remote repository may take minutes; a hung one must still end
        git.run("fetch", "--quiet", "--no-tags", "origin", f"+{ref}:{ref}", timeout=30 * 60)
        return source.resolve(self.mirror, ref)

    def _descends(self, ancestor: str, commit: str) -> bool:
        try:
            return Git(self.mirror).is_ancestor(ancestor, commit)
        except UnknownRevision:  # the accepted commit is gone from the branch's objects: no descent
            return False

    def _merge_base(self, a: str, b: str) -> str | None:
        return Git(self.mirror).merge_base(a, b)

    def _new_commits(self, base: str | None, head: str) -> list[str]:
        spec = f"{base}..{head}" if base else head
        out = Git(self.mirror).text("rev-list", "--first-parent", "--reverse", spec)
        return [c for c in out.split() if not self.ledger.is_processed(c)]

    def _info(self, commit: str, base: str | None, repo: PolicyRepository) -> CommitInfo:
        fmt = Git(self.mirror).text("show", "-s", "--format=%P%x00%an <%ae>%x00%ct", commit).rstrip("\n")
        parents, author, ct = fmt.split("\0")
        last = self.ledger.entry(base) if base else None
        if last is not None and parents.split()[:1] == [base]:
            position = last.position + 1  # the usual case: spare a walk of the whole history
        else:
            position = int(Git(self.mirror).text("rev-list", "--first-parent", "--count", commit)) - 1
        first_parent = parents.split()[0] if parents else None
        if first_parent is not None and len(parents.split()) > 1:
            # a merge: the change's authors are those of the commits it brings in, not the merger
            names = Git(self.mirror).text("log", "--no-merges", "--reverse", "--format=%an <%ae>",
                                          f"{first_parent}..{commit}").splitlines()
            author = ", ".join(dict.fromkeys(names)) or author
        approvers: tuple[str, ...] = ()
        if base is not None:
            config = self._cache.load(base).config
            if config is not None:
                approvers = tuple(f"{r.name} <{r.email}>"
                                  for r in history.approvers(self.mirror, base, commit, config))
        return CommitInfo(
            commit=commit,
            parent=first_parent,
            position=position,
            author=author,
            committed=_dt.datetime.fromtimestamp(int(ct), _dt.UTC),
            approvers=approvers,
        )

    # -- status -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The reconcile status served at /v1/status and shown by `palisade status`."""
        doc = status(self.ledger, self.store, branch=self.branch, source=self.source, refused=self.refused,
                     last_run=self.last_run, last_error=self.last_error)
        doc["rollout"] = self.rollouts.status()
        doc["objects"] = self._objects_status()
        return doc

    def _objects_status(self) -> dict[str, Any]:
        if self.objects is None:
            return {"building": False}
        last = self.last_build
        return {"building": True, **self.objects.status(),
                "lastBuild": None if last is None else {"objects": len(last.objects), "compiled": last.compiled,
                                                        "seconds": round(last.seconds, 3)}}


def status(ledger: Ledger, store: Store, *, branch: str | None = None, source: str | None = None,
           refused: str | None = None, last_run: _dt.datetime | None = None,
           last_error: str | None = None) -> dict[str, Any]:
    """Reconcile status from the ledger and store alone (also readable beside a running reconciler)."""
    accepted, rejected = ledger.last_accepted(), ledger.last_rejected()
    index = store.index()
    if refused is None:
        events = ledger.events(limit=1)
        if events and events[0].kind == "rewrite-refused":
            refused = f"history rewritten: {events[0].subject[:12]} does not descend from the last accepted commit"
    return {
        "source": source,
        "branch": branch,
        "lastAccepted": accepted.to_json() if accepted else None,
        "lastRejected": rejected.to_json() if rejected else None,
        "version": index.version if index else None,
        "serial": index.serial if index else None,
        "stages": dict(index.stages) if index else {},
        "indexExpires": _bundle.format_time(index.expires) if index else None,
        "refused": refused,
        "lastRun": _bundle.format_time(last_run) if last_run else None,
        "lastError": last_error,
    }

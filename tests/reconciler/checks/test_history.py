"""History checks against real git: real commits, real ssh-keygen keys, real SSH-signed merges.

Each rule of DESIGN.md §2 is shown accepting the good case and rejecting the bad
one with its code. The repository is a minimal palisade repository: one pack
(`web-lockdown`) assigned to group `web`, one rule (`no-kmod`), reviewers Alice
and Bob; Dave is a developer, Mallory has a key but is no reviewer.
"""
from __future__ import annotations

import datetime as _dt
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.checks import history
from reconciler.findings import Finding, Severity, has_errors
from reconciler.repository import loader
from reconciler.repository.model import PolicyRepository, UnitKey
from support.gitrepo import GitRepo, Key, Person, make_key
from support.minimalrepo import WEB_ENFORCEMENT, enforcement, palisade_yaml, rule, write_minimal
from support.policyrepo import ALICE, BOB, MALLORY, PolicyRepo
from wire.values import Scope, State

DAVE = Person("Dave Developer", "dave@example.com")


@dataclass
class World:
    repo: GitRepo
    keys: dict[str, Key]

    def load(self, rev: str) -> PolicyRepository:
        model, findings = loader.load_revision(self.repo.path, rev)
        # a schema error would silently drop a unit and make a test pass for the wrong reason
        assert not has_errors(findings), [f.text() for f in findings]
        return model

    def check(self, base: str = "HEAD~1", head: str = "HEAD", **kwargs: object) -> list[Finding]:
        return history.check(self.repo.path, base, head, load=self.load, **kwargs)  # type: ignore[arg-type]

    def propose(self, files: dict[str, str], *, author: Person = DAVE, sign: Key | None = None,
                branch: str = "change", signed: bool = True) -> str:
        """A feature branch off main with one commit writing `files`; back on main afterwards.

        The commit is signed with `sign`, else with the author's own key when the world has one
        (`signed=False`: unsigned, so who wrote it is unproven)."""
        self.repo.branch(branch, "main")
        for path, text in files.items():
            self.repo.write(path, text)
        if sign is None and signed:
            sign = self.keys.get(author.email.split("@")[0])
        sha = self.repo.commit(f"change {', '.join(files)}", author=author, sign=sign)
        self.repo.checkout("main")
        return sha

    def remerge_approved(self, approver: Person, *, by: Person = ALICE, branch: str = "change") -> str:
        """Undo the merge, add `approver`'s signed empty approval commit to the branch, merge it again."""
        self.repo.git("reset", "-q", "--hard", "HEAD~1")
        self.repo.checkout(branch)
        self.repo.commit("Approved", author=approver, sign=self.keys[approver.email.split("@")[0]],
                         allow_empty=True)
        self.repo.checkout("main")
        return self.merge(by=by, signer=by.email.split("@")[0], branch=branch)

    def merge(self, *, by: Person | None = ALICE, signer: str | None = "alice", branch: str = "change") -> str:
        key = self.keys[signer] if signer else None
        return self.repo.merge(branch, author=by or DAVE, sign=key)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    d = tmp_path_factory.mktemp("keys")
    return {name: make_key(d, name, f"{name}@example.com") for name in ("alice", "bob", "mallory", "dave")}


@pytest.fixture()
def world(tmp_path: Path, keys: dict[str, Key]) -> World:
    """Main with one accepted commit: web-lockdown @ web and rule no-kmod at observe, then 4 days pass."""
    repo = GitRepo.init(tmp_path / "policy")
    write_minimal(repo, [(ALICE, keys["alice"]), (BOB, keys["bob"])], contributors=[(DAVE, keys["dave"])])
    repo.commit("initial policy", author=ALICE)
    repo.advance(days=4)
    return World(repo, keys)


def codes(findings: list[Finding]) -> list[str]:
    return sorted(f.code for f in findings)


# --- good cases ----------------------------------------------------------------------------------


def test_approved_one_step_advance_after_the_window_is_accepted(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge(by=ALICE, signer="alice")
    assert world.check() == []
    base = world.load("HEAD~1").config
    assert base is not None
    approvers = history.approvers(world.repo.path, "HEAD~1", "HEAD", base)
    assert [r.email for r in approvers] == [ALICE.email]


def test_revert_to_observe_needs_no_signature_and_no_window(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge()
    world.repo.advance(minutes=5)  # straight back, well inside any window
    world.propose({WEB_ENFORCEMENT: enforcement("observe")}, branch="revert")
    world.merge(by=DAVE, signer=None, branch="revert")
    assert world.check() == []


def test_removing_a_unit_needs_no_approval(world: World) -> None:
    world.repo.delete("rules/no-kmod.yaml")
    world.repo.commit("drop the rule", author=DAVE)
    assert world.check() == []


def test_new_rule_at_observe_needs_no_approval(world: World) -> None:
    world.propose({"rules/no-ptrace.yaml": rule("no-ptrace", "observe")})
    world.merge(by=DAVE, signer=None)
    assert world.check() == []


# --- the ladder ----------------------------------------------------------------------------------


def test_skipping_a_ladder_step_is_rejected_at_the_state_node(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforced")})
    world.merge()
    findings = world.check()
    assert codes(findings) == ["ladder-skip"]
    f = findings[0]
    assert (f.file, f.line) == (WEB_ENFORCEMENT, 9)  # `state: enforced` under the web scope
    assert f.severity is Severity.ERROR and "pack web-lockdown @ group:web" in f.message


def test_new_rule_created_enforced_is_rejected(world: World) -> None:
    world.propose({"rules/no-ptrace.yaml": rule("no-ptrace", "enforced")})
    world.merge()
    findings = world.check()
    assert codes(findings) == ["new-not-observe"]
    assert (findings[0].file, findings[0].line) == ("rules/no-ptrace.yaml", 8)


def test_disabling_is_going_back_and_re_enabling_starts_over(world: World) -> None:
    world.propose({"rules/no-kmod.yaml": rule("no-kmod", "enforce_ready") + "  enabled: false\n"})
    world.merge(by=DAVE, signer=None)
    assert world.check() == []  # disabled: off the ladder, like a removal
    world.propose({"rules/no-kmod.yaml": rule("no-kmod", "enforce_ready")}, branch="re-enable")
    world.merge(branch="re-enable")
    assert codes(world.check()) == ["new-not-observe"]


def test_new_assignment_at_a_new_scope_must_start_at_observe(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("observe", canary="enforce_ready")})
    world.merge()
    assert codes(world.check()) == ["new-not-observe"]


def test_two_steps_in_two_accepted_commits_are_each_one_step(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge()
    world.repo.advance(days=4)
    world.propose({WEB_ENFORCEMENT: enforcement("enforced")}, branch="second")
    world.merge(branch="second")
    assert world.check() == []
    # but judged as one change from the older accepted revision, it is a skip
    assert codes(world.check(base="HEAD~2")) == ["ladder-skip"]


# --- approvals -----------------------------------------------------------------------------------


def test_unsigned_advance_is_rejected(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge(by=ALICE, signer=None)
    findings = world.check()
    assert codes(findings) == ["unsigned"]
    assert "not signed" in findings[0].message and "Alice Reviewer" in findings[0].message


def test_advance_signed_by_a_non_reviewer_is_rejected(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge(by=MALLORY, signer="mallory")
    findings = world.check()
    assert codes(findings) == ["not-reviewer"]
    assert world.keys["mallory"].fingerprint in findings[0].message


def test_signature_that_does_not_match_the_commit_is_rejected(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge()
    world.repo.tamper("HEAD", message="Merge change (edited after signing)")
    assert codes(world.check()) == ["bad-signature"]


def test_self_approved_advance_is_rejected_and_another_reviewer_approves(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")}, author=ALICE)
    world.merge(by=ALICE, signer="alice")
    findings = world.check()
    assert codes(findings) == ["self-approved"]
    assert "Bob Reviewer" in findings[0].message  # who can approve instead

    world.repo.git("reset", "-q", "--hard", "HEAD~1")
    world.merge(by=BOB, signer="bob")
    assert world.check() == []


def test_reviewer_who_signed_a_commit_of_the_change_authored_it(world: World) -> None:
    # Alice commits under another address but signs with her key: she still wrote the change
    alias = Person("A. Reviewer", "a.reviewer@home.example")
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")}, author=alias, sign=world.keys["alice"])
    world.merge(by=ALICE, signer="alice")
    assert codes(world.check()) == ["self-approved"]


def test_direct_commit_signed_by_its_author_is_self_approved(world: World) -> None:
    world.repo.write(WEB_ENFORCEMENT, enforcement("enforce_ready"))
    world.repo.commit("advance web", author=ALICE, sign=world.keys["alice"])
    assert codes(world.check()) == ["self-approved"]


def test_squash_commit_signed_by_a_reviewer_is_their_own_change_whatever_its_author_field(world: World) -> None:
    # the author field says Dave, but nothing proves Bob did not write it: a signer of content wrote it
    world.repo.write(WEB_ENFORCEMENT, enforcement("enforce_ready"))
    world.repo.commit("advance web (#12)", author=DAVE, committer=BOB, sign=world.keys["bob"])
    findings = world.check()
    assert codes(findings) == ["self-approved"] and "Bob Reviewer" in findings[0].message


def _require_two(world: World) -> None:
    """palisade.yaml now requires two approvals (Dave's signed change, merged by Alice)."""
    world.propose({"palisade.yaml": palisade_yaml([(ALICE, world.keys["alice"]), (BOB, world.keys["bob"])],
                                                  required=2, contributors=[(DAVE, world.keys["dave"])])},
                  branch="two")
    world.merge(by=ALICE, signer="alice", branch="two")
    # (that change itself was approved by Alice under the old rule of one approval)
    assert world.check() == []
    world.repo.advance(days=4)


def test_two_required_approvals_use_a_signed_approval_commit(world: World) -> None:
    _require_two(world)
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge(by=ALICE, signer="alice")
    findings = world.check()
    assert codes(findings) == ["insufficient-approvals"] and "1 of 2" in findings[0].message

    # Bob approves the same content with an empty signed commit on the branch; Alice signs the merge
    world.remerge_approved(BOB)
    assert world.check() == []
    config = world.load("HEAD~1").config
    assert config is not None
    approvers = history.approvers(world.repo.path, "HEAD~1", "HEAD", config)
    assert sorted(r.email for r in approvers) == [ALICE.email, BOB.email]


def test_approval_commit_before_later_changes_does_not_count(world: World) -> None:
    _require_two(world)
    world.repo.branch("change", "main")
    world.repo.write(WEB_ENFORCEMENT, enforcement("enforce_ready"))
    world.repo.commit("advance", author=DAVE)
    world.repo.commit("Approved", author=BOB, sign=world.keys["bob"], allow_empty=True)
    world.repo.write("rules/no-kmod.yaml", rule("no-kmod", "enforce_ready"))  # slipped in after approval
    world.repo.commit("and the rule too", author=DAVE)
    world.repo.checkout("main")
    world.merge(by=ALICE, signer="alice")
    assert set(codes(world.check())) == {"insufficient-approvals"}


# --- reviewer list -------------------------------------------------------------------------------


def test_reviewer_list_change_needs_the_previous_reviewers(world: World) -> None:
    k = world.keys
    grown = palisade_yaml([(ALICE, k["alice"]), (BOB, k["bob"]), (MALLORY, k["mallory"])])
    world.propose({"palisade.yaml": grown}, author=MALLORY)
    world.merge(by=MALLORY, signer="mallory")  # the new reviewer approving herself
    findings = world.check()
    assert codes(findings) == ["reviewers-unapproved"]
    f = findings[0]
    assert f.file == "palisade.yaml" and f.line == 6  # `reviewers:`
    assert "reviewer Mallory <mallory@example.com> added" in f.message

    world.repo.git("reset", "-q", "--hard", "HEAD~1")
    world.merge(by=None, signer=None)
    assert codes(world.check()) == ["reviewers-unapproved"]

    # Mallory's key is nobody's in palisade.yaml: her commit proves nothing about who wrote it, so
    # Bob alone might have written it under her name; with Alice's approval commit it is approved
    world.repo.git("reset", "-q", "--hard", "HEAD~1")
    world.merge(by=BOB, signer="bob")
    findings = world.check()
    assert codes(findings) == ["reviewers-unapproved"] and "not proven" in findings[0].message
    world.remerge_approved(ALICE, by=BOB)
    assert world.check() == []


def test_new_reviewer_cannot_approve_in_the_change_that_adds_them(world: World) -> None:
    k = world.keys
    world.propose({
        "palisade.yaml": palisade_yaml([(ALICE, k["alice"]), (MALLORY, k["mallory"])]),
        WEB_ENFORCEMENT: enforcement("enforce_ready"),
    })
    world.merge(by=MALLORY, signer="mallory")
    assert codes(world.check()) == ["not-reviewer", "reviewers-unapproved"]


def test_lowering_the_observation_window_needs_approval(world: World) -> None:
    k = world.keys
    world.repo.write("palisade.yaml", palisade_yaml([(ALICE, k["alice"]), (BOB, k["bob"])], window="1h"))
    world.repo.commit("shorter window", author=DAVE)
    findings = world.check()
    assert codes(findings) == ["reviewers-unapproved"] and "minObservation 3d -> 1h" in findings[0].message


# --- the observation window ----------------------------------------------------------------------


def test_advance_before_the_window_ends_is_rejected_with_time_left(world: World) -> None:
    # web-lockdown entered observe 4 days ago; it advances, then advances again 2 days later
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge()
    world.repo.advance(days=1)
    world.repo.write("rules/no-kmod.yaml", rule("no-kmod", "observe") + "  # touched\n")
    world.repo.commit("unrelated edit of rules", author=DAVE)  # does not restart web's window
    world.repo.advance(days=1)
    world.propose({WEB_ENFORCEMENT: enforcement("enforced")}, branch="early")
    world.merge(branch="early")
    findings = world.check()
    assert codes(findings) == ["window"]
    assert "23h" in findings[0].message and "left" in findings[0].message  # 3d minus 2d and a few minutes

    # the same merge a day later is fine
    world.repo.git("reset", "-q", "--hard", "HEAD~1")
    world.repo.advance(days=1, minutes=5)
    world.merge(branch="early")
    assert world.check() == []


def test_walking_history_loads_only_base_and_head_in_full(world: World) -> None:
    # a long stretch of unrelated rule edits while web-lockdown sits at observe
    for i in range(6):
        world.repo.write(f"rules/r{i}.yaml", rule(f"r{i}", "observe"))
        world.repo.commit(f"rule r{i}", author=DAVE)
        world.repo.advance(hours=1)
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    base, head = world.repo.head(), world.merge()
    loaded: list[str] = []

    def counting(rev: str) -> PolicyRepository:
        loaded.append(rev)
        return world.load(rev)

    assert history.check(world.repo.path, base, head, load=counting) == []
    assert sorted(loaded) == sorted([base, head])
    # entered observe at the very first commit, walking back over every rule edit
    first = world.repo.git("rev-list", "--max-parents=0", "HEAD")
    entered = history.entered_at(world.repo.path, base, {UnitKey("pack", "web-lockdown", Scope(group="web")):
                                                         State.OBSERVE})
    assert list(entered.values()) == [world.repo.committed_at(first)]


def test_going_back_and_forward_again_restarts_the_window(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge()
    world.repo.advance(days=4)
    world.propose({WEB_ENFORCEMENT: enforcement("observe")}, branch="back")
    world.merge(by=DAVE, signer=None, branch="back")
    world.repo.advance(hours=1)
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")}, branch="again")
    world.merge(branch="again")
    findings = world.check()
    assert codes(findings) == ["window"] and "2d 22h left" in findings[0].message  # 3d minus 1h and the clock ticks


def test_a_commit_dated_in_the_future_cannot_shorten_the_window(world: World) -> None:
    world.repo.now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(hours=2)
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge()
    # the next step two hours later, but the merge claims to happen a week from now
    world.propose({WEB_ENFORCEMENT: enforcement("enforced")}, branch="next")
    world.repo.now = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=7)
    world.merge(branch="next")
    assert codes(world.check()) == ["window"]


# --- pull-request mode and ranges ----------------------------------------------------------------


def test_pull_request_mode_warns_that_approval_is_pending(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")}, author=ALICE)
    findings = world.check(base="main", head="change", pending_approvals=True)
    assert codes(findings) == ["approval-pending"]
    f = findings[0]
    assert f.severity is Severity.WARNING
    assert "Bob Reviewer" in f.message and "Alice Reviewer" not in f.message  # Alice wrote it


def test_pull_request_mode_still_rejects_ladder_errors(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforced")})
    assert codes(world.check(base="main", head="change", pending_approvals=True)) == ["ladder-skip"]


def test_pull_request_behind_its_target_is_judged_from_where_it_forked(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.repo.write("rules/other.yaml", rule("other", "observe"))
    world.repo.commit("main moves on", author=BOB)
    findings = world.check(base="main", head="change", pending_approvals=True)
    assert codes(findings) == ["approval-pending"]


def test_head_that_does_not_descend_from_base_is_refused(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.repo.write("rules/other.yaml", rule("other", "observe"))
    world.repo.commit("main moves on", author=BOB)
    assert codes(world.check(base="main", head="change")) == ["not-descendant"]


def test_nothing_to_check_when_base_is_head(world: World) -> None:
    assert world.check(base="HEAD", head="HEAD") == []


# --- through `palisade validate` -----------------------------------------------------------------


def _palisade(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True,
                          check=False, cwd=Path(__file__).resolve().parents[3])


def test_validate_cli_reports_history_findings_at_the_state_node(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.merge()
    ok = _palisade("validate", "--repo", str(world.repo.path), "--rev", "HEAD")
    assert ok.returncode == 0, ok.stdout + ok.stderr

    world.repo.advance(days=4)
    world.propose({WEB_ENFORCEMENT: enforcement("enforced")}, branch="unsigned")
    world.merge(by=ALICE, signer=None, branch="unsigned")
    bad = _palisade("validate", "--repo", str(world.repo.path), "--rev", "HEAD")
    assert bad.returncode == 1
    assert f"{WEB_ENFORCEMENT}:9:14: error[unsigned]:" in bad.stdout

    world.propose({WEB_ENFORCEMENT: enforcement("observe")}, branch="pr")
    world.repo.checkout("pr")
    world.repo.write(WEB_ENFORCEMENT, enforcement("enforce_ready"))
    world.repo.commit("and back up again", author=DAVE)
    pr = _palisade("validate", "--repo", str(world.repo.path), "--rev", "pr", "--base", "main",
                   "--pending-approvals", "-o", "json")
    assert pr.returncode == 0, pr.stdout + pr.stderr
    assert [f["code"] for f in json.loads(pr.stdout)] == []  # enforced -> enforce_ready is a step back


def test_ladder_units_read_alone_match_the_full_load(tmp_path: Path) -> None:
    policy = PolicyRepo.create(tmp_path)
    full = loader.load_revision(policy.path, "HEAD")[0].units()
    assert len(full) >= 6  # the example's packs at several scopes and its rules
    assert dict(history.ladder_units(policy.path, "HEAD")) == full
    # a symlinked rules file takes the other road (the source reader resolves links); same answer
    (policy.path / "rules" / "alias.yaml").symlink_to("kernel-hardening.yaml")
    policy.git.git("add", "rules/alias.yaml")
    policy.git.commit("alias", author=DAVE)
    assert dict(history.ladder_units(policy.path, "HEAD")) == loader.load_revision(policy.path, "HEAD")[0].units()


# --- a hostile insider ---------------------------------------------------------------------------
# No single person can make anything enforce that did not enforce before, whatever they write into
# author fields, commit dates or merge commits.


def test_evil_merge_changes_belong_to_its_signer(world: World) -> None:
    # Dave's signed branch adds a rule at observe; Alice edits the advance into the merge itself
    world.propose({"rules/no-ptrace.yaml": rule("no-ptrace", "observe", template="kill-ptrace-attach")})
    world.repo.merge("change", author=ALICE, sign=world.keys["alice"],
                     extra={WEB_ENFORCEMENT: enforcement("enforce_ready")})
    findings = world.check()
    assert codes(findings) == ["self-approved"]
    assert "beyond a clean merge" in findings[0].message and WEB_ENFORCEMENT in findings[0].message


def test_evil_merge_is_not_saved_by_approval_commits_on_the_branch(world: World) -> None:
    # Bob approved the branch tip; what Alice added in the merge, nobody but Alice saw
    world.propose({"rules/no-ptrace.yaml": rule("no-ptrace", "observe", template="kill-ptrace-attach")})
    world.repo.checkout("change")
    world.repo.commit("Approved", author=BOB, sign=world.keys["bob"], allow_empty=True)
    world.repo.checkout("main")
    world.repo.merge("change", author=ALICE, sign=world.keys["alice"],
                     extra={WEB_ENFORCEMENT: enforcement("enforce_ready")})
    assert codes(world.check()) == ["self-approved"]


def test_clean_merge_of_main_into_the_branch_keeps_the_change_provable(world: World) -> None:
    base = world.repo.head()
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")})
    world.repo.write("rules/no-kmod.yaml", rule("no-kmod", "observe") + "# touched\n")
    world.repo.commit("touch the rule on main", author=DAVE, sign=world.keys["dave"])
    world.repo.checkout("change")
    world.repo.merge("main", author=DAVE)  # unsigned, but it adds nothing of its own
    world.repo.checkout("main")
    world.merge(by=BOB, signer="bob")
    assert world.check(base=base) == []


def test_forged_author_field_proves_nothing(world: World) -> None:
    # Alice writes the advance under Dave's name, unsigned, and signs the merge
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")}, author=DAVE, signed=False)
    world.merge(by=ALICE, signer="alice")
    findings = world.check()
    assert codes(findings) == ["unproven-author"]
    assert "not proven" in findings[0].message and "Bob Reviewer" in findings[0].message

    # a second reviewer's approval makes it two people
    world.remerge_approved(BOB)
    assert world.check() == []


def test_a_second_key_of_a_reviewer_proves_nothing_either(world: World, tmp_path: Path) -> None:
    spare = make_key(tmp_path / "spare", "alice-spare", "dave@example.com")
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")}, author=DAVE, sign=spare)
    world.merge(by=ALICE, signer="alice")
    assert codes(world.check()) == ["unproven-author"]


def test_direct_commit_with_a_forged_author_signed_by_a_reviewer_is_self_approved(world: World) -> None:
    world.repo.write(WEB_ENFORCEMENT, enforcement("enforce_ready"))
    world.repo.commit("advance web", author=DAVE, committer=DAVE, sign=world.keys["alice"])
    assert codes(world.check()) == ["self-approved"]


def test_pending_pull_request_names_the_approvals_an_unproven_change_needs(world: World) -> None:
    world.propose({WEB_ENFORCEMENT: enforcement("enforce_ready")}, signed=False)
    findings = world.check(base="main", head="change", pending_approvals=True)
    assert codes(findings) == ["approval-pending"]
    assert "2 distinct reviewers" in findings[0].message and "not proven" in findings[0].message


# --- tightening a unit that already enforces -------------------------------------------------------

KILL = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
    - call: sys_execve
      syscall: true
      selectors:
        - matchBinaries:
            - operator: In
              values: [{values}]
          matchActions:
            - action: Sigkill
"""

KMOD_EXCEPTION = "  exceptions:\n    - binary: /usr/sbin/modprobe\n      reason: drivers at boot\n"


@pytest.fixture()
def enforcing(world: World) -> World:
    """web-lockdown (with a kill policy) and no-kmod (with an exception) both enforced, reviewed step by step."""
    world.propose({"packs/web-lockdown/kill.yaml": KILL.format(name="web-kill", values="/usr/bin/curl"),
                   "rules/no-kmod.yaml": rule("no-kmod", "observe") + KMOD_EXCEPTION}, branch="setup")
    world.merge(branch="setup")
    world.repo.advance(days=4)
    for step, signer in (("enforce_ready", "alice"), ("enforced", "bob")):
        world.propose({WEB_ENFORCEMENT: enforcement(step),
                       "rules/no-kmod.yaml": rule("no-kmod", step) + KMOD_EXCEPTION}, branch=f"to-{step}")
        world.merge(signer=signer, branch=f"to-{step}")
        assert world.check() == []
        world.repo.advance(days=4)
    return world


def test_a_new_policy_in_an_enforced_pack_is_refused_even_with_approval(enforcing: World) -> None:
    enforcing.repo.write("packs/web-lockdown/more.yaml", KILL.format(name="web-kill-more", values="/usr/bin/nc"))
    enforcing.repo.commit("one more policy", author=DAVE)  # unsigned, by a non-reviewer, straight to main
    findings = enforcing.check()
    assert codes(findings) == ["new-policy-enforcing"]
    assert "web-kill-more" in findings[0].message and "observe" in findings[0].message

    enforcing.repo.git("reset", "-q", "--hard", "HEAD~1")
    enforcing.propose({"packs/web-lockdown/more.yaml": KILL.format(name="web-kill-more", values="/usr/bin/nc")})
    enforcing.merge(by=ALICE, signer="alice")
    assert codes(enforcing.check()) == ["new-policy-enforcing"]


def test_widening_an_enforced_policy_needs_approval(enforcing: World) -> None:
    wider = KILL.format(name="web-kill", values="/usr/bin/curl, /usr/bin/wget")
    enforcing.repo.write("packs/web-lockdown/kill.yaml", wider)
    enforcing.repo.commit("kill wget too", author=DAVE)
    findings = enforcing.check()
    assert codes(findings) == ["unapproved-tightening"]
    assert "web-kill" in findings[0].message and "enforced" in findings[0].message

    enforcing.repo.git("reset", "-q", "--hard", "HEAD~1")
    enforcing.propose({"packs/web-lockdown/kill.yaml": wider})
    enforcing.merge(by=ALICE, signer="alice")
    assert enforcing.check() == []


def test_removing_an_exception_of_an_enforced_rule_needs_approval(enforcing: World) -> None:
    enforcing.repo.write("rules/no-kmod.yaml", rule("no-kmod", "enforced"))
    enforcing.repo.commit("no more modprobe exception", author=DAVE)
    findings = enforcing.check()
    assert codes(findings) == ["unapproved-tightening"] and "rule no-kmod" in findings[0].message


def test_relaxing_an_enforced_unit_needs_no_approval(enforcing: World) -> None:
    more = KMOD_EXCEPTION + "    - binary: /usr/bin/kmod\n      reason: the kmod tool\n"
    enforcing.repo.write("rules/no-kmod.yaml", rule("no-kmod", "enforced") + more)
    enforcing.repo.commit("except kmod too", author=DAVE)
    assert enforcing.check() == []


def test_widening_the_group_of_an_enforced_unit_needs_approval(enforcing: World) -> None:
    text = enforcing.repo.read("scopes/groups.yaml").replace("matchLabels: {role: web}",
                                                              "matchLabels: {role: web}\n  sensors: [db-1]")
    enforcing.repo.write("scopes/groups.yaml", text)
    enforcing.repo.commit("db-1 joins web", author=DAVE)
    findings = enforcing.check()
    assert codes(findings) == ["unapproved-tightening"] and "group web changed" in findings[0].message


def test_an_exception_ending_sooner_is_a_tightening(enforcing: World) -> None:
    # still in force today, so today's rendering is the same; from next week on, modprobe dies
    soon = (_dt.date.today() + _dt.timedelta(days=7)).isoformat()
    enforcing.repo.write("rules/no-kmod.yaml", rule("no-kmod", "enforced") + KMOD_EXCEPTION +
                         f"      expires: \"{soon}\"\n")
    enforcing.repo.commit("modprobe exception ends next week", author=DAVE)
    findings = enforcing.check()
    assert codes(findings) == ["unapproved-tightening"] and f"now ends {soon}" in findings[0].message

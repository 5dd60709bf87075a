"""`palisade advance` / `palisade revert`: the real console script on real git repositories.

Each move must touch exactly one line of a commented file, land on a new branch
without disturbing the checkout, and validate as a pull request.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.policyrepo import ALICE, DEV, PolicyRepo

PALISADE = str(Path(__file__).resolve().parents[3] / ".venv" / "bin" / "palisade")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_AUTHOR_NAME": DEV.name, "GIT_AUTHOR_EMAIL": DEV.email,
                "GIT_COMMITTER_NAME": DEV.name, "GIT_COMMITTER_EMAIL": DEV.email})
    return env


def palisade(repo: PolicyRepo, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PALISADE, command, *args, "--repo", str(repo.path)], capture_output=True, text=True,
                          timeout=120, env=_env())


def snapshot(repo: PolicyRepo) -> tuple[str, str, str, str]:
    """What the user sees: checked-out branch, HEAD, status and the file they may be editing."""
    return (repo.git.git("symbolic-ref", "HEAD"), repo.git.head(), repo.git.git("status", "--porcelain"),
            (repo.path / "rules" / "kernel-hardening.yaml").read_text())


def changed_lines(repo: PolicyRepo, a: str, b: str) -> list[str]:
    out = repo.git.git("diff", "--unified=0", a, b)
    return [x for x in out.splitlines() if x[:1] in "+-" and not x.startswith(("+++", "---"))]


def test_advance_commits_one_line_on_a_new_branch_that_validates(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    # the user is in the middle of other work: it must survive untouched
    repo.git.write("rules/kernel-hardening.yaml", repo.git.read("rules/kernel-hardening.yaml") + "# my notes\n")
    before = snapshot(repo)
    r = palisade(repo, "advance", "rule/no-exec-from-tmp", "--scope", "group:web")
    assert r.returncode == 0, r.stderr
    branch = r.stdout.strip()
    assert branch == "palisade/advance-no-exec-from-tmp-group-web-enforce_ready"
    assert snapshot(repo) == before
    assert "rules/kernel-hardening.yaml has uncommitted changes; they are not part of this move" in r.stderr
    # rules/kernel-hardening.yaml is commented and holds four rules: exactly one line differs
    assert repo.git.git("diff", "--name-only", "main", branch) == "rules/kernel-hardening.yaml"
    assert changed_lines(repo, "main", branch) == ["-  state: observe", "+  state: enforce_ready"]
    assert repo.git.git("rev-parse", f"{branch}^") == repo.git.rev("main")
    message = repo.git.git("log", "-1", "--format=%B", branch)
    assert message.startswith("advance rule no-exec-from-tmp @ group:web: observe → enforce_ready\n\n")
    # unsigned (no commit.gpgSign): who wrote it is not proven, so two reviewers must approve
    assert "Needs 2 approvals by reviewers who did not author it" in message and "not proven" in message
    assert repo.git.git("log", "-1", "--format=%ae", branch) == DEV.email
    v = palisade(repo, "validate", "--rev", branch, "--base", "main", "--pending-approvals")
    assert v.returncode == 0, v.stdout + v.stderr
    assert "warning[approval-pending]" in v.stdout and "no-exec-from-tmp" in v.stdout
    assert "error" not in v.stdout.replace("0 error(s)", "")


def test_advance_signs_its_commit_when_git_signs_commits(tmp_path: Path) -> None:
    # Dana, a contributor, has commit.gpgSign set: the branch commit proves she wrote it
    repo = PolicyRepo.create(tmp_path)
    env = {**_env(), "GIT_CONFIG_COUNT": "3", "GIT_CONFIG_KEY_0": "gpg.format", "GIT_CONFIG_VALUE_0": "ssh",
           "GIT_CONFIG_KEY_1": "user.signingkey", "GIT_CONFIG_VALUE_1": str(repo.keys["dana"].path),
           "GIT_CONFIG_KEY_2": "commit.gpgSign", "GIT_CONFIG_VALUE_2": "true"}
    r = subprocess.run([PALISADE, "advance", "rule/no-exec-from-tmp", "--scope", "group:web", "--repo",
                        str(repo.path)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    branch = r.stdout.strip()
    message = repo.git.git("log", "-1", "--format=%B", branch)
    assert "Needs a signed merge by a reviewer who did not author this change" in message
    repo.git.checkout("main")
    repo.git.merge(branch, author=ALICE, sign=repo.keys["alice"])
    v = palisade(repo, "validate", "--rev", "main", "--base", "main~1")
    assert "error[unproven-author]" not in v.stdout and "error[unsigned]" not in v.stdout, v.stdout


def test_advance_pack_on_enforcement_file(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    r = palisade(repo, "advance", "web-lockdown", "--scope", "group:web", "--branch", "pr/web")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "pr/web\n"
    assert changed_lines(repo, "main", "pr/web") == ["-      state: enforce_ready", "+      state: enforced"]
    assert "enforce_ready → enforced" in r.stderr and "next: git push -u origin pr/web" in r.stderr
    v = palisade(repo, "validate", "--rev", "pr/web", "--base", "main", "--pending-approvals")
    assert v.returncode == 0 and "approval-pending" in v.stdout


def test_dry_run_prints_the_diff_and_changes_nothing(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    refs = repo.git.git("for-each-ref")
    r = palisade(repo, "advance", "no-ptrace-attach", "--scope", "group:web", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("--- a/rules/kernel-hardening.yaml\n+++ b/rules/kernel-hardening.yaml\n@@")
    assert "\n-  state: enforce_ready\n+  state: enforced\n" in r.stdout
    assert "(dry run)" in r.stderr
    assert repo.git.git("for-each-ref") == refs and repo.git.git("status", "--porcelain") == ""


def test_revert_goes_back_without_approval(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    r = palisade(repo, "revert", "no-kernel-modules", "--scope", "fleet")
    assert r.returncode == 0, r.stderr
    branch = r.stdout.strip()
    assert branch == "palisade/revert-no-kernel-modules-fleet-observe"
    assert changed_lines(repo, "main", branch) == ["-  state: enforced", "+  state: observe"]
    assert "needs no approval" in repo.git.git("log", "-1", "--format=%B", branch)
    v = palisade(repo, "validate", "--rev", branch, "--base", "main", "--pending-approvals")
    assert (v.returncode, v.stdout) == (0, "")
    r = palisade(repo, "revert", "pack/web-lockdown", "--scope", "group:canary", "--to", "enforce_ready")
    assert r.returncode == 0 and r.stdout.strip() == "palisade/revert-web-lockdown-group-canary-enforce_ready"
    assert changed_lines(repo, "main", r.stdout.strip()) == ["-      state: enforced", "+      state: enforce_ready"]


def test_window_not_passed_is_a_warning_with_the_date(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path, min_observation="1000d")
    r = palisade(repo, "advance", "no-exec-from-tmp", "--scope", "group:web")
    assert r.returncode == 0, r.stderr
    assert "WARNING: the observation window has not passed" in r.stderr
    assert "the window is 1000d; merge on or after" in r.stderr
    assert "observation window has not passed" in repo.git.git("log", "-1", "--format=%B", r.stdout.strip())


def _ambiguous(repo: PolicyRepo) -> None:
    text = repo.git.read("rules/kernel-hardening.yaml")
    repo.git.write("rules/kernel-hardening.yaml", text + "---\napiVersion: palisade.dev/v1\nkind: Rule\n"
                   "metadata:\n  name: web-lockdown\nspec:\n  template: block-bpf-load\n  scope: {}\n"
                   "  state: observe\n")
    repo.git.commit("a rule named like a pack")


@pytest.mark.parametrize(("args", "reason", "setup"), [
    (("advance", "web-lockdown", "--scope", "group:canary"),
     "pack web-lockdown @ group:canary: it is already enforced", None),
    (("advance", "no-exec-from-tmp", "--scope", "group:web", "--to", "enforced"),
     "advance moves exactly one step: observe → enforce_ready, not to enforced", None),
    (("advance", "nope", "--scope", "fleet"), "there is no pack or rule named 'nope'", None),
    (("advance", "web-lockdown", "--scope", "fleet"),
     "'web-lockdown' is ambiguous: both a pack and a rule have that name; write pack/web-lockdown or "
     "rule/web-lockdown", _ambiguous),
    (("advance", "web-lockdown", "--scope", "group:db"),
     "pack web-lockdown has no assignment at group:db (it has: group:canary (enforced), group:web "
     "(enforce_ready)); advance moves existing assignments, it does not create them. A new assignment starts "
     "at observe: add to enforcement/web-lockdown.yaml:\n    - scope: {group: db}\n      state: observe", None),
    (("advance", "no-ptrace-attach", "--scope", "fleet"),
     "rule no-ptrace-attach applies at group:web, not fleet", None),
    (("revert", "no-exec-from-tmp", "--scope", "group:web"), "it is already at observe; nothing to revert", None),
])
def test_illegal_moves_are_refused_with_the_reason(tmp_path: Path, args: tuple[str, ...], reason: str,
                                                   setup) -> None:  # type: ignore[no-untyped-def]
    repo = PolicyRepo.create(tmp_path)
    if setup:
        setup(repo)
    refs = repo.git.git("for-each-ref")
    r = palisade(repo, *args)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert reason in r.stderr, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert repo.git.git("for-each-ref") == refs


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    r = palisade(repo, "advance", "web-lockdown", "--scope", "cluster:x")
    assert r.returncode == 2 and "use fleet, group:NAME or sensor:ID" in r.stderr
    ok = palisade(repo, "advance", "web-lockdown", "--scope", "group:web")
    assert ok.returncode == 0
    again = palisade(repo, "advance", "web-lockdown", "--scope", "group:web")
    assert again.returncode == 2 and f"branch {ok.stdout.strip()} already exists" in again.stderr
    r = palisade(repo, "advance", "web-lockdown", "--scope", "group:web", "--branch", "bad..name")
    assert r.returncode == 2 and "not a valid branch name" in r.stderr
    assert "Traceback" not in r.stderr + again.stderr

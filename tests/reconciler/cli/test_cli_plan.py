"""`palisade plan` as a team runs it on a pull request: the real console script, real git, real HTTP."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from reconciler.keys import generate
from support import serve
from support.policyrepo import ALICE, DEV, PolicyRepo

PALISADE = str(Path(__file__).resolve().parents[3] / ".venv" / "bin" / "palisade")


def plan(repo: PolicyRepo | Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = repo.path if isinstance(repo, PolicyRepo) else repo
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_AUTHOR_NAME": DEV.name, "GIT_AUTHOR_EMAIL": DEV.email,
                "GIT_COMMITTER_NAME": DEV.name, "GIT_COMMITTER_EMAIL": DEV.email})
    return subprocess.run([PALISADE, "plan", "--repo", str(path), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def objects(repo: PolicyRepo) -> set[Path]:
    return {p for p in (repo.path / ".git" / "objects").rglob("*") if p.is_file()}


def feature(repo: PolicyRepo, *edits: tuple[str, str, str], author=DEV) -> str:  # type: ignore[no-untyped-def]
    """A branch `feature` off main with `edits`, committed and signed by `author`; main stays checked out."""
    repo.git.branch("feature")
    for e in edits:
        repo.edit(*e)
    sha = repo.git.commit("feature", author=author, sign=repo.keys.get(author.email.split("@")[0]))
    repo.git.checkout("main")
    return sha


ADVANCE_WEB = ("enforcement/web-lockdown.yaml", "state: enforce_ready", "state: enforced")


def test_clean_work_tree_is_no_change(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    r = plan(repo)
    assert (r.returncode, r.stderr) == (0, "")
    assert "No changes" in r.stdout
    j = plan(repo, "-o", "json")
    assert j.returncode == 0 and json.loads(j.stdout)["changed"] is False
    # the first commit of main against nothing: every policy is added
    first = plan(repo, "--head", "HEAD", "-o", "json")
    assert first.returncode == 1
    doc = json.loads(first.stdout)
    assert doc["base"]["label"] == "(empty)" and doc["counts"]["added"] == len(
        [p for u in doc["units"] for p in u["policies"]]) > 5


def test_uncommitted_change_is_planned_without_writing_to_the_repository(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    repo.edit("packs/web-lockdown/allowlist.yaml", "                - /usr/bin/python3\n", "")
    before_objects, before_status = objects(repo), repo.git.git("status", "--porcelain")
    r = plan(repo)
    assert r.returncode == 1, r.stderr
    assert r.stdout.startswith("palisade plan: HEAD → work tree\n")
    assert "This change is TIGHTENING: web-exec-allowlist @ group:canary: policy definition changed" in r.stdout
    assert "~ web-exec-allowlist @ group:canary (pack web-lockdown): changed" in r.stdout
    assert "\n      -        - /usr/bin/python3\n" in r.stdout
    assert "(same diff as web-exec-allowlist @ group:canary above)" in r.stdout
    assert objects(repo) == before_objects
    assert repo.git.git("status", "--porcelain") == before_status


def test_ladder_forward_needs_approval_by_a_non_author(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    feature(repo, ADVANCE_WEB, author=ALICE)  # alice wrote it, so only bob can approve it
    r = plan(repo, "--head", "feature")
    assert r.returncode == 1, r.stderr
    assert "pack web-lockdown @ group:web: enforce_ready → enforced (forward)" in r.stdout
    assert "needs[approval-pending]" in r.stdout
    approval = next(line for line in r.stdout.splitlines() if "approval-pending" in line)
    assert "Bob Reviewer <bob@example.com>" in approval and "Alice" not in approval
    assert "Rollout: canary (bake 30m) → web (bake 2h) → fleet (bake 0s) (rollout default)" in r.stdout
    doc = json.loads(plan(repo, "--head", "feature", "-o", "json").stdout)
    (unit,) = doc["units"]
    assert (unit["kind"], unit["name"], unit["scope"], unit["move"]) == ("pack", "web-lockdown", "group:web",
                                                                         "forward")
    assert [f["code"] for f in doc["approvals"]] == ["approval-pending"]
    assert doc["classification"]["relaxing"] is False
    assert doc["rollout"] == {"rollout": "default", "stages": ["canary", "web", "fleet"], "fastTrack": True,
                              "fastTracked": False, "description": doc["rollout"]["description"]}
    assert doc["base"]["commit"] == repo.git.rev("main")
    explicit = json.loads(plan(repo, "--base", "main", "--head", "feature", "-o", "json").stdout)
    assert explicit["units"] == doc["units"] and explicit["base"]["label"] == "main"


def test_window_problem_is_shown(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path, min_observation="1000d")
    feature(repo, ADVANCE_WEB)
    r = plan(repo, "--head", "feature")
    assert r.returncode == 1
    assert "error[window]" in r.stdout and "the observation window is 1000d" in r.stdout
    assert "would make the reconciler reject the merge" in r.stdout


@pytest.mark.parametrize(("what", "edit", "relaxing", "counts"), [
    ("ladder back", ("rules/kernel-hardening.yaml", "state: enforced", "state: observe"), True,
     {"state": 1}),
    ("exception added", ("rules/kernel-hardening.yaml", '      expires: "2027-03-31"\n',
                         '      expires: "2027-03-31"\n    - binary: /usr/bin/strace\n      reason: oncall\n'),
     True, {"changed": 1}),
    ("rule disabled", ("rules/kernel-hardening.yaml", "  template: block-kmod-load\n",
                       "  template: block-kmod-load\n  enabled: false\n"), True, {"removed": 1}),
    ("policy removed", ("enforcement/egress-guard.yaml",
                        "    - scope: {sensor: db-legacy-7}\n      state: enforce_ready\n", ""), True, {"removed": 1}),
    ("new rule at observe", ("rules/kernel-hardening.yaml", "reason: operators ping from database hosts\n",
                             "reason: operators ping from database hosts\n---\napiVersion: palisade.dev/v1\n"
                             "kind: Rule\nmetadata:\n  name: no-bpf\nspec:\n  template: block-bpf-load\n"
                             "  scope: {group: web}\n  state: observe\n"), False, {"added": 1}),
    ("policy added by a new assignment", ("enforcement/egress-guard.yaml", "  assignments:\n",
                                          "  assignments:\n    - scope: {group: web}\n      state: observe\n"),
     False, {"added": 1}),
])
def test_each_kind_of_change(tmp_path: Path, what: str, edit: tuple[str, str, str], relaxing: bool,
                             counts: dict[str, int]) -> None:
    repo = PolicyRepo.create(tmp_path)
    feature(repo, edit)
    r = plan(repo, "--head", "feature", "-o", "json")
    assert r.returncode == 1, (what, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["classification"]["relaxing"] is relaxing, (what, doc["classification"])
    assert {k: v for k, v in doc["counts"].items() if v} == counts, what
    assert doc["rollout"]["fastTracked"] is relaxing  # example-repo's staging has fastTrack: true
    text = plan(repo, "--head", "feature").stdout
    assert ("This change is RELAXING" if relaxing else "This change is TIGHTENING") in text
    if relaxing:
        assert "fast-tracked to every stage at once" in text and "none needed (no forward steps)" in text


def test_errors_exit_2(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    r = plan(repo, "--head", "no-such-branch")
    assert r.returncode == 2 and "does not name a commit" in r.stderr and "Traceback" not in r.stderr
    r = plan(tmp_path / "nowhere")
    assert r.returncode == 2 and "not a directory" in r.stderr
    (tmp_path / "plain").mkdir()
    r = plan(tmp_path / "plain")
    assert r.returncode == 2 and "not a git repository" in r.stderr
    repo.edit("enforcement/web-lockdown.yaml", "state: enforce_ready", "state: enforce_sometimes")
    r = plan(repo)
    assert r.returncode == 2 and "enforcement/web-lockdown.yaml:11" in r.stderr and "does not load" in r.stderr
    assert "Traceback" not in r.stderr


# --- per sensor, from the fleet of a real `palisade serve` --------------------------------------


def test_per_sensor_view_from_the_fleet(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    feature(repo, ADVANCE_WEB)
    kp = generate(tmp_path / "reconciler-keys")
    with serve.running(repo.path, tmp_path / "state", kp.signing_key_path) as srv:
        # three agents report; only what they sent (id and labels) tells plan where each one is
        serve.heartbeat(srv.url, "web-1", labels={"role": "web"})
        serve.heartbeat(srv.url, "db-1", labels={"role": "db"})
        serve.heartbeat(srv.url, "node-canary-1", labels={"role": "canary"})
        r = plan(repo, "--head", "feature", "--server", srv.url)
        assert r.returncode == 1, r.stderr
        assert "  web-1 [stage web]: web-exec-allowlist: enforce_ready → enforced" in r.stdout
        assert "db-1" not in r.stdout.split("Sensors:")[1].split("Note:")[0]
        assert "3 sensor(s) known" in r.stdout and "1 affected" in r.stdout
        doc = json.loads(plan(repo, "--head", "feature", "--server", srv.url, "-o", "json").stdout)
        assert doc["sensors"] == [{"id": "web-1", "labels": {"role": "web"}, "stage": "web", "policies": [
            {"name": "web-exec-allowlist", "before": "enforce_ready", "after": "enforced", "changed": False}]}]
        # a sensor that reports later is in the next plan: the view is the server's, read each time
        serve.heartbeat(srv.url, "web-2", labels={"role": "web"})
        doc = json.loads(plan(repo, "--head", "feature", "--server", srv.url, "-o", "json").stdout)
        assert [s["id"] for s in doc["sensors"]] == ["web-1", "web-2"]


def test_per_sensor_view_skipped_when_the_server_is_down(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    repo = PolicyRepo.create(tmp_path)
    feature(repo, ADVANCE_WEB)
    r = plan(repo, "--head", "feature", "--server", url)
    assert r.returncode == 1
    assert f"Note: per-sensor view skipped: cannot reach {url}/v1/agents" in r.stdout
    doc = json.loads(plan(repo, "--head", "feature", "--server", url, "-o", "json").stdout)
    assert doc["sensors"] is None and any("skipped" in n for n in doc["notes"])
    r = plan(repo, "--head", "feature", "--server", "not-a-url")
    assert r.returncode == 2 and "expected a URL" in r.stderr and "Traceback" not in r.stderr

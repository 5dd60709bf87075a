"""The CI scripts behind action.yml and ci/gitlab/palisade.gitlab-ci.yml, run as plain shell.

A real policy repository with a pull-request branch, the real `palisade` console
script, and a fake forge: a loopback HTTP server that answers the comment listing
and records what is posted, with the headers it came with.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.checks import plancomment
from support.policyrepo import DEV, PolicyRepo

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "ci" / "scripts"
BIN = ROOT / ".venv" / "bin"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Forge:
    """What the fake forge was asked, and the comments it lists."""

    url: str
    requests: list[Request] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]


@pytest.fixture(scope="module")
def forge_server() -> Iterator[Forge]:
    forge = Forge("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            forge.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                          self.rfile.read(length)))
            reply = json.dumps(forge.comments if self.command == "GET" else {"id": 1}).encode()
            self.send_response(200 if self.command in ("GET", "PATCH", "PUT") else 201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = do_POST = do_PATCH = do_PUT = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    forge.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield forge
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def forge(forge_server: Forge) -> Forge:
    forge_server.requests.clear()
    forge_server.comments.clear()
    return forge_server


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITHUB_", "CI_", "PALISADE"))}
    env.update({"PATH": f"{BIN}:{os.environ['PATH']}", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"})
    env.update(extra)
    return env


def sh(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPTS / script)], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=120)


@pytest.fixture()
def pull_request(tmp_path: Path) -> PolicyRepo:
    """A repository checked out at a pull request's head: `feature` adds an exception to a rule."""
    repo = PolicyRepo.create(tmp_path)
    repo.git.branch("feature")
    repo.edit("rules/kernel-hardening.yaml", '      expires: "2027-03-31"\n',
              '      expires: "2027-03-31"\n    - binary: /usr/bin/strace\n      reason: oncall\n')
    repo.git.commit("Let oncall strace", author=DEV, sign=repo.keys["dana"])
    return repo


def test_validate_writes_sarif_and_code_quality(pull_request: PolicyRepo, tmp_path: Path) -> None:
    repo = pull_request
    sarif, quality = tmp_path / "out.sarif", tmp_path / "gl-code-quality-report.json"
    r = sh("validate.sh", repo.path, PALISADE_BASE="main", PALISADE_SARIF=str(sarif),
           PALISADE_CODEQUALITY=str(quality))
    assert r.returncode == 0, r.stderr + r.stdout
    assert json.loads(sarif.read_text())["runs"][0]["results"] == []
    assert json.loads(quality.read_text()) == [] and "0 error(s), 0 warning(s)" in r.stdout

    # a broken policy on the branch: exit 1, the finding in the log, the SARIF and the report
    repo.edit("packs/web-lockdown/allowlist.yaml", "action: Sigkill", "action: SigKil")
    repo.git.commit("typo", author=DEV)
    r = sh("validate.sh", repo.path, PALISADE_BASE="main", PALISADE_SARIF=str(sarif),
           PALISADE_CODEQUALITY=str(quality))
    assert r.returncode == 1, r.stderr + r.stdout
    assert "packs/web-lockdown/allowlist.yaml:20:23: error[schema]:" in r.stdout
    (result,) = json.loads(sarif.read_text())["runs"][0]["results"]
    assert result["ruleId"] == "schema" and result["level"] == "error"
    (issue,) = json.loads(quality.read_text())
    assert issue["location"] == {"path": "packs/web-lockdown/allowlist.yaml", "lines": {"begin": 20}}
    assert issue["severity"] == "major" and issue["check_name"] == "schema" and len(issue["fingerprint"]) == 64

    plain = tmp_path / "plain"
    plain.mkdir()
    r = sh("validate.sh", plain, PALISADE_BASE="main", PALISADE_SARIF=str(tmp_path / "none.sarif"))
    assert r.returncode == 2 and not (tmp_path / "none.sarif").exists()  # not a git repository: no log


def test_plan_comment_on_github(pull_request: PolicyRepo, forge: Forge, tmp_path: Path) -> None:
    expected = subprocess.run([str(BIN / "palisade"), "plan", "--repo", ".", "--base", "main", "--head", "HEAD",
                               "-o", "markdown"], cwd=pull_request.path, env=_env(), capture_output=True,
                              text=True, timeout=120)
    assert expected.returncode == 1 and expected.stdout.startswith(plancomment.MARKER)
    github = {"PALISADE_FORGE": "github", "PALISADE_BASE": "main", "GITHUB_API_URL": forge.url,
              "GITHUB_REPOSITORY": "acme/policies", "PALISADE_PR": "7", "GITHUB_TOKEN": "t0ken",
              "PALISADE_PLAN_FILE": str(tmp_path / "plan.md")}
    r = sh("plan-comment.sh", pull_request.path, **github)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plan.md").read_text() == expected.stdout
    (post,) = forge.writes()
    assert (post.method, post.path) == ("POST", "/repos/acme/policies/issues/7/comments")
    assert post.headers["authorization"] == "Bearer t0ken"
    assert json.loads(post.body) == {"body": expected.stdout}
    assert "**RELAXING**" in expected.stdout and "/usr/bin/strace" in expected.stdout

    # the next push replaces the plan comment instead of adding one
    forge.requests.clear()
    forge.comments[:] = [{"id": 11, "body": "LGTM"}, {"id": 12, "body": expected.stdout}]
    r = sh("plan-comment.sh", pull_request.path, **github)
    assert r.returncode == 0, r.stderr
    (patch,) = forge.writes()
    assert (patch.method, patch.path) == ("PATCH", "/repos/acme/policies/issues/comments/12")
    assert json.loads(patch.body)["body"] == expected.stdout


def test_plan_comment_on_gitlab(pull_request: PolicyRepo, forge: Forge, tmp_path: Path) -> None:
    gitlab = {"PALISADE_FORGE": "gitlab", "PALISADE_BASE": "main", "CI_API_V4_URL": f"{forge.url}/api/v4",
              "CI_PROJECT_ID": "42", "CI_MERGE_REQUEST_IID": "3", "PALISADE_GITLAB_TOKEN": "glpat",
              "PALISADE_PLAN_FILE": str(tmp_path / "plan.md")}
    r = sh("plan-comment.sh", pull_request.path, **gitlab)
    assert r.returncode == 0, r.stderr
    (listing,) = [q for q in forge.requests if q.method == "GET"]
    assert listing.path.startswith("/api/v4/projects/42/merge_requests/3/notes?")
    (post,) = forge.writes()
    assert (post.method, post.path) == ("POST", "/api/v4/projects/42/merge_requests/3/notes")
    assert post.headers["private-token"] == "glpat"
    body = json.loads(post.body)["body"]
    assert body == (tmp_path / "plan.md").read_text() and body.startswith(plancomment.MARKER)


def test_plan_comment_failures_exit_2(pull_request: PolicyRepo, forge: Forge) -> None:
    r = sh("plan-comment.sh", pull_request.path, PALISADE_FORGE="github")
    assert r.returncode == 2 and "PALISADE_BASE" in r.stderr
    r = sh("plan-comment.sh", pull_request.path, PALISADE_BASE="no-such-rev")
    assert r.returncode == 2 and "palisade plan failed" in r.stderr
    down = {"PALISADE_FORGE": "github", "PALISADE_BASE": "main", "GITHUB_API_URL": "http://127.0.0.1:9",
            "GITHUB_REPOSITORY": "a/b", "PALISADE_PR": "1", "GITHUB_TOKEN": "t"}
    r = sh("plan-comment.sh", pull_request.path, **down)
    assert r.returncode == 2 and "cannot list the comments" in r.stderr
    assert forge.requests == []


def test_action_and_template_call_the_scripts() -> None:
    """The YAML only wires inputs to the scripts tested above."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "ci/scripts/validate.sh" in runs and "ci/scripts/plan-comment.sh" in runs
    assert any(s.get("uses", "").startswith("github/codeql-action/upload-sarif@") for s in steps)
    gitlab = yaml.safe_load((ROOT / "ci" / "gitlab" / "palisade.gitlab-ci.yml").read_text())
    assert gitlab["palisade-validate"]["artifacts"]["reports"]["codequality"] == "gl-code-quality-report.json"
    assert "ci/scripts/validate.sh" in " ".join(gitlab["palisade-validate"]["script"])
    assert gitlab["palisade-plan"]["variables"]["PALISADE_FORGE"] == "gitlab"
    assert "ci/scripts/plan-comment.sh" in " ".join(gitlab["palisade-plan"]["script"])
    for script in ("validate.sh", "plan-comment.sh"):
        assert os.access(SCRIPTS / script, os.X_OK)
    assert f"MARKER='{plancomment.MARKER}'" in (SCRIPTS / "plan-comment.sh").read_text()

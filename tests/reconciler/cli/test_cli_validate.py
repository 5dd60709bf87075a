"""`palisade validate` as a team's CI runs it: the real console script, real git, exit codes 0/1/2."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from support.policyrepo import PolicyRepo

PALISADE = str(Path(__file__).resolve().parents[3] / ".venv" / "bin" / "palisade")
FINDING = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning)\[(?P<code>[a-z-]+)\]: .+$")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PALISADE, "validate", *args], capture_output=True, text=True, timeout=120)


def test_valid_repository_is_quiet(example_copy: Path) -> None:
    r = _run("--repo", str(example_copy))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_errors_exit_1_with_located_findings(example_copy: Path) -> None:
    p = example_copy / "packs" / "web-lockdown" / "allowlist.yaml"
    p.write_text(p.read_text().replace("action: Sigkill", "action: SigKil"))
    r = _run("--repo", str(example_copy))
    assert r.returncode == 1
    (line,) = r.stdout.splitlines()
    m = FINDING.match(line)
    assert m and m["file"] == "packs/web-lockdown/allowlist.yaml" and m["line"] == "20"
    assert m["code"] == "schema" and "Sigkill" in line
    assert "1 error(s)" in r.stderr

    j = _run("--repo", str(example_copy), "-o", "json")
    assert j.returncode == 1
    (finding,) = json.loads(j.stdout)
    assert set(finding) == {"file", "line", "column", "severity", "code", "message"}
    assert (finding["file"], finding["line"], finding["severity"]) == ("packs/web-lockdown/allowlist.yaml", 20,
                                                                        "error")


def test_usage_and_io_errors_exit_2(tmp_path: Path, example_copy: Path) -> None:
    r = _run("--repo", str(tmp_path / "missing"))
    assert r.returncode == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr
    r = _run("--repo", str(example_copy), "--rev", "HEAD")
    assert r.returncode == 2 and "not a git repository" in r.stderr and "Traceback" not in r.stderr
    r = _run("--repo", str(example_copy), "-o", "yaml")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_history_through_the_cli(tmp_path: Path) -> None:
    policy = PolicyRepo.create(tmp_path)
    edit = [("rules/kernel-hardening.yaml", "state: observe\n  params", "state: enforce_ready\n  params")]
    unsigned = policy.change("advance without approval", edit, wait_days=4)
    r = _run("--repo", str(policy.path), "--rev", unsigned)
    assert r.returncode == 1
    codes = {FINDING.match(x)["code"] for x in r.stdout.splitlines() if FINDING.match(x)}  # type: ignore[index]
    assert codes == {"unsigned"}

    # the same change in a pull request (no merge yet): a pending approval is a warning
    policy.git.git("reset", "-q", "--hard", "HEAD~1")
    policy.git.branch("pr")
    policy.edit(*edit[0])
    policy.git.commit("advance no-exec-from-tmp")
    r = _run("--repo", str(policy.path), "--base", "main", "--rev", "pr", "--pending-approvals", "-o", "json")
    assert r.returncode == 0, r.stdout
    assert [f["code"] for f in json.loads(r.stdout)] == ["approval-pending"]


def test_a_policy_no_agent_can_load_is_a_warning(example_copy: Path) -> None:
    """Valid for Tetragon, outside Palisade's engine: CI passes, and says agents will refuse it."""
    # matchParentBinaries followChildren: Tetragon takes it, no Palisade engine runs it on any kernel
    (example_copy / "packs" / "baseline-observe" / "fd.yaml").write_text(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: fd-install\nspec:\n"
        "  kprobes:\n    - call: fd_install\n      syscall: false\n      selectors:\n"
        "        - matchParentBinaries:\n"
        "            - {operator: In, followChildren: true, values: [/usr/bin/bash]}\n")
    r = _run("--repo", str(example_copy), "-o", "json")
    assert r.returncode == 0, r.stdout
    (finding,) = json.loads(r.stdout)
    assert (finding["file"], finding["severity"], finding["code"]) == (
        "packs/baseline-observe/fd.yaml", "warning", "engine-unsupported")
    assert "followChildren" in finding["message"]


def test_objects_mode_compiles_every_policy_as_the_reconciler_will(example_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "objects"
    r = _run("--repo", str(example_copy), "--objects", "--objects-cache", str(cache))
    assert r.returncode == 0, r.stderr
    built = list(cache.rglob("*.o"))
    assert built, "no object was compiled"
    assert all(o.read_bytes()[:4] == b"\x7fELF" for o in built)

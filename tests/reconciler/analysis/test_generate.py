"""`palisade generate` from Tetragon events: the shared corpus and crafted startup sequences, into real
git repositories, checked by `palisade validate`."""
from __future__ import annotations

import datetime as _dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.analysis import generate
from reconciler.cli import main
from support.policyrepo import PolicyRepo

T0 = _dt.datetime(2026, 3, 1, 8, 0, tzinfo=_dt.UTC)


def _exec(binary: str, parent: str | None, seconds: float, pod: str = "shop-7d4b9c6f5d-x2x9z") -> dict[str, Any]:
    labels = {"app": "shop", "pod-template-hash": "7d4b9c6f5d"}
    start = (T0 + _dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    proc = {"binary": binary, "start_time": start, "pod": {"namespace": "store", "name": pod, "pod_labels": labels}}
    ev: dict[str, Any] = {"process_exec": {"process": proc}, "time": start}
    if parent is not None:
        ev["process_exec"]["parent"] = {"binary": parent, "pod": {"namespace": "store", "name": "other-pod"}}
    return ev


def _startup_events(path: Path) -> Path:
    events = [
        _exec("/bin/sh", "/usr/bin/containerd-shim-runc-v2", 0),
        _exec("/usr/bin/apt-get", "/bin/sh", 2),
        _exec("/usr/bin/dpkg", "/usr/bin/apt-get", 3),
        _exec("/usr/bin/curl", "/bin/sh", 10),
        _exec("/usr/sbin/nginx", "/bin/sh", 12),
        _exec("/usr/sbin/nginx", "/bin/sh", 300),  # restarted later: a run-time binary
        _exec("/usr/bin/python3", "/usr/sbin/nginx", 20),  # not under a shell or installer
        _exec("/usr/bin/ls", None, 0, pod="other-5f5f5f5f5f-abcde"),  # another workload
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def _startup(tmp_path: Path) -> tuple[PolicyRepo, list[str]]:
    """A policy repository and the arguments of `palisade generate` for workload shop's startup events
    into it."""
    repo = PolicyRepo.create(tmp_path)
    events = _startup_events(tmp_path / "events.jsonl")
    return repo, ["generate", "--workload", "shop", "--events", str(events), "--repo", str(repo.path)]


def _policy(repo: Path, name: str) -> dict[str, Any]:
    text = (repo / f"packs/{name}/exec-allowlist.yaml").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def _values(doc: dict[str, Any]) -> list[str]:
    [tp] = doc["spec"]["tracepoints"]
    [sel] = tp["selectors"]
    assert sel["matchActions"] == [{"action": "Sigkill"}]
    assert sel["matchBinaries"][0]["operator"] == "NotIn"
    return list(sel["matchBinaries"][0]["values"])


def test_from_the_shared_tetragon_samples_the_policy_validates(corpus: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    repo = PolicyRepo.create(tmp_path)
    assert main(["generate", "--workload", "xwing", "--events", str(corpus / "events"), "--repo", str(repo.path),
                 "--owner", "alliance@example.com", "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pack"] == "xwing-allowlist" and out["review"] == []
    doc = _policy(repo.path, "xwing-allowlist")
    assert doc["kind"] == "TracingPolicyNamespaced" and doc["metadata"]["namespace"] == "default"
    assert doc["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "xwing", "class": "xwing",
                                                         "org": "alliance"}
    values = _values(doc)
    # what the samples show xwing running (process_exec, and the parents and kprobe subjects in the pod)
    assert {"/usr/bin/curl", "/bin/bash", "/usr/bin/whoami", "/usr/bin/nsenter"} <= set(values)
    assert "/usr/bin/containerd-shim-runc-v2" not in values  # a parent outside the pod
    enforcement = yaml.safe_load((repo.path / "enforcement/xwing-allowlist.yaml").read_text())
    assert enforcement["spec"]["assignments"] == [{"scope": {}, "state": "observe"}]
    assert main(["validate", "--repo", str(repo.path)]) == 0, capsys.readouterr()


def test_a_deployment_pod_name_is_its_workload_and_replica_labels_are_dropped(corpus: Path, tmp_path: Path) -> None:
    events = list(generate.read_events(corpus / "events" / "testdata_events.jsonl"))
    execs = generate.execs_from_events(events, "deathstar")
    assert [e.binary for e in execs] == ["/starwars-docker", "/starwars-docker"]  # two replicas
    allow = generate.build("deathstar", execs)
    assert dict(allow.labels) == {"app.kubernetes.io/name": "deathstar", "class": "deathstar", "org": "empire"}


def test_startup_children_of_installers_and_shells_are_held_for_review(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    repo, generate_shop = _startup(tmp_path)
    assert main([*generate_shop, "--scope", "group:web"]) == 0
    out = capsys.readouterr().out
    doc = _policy(repo.path, "shop-allowlist")
    assert _values(doc) == ["/bin/sh", "/usr/bin/python3", "/usr/sbin/nginx"]
    assert doc["kind"] == "TracingPolicyNamespaced" and doc["metadata"]["namespace"] == "store"
    assert doc["spec"]["podSelector"]["matchLabels"] == {"app": "shop"}  # pod-template-hash dropped
    text = (repo.path / "packs/shop-allowlist/exec-allowlist.yaml").read_text()
    for held in ("/usr/bin/apt-get", "/usr/bin/dpkg", "/usr/bin/curl"):
        assert f"#   {held}  (" in text  # listed for the reviewer in the policy file
        assert f"REVIEW  {held}" in out
    assert "a package manager" in text and "a shell" in text
    enforcement = yaml.safe_load((repo.path / "enforcement/shop-allowlist.yaml").read_text())
    assert enforcement["spec"]["assignments"] == [{"scope": {"group": "web"}, "state": "observe"}]
    assert main(["validate", "--repo", str(repo.path)]) == 0, capsys.readouterr()

    # the operator allows one of them after review: a second run with --allow and --force
    assert main([*generate_shop, "--allow", "/usr/bin/curl", "--force"]) == 0
    assert "/usr/bin/curl" in _values(_policy(repo.path, "shop-allowlist"))


def test_branch_mode_commits_without_touching_the_work_tree(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    repo, generate_shop = _startup(tmp_path)
    assert main([*generate_shop, "--branch", "allowlist-shop"]) == 0
    assert not (repo.path / "packs/shop-allowlist").exists()
    assert subprocess.run(["git", "-C", str(repo.path), "status", "--porcelain"], capture_output=True,
                          text=True, check=True).stdout == ""
    files = repo.git.git("ls-tree", "-r", "--name-only", "allowlist-shop")
    assert "packs/shop-allowlist/exec-allowlist.yaml" in files.split()
    assert main(["validate", "--repo", str(repo.path), "--rev", "allowlist-shop"]) == 0, capsys.readouterr()


@pytest.mark.parametrize(("argv", "message"), [
    (["--workload", "nobody"], "no events of workload 'nobody'"),
    (["--workload", "shop", "--startup", "soon"], "duration"),
    (["--workload", "shop", "--scope", "team:x"], "use fleet, group:NAME or sensor:ID"),
    (["--workload", "shop", "--allow", "curl"], "absolute path"),
    (["--workload", "shop", "--name", "Bad_Name"], "not a valid pack name"),
])
def test_bad_input_is_exit_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             argv: list[str], message: str) -> None:
    repo = PolicyRepo.create(tmp_path)
    events = _startup_events(tmp_path / "events.jsonl")
    assert main(["generate", "--events", str(events), "--repo", str(repo.path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (repo.path / "packs/shop-allowlist").exists()


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, argv = _startup(tmp_path)
    assert main(argv) == 0
    before = (repo.path / "packs/shop-allowlist/exec-allowlist.yaml").read_bytes()
    assert main(argv) == 2
    assert "already exist" in capsys.readouterr().err
    assert (repo.path / "packs/shop-allowlist/exec-allowlist.yaml").read_bytes() == before


def test_unreadable_events_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = PolicyRepo.create(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"process_exec": {}}\nnot json\n')
    for path, message in ((bad, "bad.jsonl:2: not a JSON event"), (tmp_path / "missing", "no such file")):
        assert main(["generate", "--workload", "shop", "--events", str(path), "--repo", str(repo.path)]) == 2
        assert message in capsys.readouterr().err


def test_events_without_pod_labels_or_namespace_need_a_selector(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    repo = PolicyRepo.create(tmp_path)
    ev = {"process_exec": {"process": {"binary": "/usr/bin/true", "pod": {"name": "solo"}}}}
    path = tmp_path / "e.json"
    path.write_text(json.dumps(ev))
    argv = ["generate", "--workload", "solo", "--events", str(path), "--repo", str(repo.path)]
    assert main(argv) == 2
    assert "--selector" in capsys.readouterr().err
    assert main([*argv, "--selector", "app=solo"]) == 0
    doc = _policy(repo.path, "solo-allowlist")
    assert doc["kind"] == "TracingPolicy" and doc["spec"]["podSelector"]["matchLabels"] == {"app": "solo"}


def test_a_binary_seen_only_when_a_policy_killed_it_is_held_for_review() -> None:
    pod = {"namespace": "store", "name": "shop", "pod_labels": {"app": "shop"}}
    events = [
        {"process_exec": {"process": {"binary": "/usr/sbin/nginx", "pod": pod}}},
        # killed by an enforced policy (Tetragon reports the action it took; palisade also says acted)
        {"process_tracepoint": {"process": {"binary": "/usr/bin/nc", "pod": pod}, "policy_name": "x",
                                "action": "KPROBE_ACTION_SIGKILL"}, "palisade": {"acted": True}},
        # an action only reported (observe): the binary ran, it is evidence like any other
        {"process_tracepoint": {"process": {"binary": "/usr/bin/curl", "pod": pod}, "policy_name": "x",
                                "action": "KPROBE_ACTION_SIGKILL"}, "palisade": {"acted": False}},
    ]
    allow = generate.build("shop", generate.execs_from_events(events, "shop"))
    assert allow.binaries == ("/usr/bin/curl", "/usr/sbin/nginx")
    [held] = allow.review
    assert held.binary == "/usr/bin/nc" and held.reason == "seen only when a policy killed or denied it"

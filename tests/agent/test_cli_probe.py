"""`palisade-agent probe`, run as the installed console script."""
from __future__ import annotations

import json
import subprocess

from bpf.probe import FEATURE_NAMES, TETRA_NAMES
from support import console


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console.script("palisade-agent"), *args], capture_output=True, text=True, timeout=120)


def test_probe_json_reports_this_kernel(require_kernel: None) -> None:
    result = _run("probe", "-o", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    features = doc["features"]
    assert list(features) == list(FEATURE_NAMES)
    for name in ("syscall_tracepoints", "send_signal", "cgroup_sock_create", "cgroup_connect4"):
        assert features[name]["available"] is True, features[name]["reason"]
        assert features[name]["test_programs"], f"{name} claimed without a loaded test program"
    assert features["kprobes"] == {
        "available": False,
        "reason": features["kprobes"]["reason"],
        "test_programs": [],
    }
    assert "kprobes" in features["kprobes"]["reason"]
    assert features["bpf_lsm"]["available"] is False
    assert "fails to load" in features["bpf_lsm"]["reason"]


def test_probe_text_is_a_table(require_kernel: None) -> None:
    result = _run("probe")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("kernel ")
    assert lines[1].split() == ["FEATURE", "AVAILABLE", "REASON"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert rows["kprobes"] == "no"
    assert rows["send_signal"] == "yes"
    assert set(rows) == set(FEATURE_NAMES)


def test_probe_tetra_prints_tetragon_names(require_kernel: None) -> None:
    result = _run("probe", "-o", "tetra")
    assert result.returncode == 0, result.stderr
    # `tetra probe`'s shape: one `name: value` line per feature, in its order
    rows = dict(line.split(": ") for line in result.stdout.splitlines())
    assert tuple(rows) == TETRA_NAMES
    assert set(rows.values()) <= {"true", "false", "unknown"}
    features = json.loads(_run("probe", "-o", "json").stdout)["features"]
    for tetra, ours in (("signal", "send_signal"), ("kprobe_multi", "kprobe_multi"), ("lsm", "bpf_lsm"),
                        ("fmodret", "fmod_ret"), ("override_return", "override_return"), ("fentry", "fentry")):
        assert rows[tetra] == str(features[ours]["available"]).lower(), tetra
    assert rows["signal"] == "true"
    assert rows["kprobe_multi"] == "false"
    assert rows["buildid"] == "unknown"  # palisade does not probe it


def test_bad_usage_is_exit_2_without_traceback() -> None:
    result = _run("probe", "-o", "yaml")
    assert result.returncode == 2
    assert "invalid choice: 'yaml'" in result.stderr
    assert "Traceback" not in result.stderr
    result = _run()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr

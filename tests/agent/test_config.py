"""The configuration file and flags: parsed at the edge, clear messages for bad input."""
from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load, parse_labels
from agent.errors import ConfigError


def test_file_and_flags_merge(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("server: http://127.0.0.1:8740\npubkeys: keys/palisade.pub\nsensorId: node-1\nstate: state\n"
                 "labels: {role: web}\nworkloads:\n  - {name: web, namespace: shop, labels: {app: web}, "
                 "cgroup: /shop/web}\nintervals: {wait: 20, drift: 0.5}\n")
    cfg = load(f, {"sensorId": "node-2", "labels": None})
    assert cfg.sensor_id == "node-2"  # the flag wins
    assert cfg.labels == (("role", "web"),)
    assert cfg.pubkeys == (tmp_path / "keys" / "palisade.pub",)  # relative to the file
    assert cfg.workloads[0].label_map == {"app": "web"} and cfg.workloads[0].namespace == "shop"
    assert (cfg.intervals.wait, cfg.intervals.drift, cfg.intervals.heartbeat) == (20.0, 0.5, 10.0)


@pytest.mark.parametrize(("text", "message"), [
    ("server: http://x\nsurprise: 1\n", "Additional properties"),
    ("workloads: [{name: web}]\n", "cgroup"),
    ("intervals: {drift: 0}\n", "intervals.drift"),
    ("server: [unclosed\n", "not valid YAML"),
])
def test_bad_files_are_refused_with_where_and_why(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load(f, {"server": "http://127.0.0.1:1", "pubkeys": ["k"], "sensorId": "n", "state": "s"})


def test_missing_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="--server, --pubkey"):
        load(None, {"sensorId": "n", "state": "s"})


def test_labels_flag() -> None:
    assert parse_labels("role=web, zone=eu") == (("role", "web"), ("zone", "eu"))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_labels("role")
    with pytest.raises(ConfigError, match="twice"):
        parse_labels("a=1,a=2")

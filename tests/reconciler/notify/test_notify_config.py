"""`palisade serve --notify FILE`: the file read once into frozen values; a bad one is exit 2 with its reason."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.notify.config import NotifyConfigError, TargetKind, load
from reconciler.notify.events import EventKind
from reconciler.repository.schema import schemas_dir

ROOT = Path(__file__).resolve().parents[3]
SECRET = "https://hooks.example.com/services/T000/B000/very-secret-token"
GOOD = """\
apiVersion: palisade.dev/v1
kind: Notifications
spec:
  queueLimit: 50
  backoff: {initial: 2s, max: 1m}
  links: [{title: Console, url: "https://palisade.example.com/ui"}]
  commitUrl: "https://git.example.com/policy/commit/{commit}"
  targets:
  - name: ops
    kind: generic
    urlFile: ops.url
  - name: chat
    kind: slack
    urlFile: secrets/chat.url
    events: [rollout-halted, rollout-rolled-back]
    timeout: 2s
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "secrets").mkdir(exist_ok=True)
    (tmp_path / "ops.url").write_text("http://127.0.0.1:9/hook\n")
    (tmp_path / "secrets" / "chat.url").write_text(SECRET + "\n")
    path = tmp_path / "notify.yaml"
    path.write_text(text)
    return path


def test_a_good_file(tmp_path: Path) -> None:
    config = load(_write(tmp_path, GOOD))
    ops, chat = config.targets
    assert (ops.name, ops.kind, ops.url, ops.timeout) == ("ops", TargetKind.GENERIC, "http://127.0.0.1:9/hook", 5.0)
    assert ops.events == frozenset(EventKind)  # default: every kind
    assert (chat.kind, chat.url, chat.timeout) == (TargetKind.SLACK, SECRET, 2.0)
    assert chat.events == {EventKind.ROLLOUT_HALTED, EventKind.ROLLOUT_ROLLED_BACK}
    assert (config.queue_limit, config.backoff.initial, config.backoff.maximum) == (50, 2.0, 60.0)
    assert config.links == (("Console", "https://palisade.example.com/ui"),)
    assert config.commit_url == "https://git.example.com/policy/commit/{commit}"
    assert SECRET not in repr(config)  # the URL stays out of reprs (logs, tracebacks)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chat.url = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("text", "message"), [
    ("kind: Notifications\n", "lacks apiVersion"),
    (GOOD.replace("kind: Notifications", "kind: Alerts"), "expected apiVersion palisade.dev/v1 and kind Notifications"),
    (GOOD.replace("kind: slack", "kind: teams"), "spec.targets[1].kind must be one of generic, slack"),
    (GOOD.replace("[rollout-halted,", "[rollout-halt,"), "spec.targets[1].events: unknown event 'rollout-halt'"),
    (GOOD.replace("urlFile: ops.url", "urlFile: missing.url"), "spec.targets[0].urlFile"),
    (GOOD.replace("timeout: 2s", "timeout: soon"), "spec.targets[1].timeout"),
    (GOOD.replace("queueLimit: 50", "queueLimit: 0"), "spec.queueLimit must be a whole number of 1 or more"),
    (GOOD.replace("name: chat", "name: ops"), "two targets are named 'ops'"),
    (GOOD.replace("    timeout: 2s", "    url: http://x"), "spec.targets[1] has unknown member(s) url"),
    ("spec: [", "not YAML"),
    (GOOD.replace("/commit/{commit}", "/commit/"), "spec.commitUrl must be an http(s) URL holding {commit}"),
    (GOOD.replace("url: \"https://palisade", "url: \"ftp://palisade"), "spec.links[0] needs a title and an http(s)"),
])
def test_bad_files_say_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(NotifyConfigError) as e:
        load(_write(tmp_path, text))
    assert message in str(e.value)
    assert str(tmp_path / "notify.yaml") in str(e.value)


def test_a_url_file_without_a_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    (tmp_path / "ops.url").write_text("hooks.example.com/very-secret\n")
    with pytest.raises(NotifyConfigError) as e:
        load(path)
    assert "must hold one http(s) URL" in str(e.value) and "very-secret" not in str(e.value)


def test_serve_exits_2_on_a_bad_notify_file(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("kind: slack", "kind: teams"))
    out = subprocess.run([sys.executable, "-m", "reconciler.cli", "serve", "--repo", str(tmp_path), "--state",
                          str(tmp_path / "state"), "--key", str(tmp_path / "no-key"), "--notify", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "spec.targets[1].kind must be one of generic, slack" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "state").exists()  # refused before anything is taken or made


@pytest.mark.parametrize(("text", "valid"), [
    (GOOD, True),
    ("apiVersion: palisade.dev/v1\nkind: Notifications\nspec: {targets: [{name: a, kind: slack, urlFile: ops.url}]}\n",
     True),
    (GOOD.replace("kind: slack", "kind: teams"), False),
    (GOOD.replace("[rollout-halted,", "[rollout-halt,"), False),
    (GOOD.replace("queueLimit: 50", "queueLimit: 0"), False),
    (GOOD.replace("    timeout: 2s", "    url: http://x"), False),
    (GOOD.replace("/commit/{commit}", "/commit/"), False),
    (GOOD.replace("timeout: 2s", "timeout: soon"), False),
])
def test_the_schema_agrees_with_the_reader(tmp_path: Path, text: str, valid: bool) -> None:
    import json

    import jsonschema
    import yaml

    path = _write(tmp_path, text)
    schema = jsonschema.Draft202012Validator(json.loads((schemas_dir() / "notifications.schema.json").read_text()))
    assert schema.is_valid(yaml.safe_load(text)) is valid
    if valid:
        load(path)
    else:
        with pytest.raises(NotifyConfigError):
            load(path)

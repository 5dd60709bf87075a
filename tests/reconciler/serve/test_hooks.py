"""The webhook receivers' configuration and verification (reconciler/serve/hooks.py), without HTTP: real
files for the configuration and secrets, real HMACs, clocks the test moves."""
from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

from reconciler.cli import main as cli_main
from reconciler.serve.hooks import (
    BadPayload,
    BadSignature,
    HookKind,
    HooksFileError,
    Ignored,
    IgnoreReason,
    MissingHeader,
    MissingSignature,
    Push,
    RateLimited,
    Receiver,
    Replayed,
    SecretFileError,
    StaleTimestamp,
    UnknownReceiver,
    Webhooks,
    generic_signature,
    load_hooks,
    verify,
)

SECRET = b"s3cret-0123456789abcdef"
HEAD = "1f" * 20
NOW = 1_800_000_000.0


def _config(tmp_path: Path, receivers: str, *, mode: int = 0o600, extra: str = "") -> Path:
    secret = tmp_path / "hook.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(mode)
    path = tmp_path / "hooks.yaml"
    path.write_text(f"apiVersion: palisade.dev/v1\nkind: Receivers\nspec:\n{extra}  receivers:\n{receivers}")
    return path


_THREE = """\
    - {name: gh, kind: github, secretFile: hook.secret, rateLimit: {burst: 3, perMinute: 60}}
    - {name: gl, kind: gitlab, secretFile: hook.secret}
    - {name: ci, kind: generic, secretFile: hook.secret, maxSkew: 1m}
"""


@pytest.fixture()
def receivers(tmp_path: Path) -> dict[str, Receiver]:
    cfg = load_hooks(_config(tmp_path, _THREE))
    return {r.name: r for r in cfg.receivers}


def _push(ref: str = "refs/heads/main", after: str = HEAD, **more: object) -> bytes:
    return json.dumps({"ref": ref, "before": "0e" * 20, "after": after, "repository": {"full_name": "acme/policy"},
                       "head_commit": {"id": after, "message": "change"}, **more}).encode()


def _github(body: bytes, event: str = "push", secret: bytes = SECRET, delivery: str | None = None) -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


def _generic(body: bytes, ts: float = NOW, delivery: str = "d-1", event: str = "push") -> dict[str, str]:
    stamp = str(int(ts))
    return {"X-Palisade-Event": event, "X-Palisade-Delivery": delivery, "X-Palisade-Timestamp": stamp,
            "X-Palisade-Signature": generic_signature(SECRET, stamp, delivery, body)}


# --- configuration -----------------------------------------------------------------------


def test_the_file_becomes_frozen_receivers_with_their_secrets(tmp_path: Path) -> None:
    cfg = load_hooks(_config(tmp_path, _THREE, extra="  maxBodyBytes: 4096\n"))
    assert [(r.name, r.kind) for r in cfg.receivers] == [
        ("gh", HookKind.GITHUB), ("gl", HookKind.GITLAB), ("ci", HookKind.GENERIC)]
    gh = cfg.receivers[0]
    assert gh.secret == SECRET  # the trailing newline `echo` writes is not part of it
    assert gh.secret_file == tmp_path / "hook.secret"
    assert (gh.rate.burst, gh.rate.per_minute) == (3, 60.0)
    assert cfg.receivers[2].max_skew == 60.0
    assert cfg.max_body == 4096
    assert SECRET.decode() not in repr(cfg)
    with pytest.raises(AttributeError):
        gh.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("receivers", "message"), [
    ("    - {name: gh, kind: bitbucket, secretFile: hook.secret}\n", "receivers[0].kind: 'bitbucket'"),
    ("    - {name: gh, kind: github}\n", "receivers[0]: secretFile is required"),
    ("    - {name: Bad_Name, kind: github, secretFile: hook.secret}\n", "receivers[0].name"),
    ("    - {name: gh, kind: github, secretFile: hook.secret}\n"
     "    - {name: gh, kind: gitlab, secretFile: hook.secret}\n", "receivers[1].name: 'gh' is used twice"),
    ("    - {name: gh, kind: github, secretFile: hook.secret, secret: inline}\n", "unknown member 'secret'"),
    ("    - {name: gh, kind: github, secretFile: hook.secret, maxSkew: 1m}\n", "only a generic receiver"),
    ("    - {name: gh, kind: github, secretFile: hook.secret, rateLimit: {burst: 0}}\n", "rateLimit.burst"),
    ("    - {name: gh, kind: github, secretFile: missing.secret}\n", "cannot read it"),
    ("    []\n", "spec.receivers"),
])
def test_a_bad_file_says_which_member(tmp_path: Path, receivers: str, message: str) -> None:
    with pytest.raises((HooksFileError, SecretFileError), match=r"--hooks|secret file") as e:
        load_hooks(_config(tmp_path, receivers))
    assert message in str(e.value)


def test_not_yaml_and_wrong_kind_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(HooksFileError, match="not YAML"):
        load_hooks(bad)
    bad.write_text("apiVersion: palisade.dev/v1\nkind: Notifications\nspec: {}\n")
    with pytest.raises(HooksFileError, match="kind Receivers"):
        load_hooks(bad)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o620])
def test_a_secret_others_can_read_or_change_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(SecretFileError, match=f"mode {mode:04o}.*chmod 0600"):
        load_hooks(_config(tmp_path, _THREE, mode=mode))


def test_a_group_readable_secret_is_accepted(tmp_path: Path) -> None:
    assert load_hooks(_config(tmp_path, _THREE, mode=0o640)).receivers


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, _THREE)
    (tmp_path / "hook.secret").write_bytes(b"short\n")
    with pytest.raises(SecretFileError, match="at least 16"):
        load_hooks(path)


def test_serve_with_a_bad_hooks_file_exits_2_with_the_reason(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, _THREE, mode=0o644)
    code = cli_main(["serve", "--repo", str(tmp_path), "--state", str(tmp_path / "state"), "--key",
                     str(tmp_path / "no.key"), "--hooks", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "mode 0644" in err and "Traceback" not in err
    assert not (tmp_path / "state").exists()  # refused before the state was touched


# --- github ------------------------------------------------------------------------------


def test_github_push_on_the_tracked_branch(receivers: dict[str, Receiver]) -> None:
    body = _push()
    out = verify(receivers["gh"], _github(body, delivery="abc-1"), body, branch="main", now=NOW)
    assert out == Push("gh", "abc-1", "refs/heads/main", HEAD)


def test_github_form_encoded_payload(receivers: dict[str, Receiver]) -> None:
    body = urlencode({"payload": _push().decode()}).encode()
    headers = {**_github(body), "Content-Type": "application/x-www-form-urlencoded"}
    assert isinstance(verify(receivers["gh"], headers, body, branch="main", now=NOW), Push)


@pytest.mark.parametrize(("event", "body", "reason"), [
    ("ping", b'{"zen": "Keep it logically awesome.", "hook_id": 1}', IgnoreReason.NOT_A_PUSH),
    ("push", _push("refs/heads/feature"), IgnoreReason.OTHER_REF),
    ("push", _push("refs/tags/v1"), IgnoreReason.OTHER_REF),
    ("push", _push(after="0" * 40, deleted=True), IgnoreReason.DELETED),
])
def test_github_deliveries_that_ask_for_nothing(receivers: dict[str, Receiver], event: str, body: bytes,
                                                 reason: IgnoreReason) -> None:
    out = verify(receivers["gh"], _github(body, event), body, branch="main", now=NOW)
    assert isinstance(out, Ignored) and out.reason is reason and out.detail


def test_github_signature_failures(receivers: dict[str, Receiver]) -> None:
    body = _push()
    gh = receivers["gh"]
    with pytest.raises(BadSignature):
        verify(gh, _github(body, secret=b"another-secret-0123456789"), body, branch="main", now=NOW)
    with pytest.raises(BadSignature):  # a body changed after signing
        verify(gh, _github(body), body.replace(b"main", b"mane"), branch="main", now=NOW)
    headers = _github(body)
    del headers["X-Hub-Signature-256"]
    with pytest.raises(MissingSignature):
        verify(gh, headers, body, branch="main", now=NOW)
    with pytest.raises(BadSignature):
        verify(gh, {**headers, "X-Hub-Signature-256": "sha1=abc"}, body, branch="main", now=NOW)


def test_github_headers_and_payload_must_be_there(receivers: dict[str, Receiver]) -> None:
    body = _push()
    headers = _github(body)
    del headers["X-GitHub-Delivery"]
    with pytest.raises(MissingHeader, match="X-GitHub-Delivery"):
        verify(receivers["gh"], headers, body, branch="main", now=NOW)
    for junk in (b"not json", b'["a list"]', b'{"after": "x"}'):
        with pytest.raises(BadPayload):
            verify(receivers["gh"], _github(junk), junk, branch="main", now=NOW)


# --- gitlab ------------------------------------------------------------------------------


def test_gitlab_token_event_and_delivery_id(receivers: dict[str, Receiver]) -> None:
    gl = receivers["gl"]
    body = json.dumps({"object_kind": "push", "ref": "refs/heads/main", "after": HEAD, "checkout_sha": HEAD}).encode()
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode(), "X-Gitlab-Event-UUID": "u-1"}
    assert verify(gl, headers, body, branch="main", now=NOW) == Push("gl", "u-1", "refs/heads/main", HEAD)
    keyed = verify(gl, {**headers, "Idempotency-Key": "k-1"}, body, branch="main", now=NOW)
    assert isinstance(keyed, Push) and keyed.delivery == "k-1"  # the key retries share wins
    assert isinstance(verify(gl, {**headers, "X-Gitlab-Event": "Merge Request Hook"}, body, branch="main",
                             now=NOW), Ignored)
    with pytest.raises(BadSignature):
        verify(gl, {**headers, "X-Gitlab-Token": SECRET.decode() + "x"}, body, branch="main", now=NOW)
    with pytest.raises(MissingSignature):
        verify(gl, {k: v for k, v in headers.items() if k != "X-Gitlab-Token"}, body, branch="main", now=NOW)


# --- generic -----------------------------------------------------------------------------


def test_generic_signature_covers_timestamp_and_delivery(receivers: dict[str, Receiver]) -> None:
    ci = receivers["ci"]
    body = b'{"ref": "refs/heads/main", "after": "' + HEAD.encode() + b'"}'
    assert verify(ci, _generic(body), body, branch="main", now=NOW) == Push("ci", "d-1", "refs/heads/main", HEAD)
    for name, value in (("X-Palisade-Delivery", "d-2"), ("X-Palisade-Timestamp", str(int(NOW) + 1))):
        with pytest.raises(BadSignature):
            verify(ci, {**_generic(body), name: value}, body, branch="main", now=NOW)
    with pytest.raises(StaleTimestamp, match="-61s"):
        verify(ci, _generic(body, ts=NOW + 61), body, branch="main", now=NOW)
    with pytest.raises(StaleTimestamp):
        verify(ci, _generic(body, ts=NOW - 61), body, branch="main", now=NOW)
    assert isinstance(verify(ci, _generic(body, ts=NOW - 59), body, branch="main", now=NOW), Push)
    assert isinstance(verify(ci, _generic(b"{}", event="ping"), b"{}", branch="main", now=NOW), Ignored)


# --- replays and floods ------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_delivery_id_or_a_body_seen_before_is_a_replay(tmp_path: Path) -> None:
    clock = _Clock()
    hooks = Webhooks(load_hooks(_config(tmp_path, _THREE)), "main", wall=lambda: NOW, mono=clock)
    gh = hooks.receiver("gh")
    body = _push()
    headers = _github(body, delivery="same")
    assert isinstance(hooks.receive(gh, headers, body), Push)
    with pytest.raises(Replayed, match="delivery id"):
        hooks.receive(gh, headers, body)
    with pytest.raises(Replayed, match="same body"):  # GitHub signs only the body: a new id does not help
        hooks.receive(gh, _github(body, delivery="fresh"), body)
    other = _push(after="2e" * 20)
    with pytest.raises(Replayed, match="delivery id"):
        hooks.receive(gh, _github(other, delivery="same"), other)
    clock.t += 25 * 3600  # forgotten after a day
    assert isinstance(hooks.receive(gh, headers, body), Push)


def test_the_token_bucket_refuses_a_flood_and_refills(tmp_path: Path) -> None:
    clock = _Clock()
    hooks = Webhooks(load_hooks(_config(tmp_path, _THREE)), "main", wall=lambda: NOW, mono=clock)
    gh = hooks.receiver("gh")  # burst 3, 60 a minute
    bodies = [_push(after=f"{i:040x}") for i in range(5)]
    for b in bodies[:3]:
        hooks.receive(gh, _github(b), b)
    with pytest.raises(RateLimited) as e:
        hooks.receive(gh, _github(bodies[3], delivery="later"), bodies[3])
    assert e.value.retry_after == 1
    # The refused delivery was not remembered: sent again once a token is back, it goes through.
    clock.t += 1.0
    assert isinstance(hooks.receive(gh, _github(bodies[3], delivery="later"), bodies[3]), Push)
    # Another receiver has its own bucket.
    ci = hooks.receiver("ci")
    assert isinstance(hooks.receive(ci, _generic(b"{}", event="ping"), b"{}"), Ignored)


def test_an_unknown_receiver(tmp_path: Path) -> None:
    hooks = Webhooks(load_hooks(_config(tmp_path, _THREE)), "main")
    with pytest.raises(UnknownReceiver) as e:
        hooks.receiver("nope")
    assert e.value.status == 404 and e.value.receiver == ""

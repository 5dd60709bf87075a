"""The signed wire formats: canonical JSON, signing, strict parsing, verification."""
from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from reconciler.errors import VerificationError
from reconciler.repository.model import Gates, Rollout, Stage
from support.bundles import T0, Keys, commit_id, keypair, make_bundle
from wire import bundle as B
from wire.values import Scope, State

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def k(tmp_path: Path) -> Keys:
    return keypair(tmp_path / "keys")


@pytest.fixture()
def other(tmp_path: Path) -> Keys:
    return keypair(tmp_path / "other-keys")


def _index(version: int = 3, *, serial: int = 7, issued: dt.datetime = T0,
           life: dt.timedelta = dt.timedelta(hours=24), stages: dict[str, int] | None = None) -> B.Index:
    entries = tuple(B.IndexEntry(v, f"{v:064x}", 100 + v) for v in range(1, version + 1))
    return B.Index(serial=serial, version=version, issued=issued, expires=issued + life, bundles=entries,
                   stages=stages if stages is not None else {"default": version})


def _unsigned(b: B.Bundle) -> B.Bundle:
    return replace(b, signatures=())


# -- canonical JSON ---------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert B.canonical_json({"b": [1, {"z": 1, "a": "é"}], "a": None}) == '{"a":null,"b":[1,{"a":"é","z":1}]}'.encode()


@pytest.mark.parametrize("value", [1.5, {"a": [0.0]}, {"ratio": 1.0}])
def test_canonical_json_refuses_floats(value: object) -> None:
    with pytest.raises(ValueError, match="no floats"):
        B.canonical_json(value)


def test_bundle_file_is_canonical_json_of_itself(k: Keys) -> None:
    data = B.sign_bundle(make_bundle(1), k.signing)
    assert data == B.canonical_json(json.loads(data))
    assert "ünïcödé".encode() in data  # not \u-escaped


# -- bundles ------------------------------------------------------------------


def test_signed_bundle_round_trips_through_verification(k: Keys) -> None:
    original = make_bundle(4)
    data = B.sign_bundle(original, k.signing)
    got = B.verify_bundle(data, [k.public], expected_sha256=B.sha256_hex(data), expected_size=len(data))
    assert _unsigned(got) == original
    assert [s.keyid for s in got.signatures] == [B.keyid(k.public)]
    assert got.staging is not None and got.staging.stages[1].gates.min_reporting_ratio == 0.9
    assert got.policies[1].scope == Scope(group="web") and got.policies[2].state is State.ENFORCED


def test_every_single_byte_change_is_refused(k: Keys) -> None:
    data = B.sign_bundle(make_bundle(2, policies=1), k.signing)
    digest = B.sha256_hex(data)
    for i in range(0, len(data), 7):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(VerificationError, match="digest"):
            B.verify_bundle(bytes(tampered), [k.public], expected_sha256=digest, expected_size=len(data))


def test_rewritten_policy_with_fresh_digest_fails_the_signature(k: Keys) -> None:
    """An attacker who edits a policy and fixes its sha256 still cannot forge the signature."""
    doc = json.loads(B.sign_bundle(make_bundle(2), k.signing))
    evil = "kind: TracingPolicy\n# nothing enforced\n"
    doc["policies"][0]["yaml"] = evil
    doc["policies"][0]["sha256"] = B.sha256_hex(evil.encode())
    data = B.canonical_json(doc)
    with pytest.raises(VerificationError, match=f"bundle signature does not verify with key {B.keyid(k.public)}"):
        B.verify_bundle(data, [k.public], expected_sha256=None, expected_size=None)


def test_bundle_signed_by_another_key_is_refused(k: Keys, other: Keys) -> None:
    data = B.sign_bundle(make_bundle(1), other.signing)
    with pytest.raises(VerificationError, match="not signed by a trusted key"):
        B.verify_bundle(data, [k.public], expected_sha256=None, expected_size=None)
    # During a key rotation the agent trusts both keys.
    assert B.verify_bundle(data, [k.public, other.public], expected_sha256=None, expected_size=None).version == 1


def test_unsigned_bundle_is_refused(k: Keys) -> None:
    with pytest.raises(VerificationError, match="bundle is not signed"):
        B.verify_bundle(make_bundle(1).to_bytes(), [k.public], expected_sha256=None, expected_size=None)


def test_size_is_checked_before_parsing(k: Keys) -> None:
    huge = b"[" * (B.MAX_BUNDLE_BYTES + 1)
    with pytest.raises(VerificationError, match=r"bundle is \d+ bytes, more than the limit"):
        B.verify_bundle(huge, [k.public], expected_sha256=None, expected_size=None)
    data = B.sign_bundle(make_bundle(1), k.signing)
    with pytest.raises(VerificationError, match=f"bundle is {len(data)} bytes, the index says {len(data) + 1}"):
        B.verify_bundle(data, [k.public], expected_sha256=None, expected_size=len(data) + 1)


def _mutated(k: Keys, edit: object) -> bytes:
    doc = json.loads(B.sign_bundle(make_bundle(1), k.signing))
    edit(doc)  # type: ignore[operator]
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d.pop("commit"), "missing commit"),
        (lambda d: d.update(extra=1), "unknown member extra"),
        (lambda d: d.update(version="3"), "version: expected an integer"),
        (lambda d: d.update(version=0), "version: 0 is lower than 1"),
        (lambda d: d.update(kind="Index"), "kind: expected Bundle"),
        (lambda d: d.update(commit="main"), "commit: 'main' does not match"),
        (lambda d: d.update(created="yesterday"), "created: 'yesterday' is not an RFC 3339 time"),
        (lambda d: d["policies"][0].update(state="enforcing"), r"policies\[0\].state: 'enforcing' is not"),
        (lambda d: d["policies"][1].update(sha256="0" * 64), r"policies\[1\].sha256: does not match"),
        (lambda d: d["policies"][0].update(scope={"group": "a", "sensor": "b"}), r"policies\[0\].scope"),
        (lambda d: d["policies"].append(d["policies"][0]), "appears twice"),
        (lambda d: d["staging"]["stages"][0]["gates"].update(minReportingRatio="1.5"), "minReportingRatio"),
        (lambda d: d["staging"]["stages"][2].update(name="default"), "'default' is reserved"),
    ],
)
def test_malformed_bundles_are_refused_with_the_path(k: Keys, edit: object, reason: str) -> None:
    with pytest.raises(VerificationError, match=f"bundle is malformed: .*{reason}"):
        B.parse_bundle(_mutated(k, edit))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"ratio": 0.5}', "not an integer"),
        (b'{"n": NaN}', "NaN is not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"a": ', "malformed JSON: Expecting value"),
        (b"[" * 100000, "nested too deeply"),
    ],
)
def test_bad_json_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason):
        B.parse_bundle(data)


def test_staging_from_a_rollout() -> None:
    rollout = Rollout("default", "staging/default.yaml", stages=(
        Stage("canary", groups=("canary",), bake_seconds=30 * 60, gates=Gates(max_agent_errors=0,
                                                                               min_reporting_ratio=1.0)),
        Stage("fleet", rest=True),
    ), fast_track=True)
    s = B.Staging.from_rollout(rollout)
    assert s.to_json() == {"fastTrack": True, "stages": [
        {"name": "canary", "sensors": {"ids": [], "groups": ["canary"], "matchLabels": {}, "rest": False},
         "bake": 1800, "gates": {"maxAgentErrors": 0, "minReportingRatio": "1.0"}},
        {"name": "fleet", "sensors": {"ids": [], "groups": [], "matchLabels": {}, "rest": True}, "bake": 0,
         "gates": {}},
    ]}


def test_policy_digest_must_match_its_yaml() -> None:
    with pytest.raises(ValueError, match="sha256 does not match"):
        B.BundlePolicy("p", B.Origin("rule", "r"), Scope(), State.OBSERVE, "a: 1\n", "0" * 64)


def test_groups_select_sensors_by_id_or_labels() -> None:
    b = make_bundle(1)
    web = b.group("web")
    assert web is not None and web.selects("n9", {"role": "web"}) and not web.selects("n9", {"role": "db"})
    canary = b.group("canary")
    assert canary is not None and canary.selects("node-canary-1", {}) and not canary.selects("node-2", {})


def test_agent_selects_its_policies_and_stage() -> None:
    b = make_bundle(1, policies=6)  # scopes cycle: fleet, group web, sensor node-1
    names = lambda ps: [p.name for p in ps]  # noqa: E731
    assert names(b.select("node-1", {"role": "web"})) == [f"policy-{i}" for i in range(6)]
    assert names(b.select("node-7", {"role": "web"})) == ["policy-0", "policy-1", "policy-3", "policy-4"]
    assert names(b.select("node-7", {"role": "db"})) == ["policy-0", "policy-3"]
    assert not b.in_scope(Scope(group="no-such-group"), "node-1", {})
    assert b.stage_for("node-canary-1", {"role": "web"}) == "canary"  # first matching stage wins
    assert b.stage_for("node-7", {"role": "web"}) == "web"
    assert b.stage_for("node-8", {}) == "fleet"  # rest
    assert make_bundle(1, with_staging=False).stage_for("node-8", {}) is None


# -- index ----------------------------------------------------------------------


def test_index_round_trips(k: Keys) -> None:
    idx = _index(stages={"canary": 3, "fleet": 2, "default": 2})
    data = B.sign_index(idx, k.signing)
    got = B.verify_index(data, [k.public], now=T0, min_serial=7, min_version=3)
    assert replace(got, signatures=()) == idx
    assert got.pinned("canary") == 3 and got.pinned("fleet") == 2 and got.pinned(None) == 2
    assert got.pinned("unknown-stage") == 2
    assert got.entry(2) == B.IndexEntry(2, f"{2:064x}", 102) and got.entry(9) is None


def test_expired_index_is_refused(k: Keys) -> None:
    data = B.sign_index(_index(issued=T0, life=dt.timedelta(hours=1)), k.signing)
    B.verify_index(data, [k.public], now=T0 + dt.timedelta(minutes=59))
    with pytest.raises(VerificationError, match="index expired at 2026-11-01T13:00:00Z"):
        B.verify_index(data, [k.public], now=T0 + dt.timedelta(hours=1))


def test_replayed_index_is_refused(k: Keys) -> None:
    data = B.sign_index(_index(serial=4), k.signing)
    with pytest.raises(VerificationError, match=r"index serial 4 is lower than 7 already seen \(replay\)"):
        B.verify_index(data, [k.public], now=T0, min_serial=7)
    assert B.verify_index(data, [k.public], now=T0, min_serial=4).serial == 4  # the same index again is fine


def test_rolled_back_index_is_refused(k: Keys) -> None:
    data = B.sign_index(_index(version=3, serial=9), k.signing)
    with pytest.raises(VerificationError, match=r"index version 3 is lower than 5 already seen \(rollback\)"):
        B.verify_index(data, [k.public], now=T0, min_serial=8, min_version=5)


def test_index_signed_with_the_wrong_key_is_refused(k: Keys, other: Keys) -> None:
    data = B.sign_index(_index(), other.signing)
    with pytest.raises(VerificationError, match="index is not signed by a trusted key"):
        B.verify_index(data, [k.public], now=T0)


def test_index_with_a_forged_signature_names_the_key(k: Keys) -> None:
    doc = json.loads(B.sign_index(_index(), k.signing))
    doc["serial"] = 1000  # an attacker bumps the serial to defeat replay protection
    with pytest.raises(VerificationError, match=f"index signature does not verify with key {B.keyid(k.public)}"):
        B.verify_index(B.canonical_json(doc), [k.public], now=T0)
    doc["signatures"][0]["sig"] = "!!not base64!!"
    with pytest.raises(VerificationError, match="not valid base64"):
        B.verify_index(B.canonical_json(doc), [k.public], now=T0)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d.update(version=2), "version 2 is not the newest listed bundle"),
        (lambda d: d.update(stages={"canary": 9}), "stage canary is pinned to version 9"),
        (lambda d: d["bundles"].reverse(), "not unique and ascending"),
        (lambda d: d.update(bundles=[]), "lists no bundle"),
        (lambda d: d.update(expires=d["issued"]), "expires is not after issued"),
        (lambda d: d.update(serial=True), "serial: expected an integer, got a boolean"),
    ],
)
def test_inconsistent_index_is_refused(k: Keys, edit: object, reason: str) -> None:
    doc = json.loads(B.sign_index(_index(), k.signing))
    edit(doc)  # type: ignore[operator]
    with pytest.raises(VerificationError, match=f"index is malformed: .*{reason}"):
        B.parse_index(json.dumps(doc).encode())


def test_index_size_limit(k: Keys) -> None:
    with pytest.raises(VerificationError, match=r"index is .* more than the limit"):
        B.verify_index(b" " * (B.MAX_INDEX_BYTES + 1), [k.public], now=T0)


def test_no_trusted_key_is_an_error(k: Keys) -> None:
    with pytest.raises(VerificationError, match="no public key"):
        B.verify_index(B.sign_index(_index(), k.signing), [], now=T0)


# -- schemas and import hygiene -------------------------------------------------------


def _schema(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "schemas" / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_written_documents_follow_the_published_schemas(k: Keys) -> None:
    bundle_doc = json.loads(B.sign_bundle(make_bundle(5), k.signing))
    index_doc = json.loads(B.sign_index(_index(stages={"canary": 3, "default": 2}), k.signing))
    assert list(_schema("bundle.schema.json").iter_errors(bundle_doc)) == []
    assert list(_schema("index.schema.json").iter_errors(index_doc)) == []
    bundle_doc["staging"]["stages"][0]["gates"]["minReportingRatio"] = 0.5
    bundle_doc["policies"][0]["state"] = "on"
    assert len(list(_schema("bundle.schema.json").iter_errors(bundle_doc))) == 2


def test_the_codec_imports_no_git_http_or_yaml() -> None:
    """The agent imports wire.bundle: it must not drag in the reconciler's heavy stack."""
    code = ("import sys, wire.bundle, wire.keys; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('git', 'httpx', 'starlette', 'uvicorn', 'ruamel', 'yaml', 'jsonschema', 'sqlite3', 'subprocess')]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_signature_is_over_the_document_without_signatures(k: Keys) -> None:
    b = make_bundle(1)
    data = json.loads(B.sign_bundle(b, k.signing))
    sig = base64.b64decode(data["signatures"][0]["sig"])
    k.public.verify(B.canonical_json(b.unsigned_json()), sig)  # raises if not
    assert data["commit"] == commit_id(1)


_text = st.text(min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    version=st.integers(min_value=1, max_value=2**53),
    names=st.lists(_text, min_size=0, max_size=5, unique=True),
    yaml=st.text(min_size=1, max_size=200),
    labels=st.dictionaries(_text, st.text(max_size=10), max_size=3),
    approvers=st.lists(_text, max_size=3),
)
def test_any_bundle_round_trips_byte_for_byte(version: int, names: list[str], yaml: str,
                                              labels: dict[str, str], approvers: list[str]) -> None:
    signing = SigningKey(b"\x01" * 32)
    b = B.Bundle(
        version=version, commit=commit_id(version), parent=None, author="A <a@example.com>",
        approvers=tuple(approvers), created=T0,
        policies=tuple(B.BundlePolicy.of(n, B.Origin("rule", n), Scope(sensor=n), State.OBSERVE, yaml)
                       for n in names),
        groups=(B.BundleGroup("g", ("s",), tuple(sorted(labels.items()))),),
    )
    data = B.sign_bundle(b, signing)
    got = B.verify_bundle(data, [signing.verify_key], expected_sha256=B.sha256_hex(data), expected_size=len(data))
    assert _unsigned(got) == b
    assert got.to_bytes() == data


def test_the_repository_and_its_bundle_place_each_sensor_in_the_same_stage() -> None:
    from reconciler.checks.plan import stage_of
    from reconciler.repository.model import Group, PolicyRepository

    groups = (Group("canary", sensors=("c1",), description="first"), Group("web", match_labels=(("role", "web"),)))
    rollout = Rollout("default", "staging/default.yaml", stages=(
        Stage("canary", groups=("canary",)), Stage("pinned", sensors=("p1",)),
        Stage("labelled", match_labels=(("zone", "a"),)), Stage("ghost", groups=("nobody",)),
        Stage("fleet", rest=True)))
    repo = PolicyRepository(None, groups=groups, rollouts=(rollout,))
    bundle = B.Bundle(1, "ab" * 20, None, "a <a@x>", (), T0, (),
                      groups=tuple(B.BundleGroup(g.name, g.sensors, g.match_labels) for g in groups),
                      staging=B.Staging.from_rollout(rollout))
    sensors = {"c1": {}, "p1": {}, "z1": {"zone": "a"}, "w1": {"role": "web"}, "x1": {}}
    assert {s: stage_of(repo, s, labels) for s, labels in sensors.items()} == \
        {s: bundle.stage_for(s, labels) for s, labels in sensors.items()} == \
        {"c1": "canary", "p1": "pinned", "z1": "labelled", "w1": "fleet", "x1": "fleet"}
    assert stage_of(PolicyRepository(None, groups=groups), "c1", {}) is None
    assert B.Staging.from_rollout(rollout).stages == rollout.stages  # one type: nothing is copied

"""CO-RE objects built by the reconciler into the signed bundle: real git, real clang, a real store and server."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from nacl.signing import SigningKey

from bpf.compile import compile_policy
from bpf.errors import Unsupported
from bpf.objects import source_digest
from bpf.policy import TracingPolicy, parse
from reconciler.publish.objects import KernelProfile, ObjectBuilder, builtin_profile, loads_scoped
from reconciler.publish.reconcile import Reconciler
from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app
from support.bundles import make_bundle
from support.policyrepo import PolicyRepo
from wire import bundle as B


def _published(state: Path, key: SigningKey, version: int) -> B.Bundle:
    data = (state / "store" / "bundles" / f"v{version}.json").read_bytes()
    return B.verify_bundle(data, [key.verify_key], expected_sha256=None, expected_size=None)


def _tp(p: B.BundlePolicy) -> TracingPolicy:
    return parse(yaml.safe_load(p.yaml))


def _runs(p: B.BundlePolicy, profile: KernelProfile) -> bool:
    tp = _tp(p)
    try:
        compile_policy(tp, profile.features, profile.formats, scoped=loads_scoped(tp))
    except Unsupported:
        return False
    return True


def _builtin(state: Path) -> ObjectBuilder:
    return ObjectBuilder(state, [builtin_profile()])


def test_a_published_bundle_lists_an_object_per_policy_and_the_store_holds_its_bytes(
        policy: PolicyRepo, key: SigningKey, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, key, objects=_builtin(state)) as rec:
        assert rec.run_once().published == (1,)
        status = rec.status()["objects"]
    b = _published(state, key, 1)
    # every policy the profile can run has its object (the built-in profile lacks the tracepoints that keep
    # workload-limited policies in scope: a node with that kernel refuses those, so nothing is built)
    assert b.objects and {o.policy for o in b.objects} == {p.sha256 for p in b.policies if _runs(p, builtin_profile())}
    for o in b.objects:
        data = (state / "store" / "objects" / o.sha256).read_bytes()
        assert B.verify_object(data, o) == data and data[:4] == b"\x7fELF"
        assert o.profile == "builtin"
        # the name is the source a node with the built-in kernel generates for that policy
        tp = _tp(next(p for p in b.policies if p.sha256 == o.policy))
        assert o.scoped is loads_scoped(tp)
        plan = compile_policy(tp, builtin_profile().features, builtin_profile().formats, scoped=o.scoped)
        assert source_digest(plan.source) == o.source
    assert status["building"] is True and status["profiles"] == ["builtin"]
    assert status["lastBuild"]["objects"] == len(b.objects)


def test_an_unchanged_policy_is_never_compiled_again(policy: PolicyRepo, key: SigningKey, tmp_path: Path) -> None:
    state = tmp_path / "state"
    builder = _builtin(state)
    with Reconciler(str(policy.path), state, key, objects=builder) as rec:
        rec.run_once()
        first = rec.last_build
        assert first is not None and first.compiled == len(first.objects) > 1
        # only one policy changes: one compile, the others come from the state directory
        policy.change("watch setuid(1000)", [("packs/baseline-observe/privileges.yaml", 'values: ["0"]',
                                              'values: ["1000"]')])
        assert rec.run_once().published == (2,)
        second = rec.last_build
        assert second is not None and second.compiled == 1
        # a commit that changes no policy text compiles nothing
        policy.change("owners", [("packs/web-lockdown/pack.yaml", "owners: [", "owners: [x@example.com, ")])
        assert rec.run_once().published == (3,)
        assert rec.last_build is not None and rec.last_build.compiled == 0
    # a fresh reconciler on the same state directory reuses the cache too
    with Reconciler(str(policy.path), state, key, objects=_builtin(state)) as rec:
        policy.change("owners again", [("packs/web-lockdown/pack.yaml", "owners: [", "owners: [y@example.com, ")])
        assert rec.run_once().published == (4,)
        assert rec.last_build is not None and rec.last_build.compiled == 0
    v2, v1 = _published(state, key, 2), _published(state, key, 1)
    assert len({o.source for o in v1.objects} ^ {o.source for o in v2.objects}) == 2


class _Broken(ObjectBuilder):
    """Plans like a node, but the egress policy's C gets a line clang refuses (a compiler bug's stand-in)."""

    def _source(self, policy: TracingPolicy, profile: KernelProfile, scoped: bool) -> str:
        source = super()._source(policy, profile, scoped)
        return source + "\n#error this object cannot be built\n" if policy.name.startswith("egress") else source


def test_a_policy_whose_c_does_not_compile_rejects_the_commit_at_the_policy(
        policy: PolicyRepo, key: SigningKey, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, key, objects=_Broken(state, [builtin_profile()])) as rec:
        out = rec.run_once()
        assert out.published == ()
        (entry,) = out.processed
        assert str(entry.result) == "rejected"
        (f,) = [f for f in entry.findings if f.code == "object-compile"]
        assert f.file == "packs/egress-guard/connect.yaml" and str(f.severity) == "error"
        assert "this object cannot be built" in f.message and "egress-allowed-networks" in f.message
    assert not (state / "store" / "index.json").exists()


def test_a_reconciler_without_object_building_publishes_bundles_as_before(
        policy: PolicyRepo, key: SigningKey, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, key, objects=False) as rec:
        assert rec.run_once().published == (1,)
        assert rec.status()["objects"] == {"building": False}
    raw = json.loads((state / "store" / "bundles" / "v1.json").read_bytes())
    assert "objects" not in raw and not (state / "store" / "objects").exists()


def test_the_default_profile_is_this_host_when_it_can_be_probed(policy: PolicyRepo, key: SigningKey,
                                                                tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, key) as rec:
        rec.run_once()
        names = rec.status()["objects"]["profiles"]
    host = os.geteuid() == 0 and Path("/sys/kernel/tracing/events").is_dir()
    assert names == (["host"] if host else ["builtin"])
    assert _published(state, key, 1).objects


# --- the wire format -------------------------------------------------------------------------


def _obj(policy: B.BundlePolicy, data: bytes = b"\x7fELF object", source: str = "5" * 64) -> B.BundleObject:
    return B.BundleObject(source, hashlib.sha256(data).hexdigest(), len(data), policy.sha256, "builtin", False)


def test_objects_round_trip_signed_and_old_bundles_keep_their_bytes() -> None:
    k = SigningKey.generate()
    old = make_bundle(1)
    old_bytes = B.sign_bundle(old, k)
    assert b'"objects"' not in old_bytes  # no member at all: what was signed before objects existed
    new = dataclasses.replace(old, objects=(_obj(old.policies[0]),))
    data = B.sign_bundle(new, k)
    back = B.verify_bundle(data, [k.verify_key], expected_sha256=None, expected_size=None)
    assert back.objects == new.objects and back.objects_for(old.policies[0].sha256) == new.objects
    assert B.verify_bundle(old_bytes, [k.verify_key], expected_sha256=None, expected_size=None).objects == ()
    # the digests are signed: changing one breaks the signature
    doc = json.loads(data)
    doc["objects"][0]["sha256"] = "0" * 64
    with pytest.raises(B.BadSignature):
        B.verify_bundle(B.canonical_json(doc), [k.verify_key], expected_sha256=None, expected_size=None)


@pytest.mark.parametrize(("change", "error"), [
    (lambda o: o.update(extra=1), B.Malformed),
    (lambda o: o.update(sha256="AB" * 32), B.Malformed),
    (lambda o: o.update(size=B.MAX_OBJECT_BYTES + 1), B.OutOfRange),
    (lambda o: o.update(size=0), B.OutOfRange),
    (lambda o: o.update(policy="1" * 64), B.Malformed),  # for no policy of the bundle
    (lambda o: o.update(profile="Not A Profile"), B.Malformed),
    (lambda o: o.update(scoped="no"), B.Malformed),
    (lambda o: o.pop("source"), B.Malformed),
])
def test_object_entries_are_parsed_strictly(change: object, error: type[B.WireError]) -> None:
    b = make_bundle(1)
    doc = json.loads(dataclasses.replace(b, objects=(_obj(b.policies[0]),)).to_bytes())
    change(doc["objects"][0])  # type: ignore[operator]
    with pytest.raises(error):
        B.parse_bundle(B.canonical_json(doc))


def test_an_empty_or_duplicated_object_list_is_refused() -> None:
    b = make_bundle(1)
    doc = json.loads(b.to_bytes())
    doc["objects"] = []
    with pytest.raises(B.Malformed, match="empty"):
        B.parse_bundle(B.canonical_json(doc))
    entry = _obj(b.policies[0]).to_json()
    doc["objects"] = [entry, entry]
    with pytest.raises(B.Malformed, match="unique"):
        B.parse_bundle(B.canonical_json(doc))


def test_verify_object_refuses_other_bytes() -> None:
    b = make_bundle(1)
    entry = _obj(b.policies[0], b"\x7fELF the real one")
    with pytest.raises(B.DigestMismatch):
        B.verify_object(b"\x7fELF the fake one", entry)
    with pytest.raises(B.TooLarge):
        B.verify_object(b"\x7fELF the real one!", entry)


def test_a_bundle_with_objects_matches_the_schema() -> None:
    import jsonschema

    b = make_bundle(1)
    doc = json.loads(dataclasses.replace(b, objects=(_obj(b.policies[0]),)).to_bytes())
    schema = json.loads((Path(__file__).resolve().parents[3] / "schemas" / "bundle.schema.json").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(doc)) == []


# --- serving ---------------------------------------------------------------------------------


@pytest.fixture()
def served(policy: PolicyRepo, key: SigningKey, tmp_path: Path) -> Iterator[tuple[BackgroundServer, Path]]:
    state = tmp_path / "state"
    with Reconciler(str(policy.path), state, key, objects=_builtin(state)) as rec:
        rec.run_once()
    server = BackgroundServer(create_app(state / "store")).start()
    try:
        yield server, state
    finally:
        server.stop()


def test_the_server_serves_objects_by_digest(served: tuple[BackgroundServer, Path], key: SigningKey) -> None:
    server, state = served
    o = _published(state, key, 1).objects[0]
    r = httpx.get(f"{server.url}/v1/objects/{o.sha256}")
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == o.sha256
    assert "immutable" in r.headers["cache-control"]
    assert httpx.get(f"{server.url}/v1/objects/{o.sha256}",
                     headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    assert httpx.get(f"{server.url}/v1/objects/{'0' * 64}").status_code == 404
    assert httpx.get(f"{server.url}/v1/objects/..%2Findex.json").status_code in (400, 404)
    assert httpx.get(f"{server.url}/v1/objects/ABC").json()["error"] == "invalid digest"


def test_a_damaged_object_on_disk_is_never_served(served: tuple[BackgroundServer, Path], key: SigningKey) -> None:
    server, state = served
    o = _published(state, key, 1).objects[-1]
    path = state / "store" / "objects" / o.sha256
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    r = httpx.get(f"{server.url}/v1/objects/{o.sha256}")
    assert r.status_code == 500 and r.json()["error"] == "store damaged"

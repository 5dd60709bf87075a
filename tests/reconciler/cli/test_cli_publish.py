"""`palisade publish --to DIR` through the real command line, on real stores written by `Store`."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.state import mirror as mirror_mod
from reconciler.state.store import SignedBundle, Store
from support.bundles import Keys, keypair, make_bundle
from wire import bundle as B

ROOT = Path(__file__).resolve().parents[3]
PALISADE = ROOT / ".venv" / "bin" / "palisade"


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PALISADE), *map(str, args)], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.fixture()
def k(tmp_path: Path) -> Keys:
    return keypair(tmp_path / "keys")


def _with_object(store: Store, version: int, blob: bytes, key: Keys) -> SignedBundle:
    digest = store.write_object(blob)
    bundle = make_bundle(version)
    obj = B.BundleObject(hashlib.sha256(b"source").hexdigest(), digest, len(blob), bundle.policies[0].sha256,
                         "builtin", False)
    return SignedBundle.sign(dataclasses.replace(bundle, objects=(obj,)), key.signing)


@pytest.fixture()
def state(tmp_path: Path, k: Keys) -> Path:
    """A state directory whose store holds v1 (with one CO-RE object) and v2."""
    store = Store(tmp_path / "state" / "store", k.signing)
    store.publish(_with_object(store, 1, b"\x7fELF object one", k))
    store.publish(B.sign_bundle(make_bundle(2), k.signing))
    return tmp_path / "state"


def test_the_mirror_has_the_api_paths_objects_and_bundles_before_the_index(state: Path, tmp_path: Path) -> None:
    www = tmp_path / "www"
    r = run("publish", "--state", state, "--to", www, "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    store = state / "store"
    sha = hashlib.sha256(b"\x7fELF object one").hexdigest()
    assert doc["version"] == 2 and doc["unchanged"] == 0
    assert doc["written"] == [f"v1/objects/{sha}", "v1/bundles/1", "v1/bundles/2", "v1/index"]
    assert (www / "v1" / "index").read_bytes() == (store / "index.json").read_bytes()
    for v in (1, 2):
        assert (www / "v1" / "bundles" / str(v)).read_bytes() == (store / "bundles" / f"v{v}.json").read_bytes()
    assert (www / "v1" / "objects" / sha).read_bytes() == b"\x7fELF object one"
    for p in (www / "v1" / "index", www / "v1" / "bundles" / "1", www / "v1" / "objects" / sha):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644  # a web server's user reads them
    assert not [p for p in www.rglob(".*")]  # no temporary file left

    again = run("publish", "--state", state, "--to", www)  # idempotent, text output
    assert again.returncode == 0, again.stderr
    assert "published v2 (index serial 2)" in again.stdout and "wrote 0 file(s), 4 already current" in again.stdout


def test_a_changed_index_gets_a_later_second_so_nginx_etags_differ(state: Path, tmp_path: Path, k: Keys) -> None:
    www = tmp_path / "www"
    assert run("publish", "--state", state, "--to", www).returncode == 0
    before = (www / "v1" / "index").stat()
    # the same index re-signed at once: same size, new serial (nginx's ETag is mtime seconds + size)
    assert Store(state / "store", k.signing).resign_if_due(margin=dt.timedelta(days=2)) is not None
    r = run("publish", "--state", state, "--to", www, "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["written"] == ["v1/index"] and json.loads(r.stdout)["serial"] == 3
    after = (www / "v1" / "index").stat()
    assert int(after.st_mtime) > int(before.st_mtime)


def test_refusals_exit_2_and_change_nothing(state: Path, tmp_path: Path, k: Keys) -> None:
    www = tmp_path / "www"
    empty = tmp_path / "empty"
    (empty / "store").mkdir(parents=True)
    r = run("publish", "--state", empty, "--to", www)
    assert r.returncode == 2 and "nothing has been published yet" in r.stderr and not www.exists()
    r = run("publish", "--to", www, env={k_: v for k_, v in os.environ.items() if k_ != "PALISADE_STATE"})
    assert r.returncode == 2 and "--state DIR" in r.stderr

    old = tmp_path / "old"
    shutil.copytree(state, old)  # this state directory stays at serial 2
    store = Store(state / "store", k.signing)
    store.publish(B.sign_bundle(make_bundle(3), k.signing))
    assert run("publish", "--state", state, "--to", www).returncode == 0
    index = (www / "v1" / "index").read_bytes()

    # an older store over a newer mirror: agents would see a replay
    r = run("publish", "--state", old, "--to", www)
    assert r.returncode == 2 and "serial 3" in r.stderr and "Traceback" not in r.stderr
    assert (www / "v1" / "index").read_bytes() == index

    # another store's bundle under the same name: bundles are immutable
    other = tmp_path / "other"
    alien_key = keypair(tmp_path / "k2").signing
    alien = Store(other / "store", alien_key)
    for v in (1, 2, 3, 4):
        alien.publish(B.sign_bundle(make_bundle(v, commit=v + 100), alien_key))
    r = run("publish", "--state", other, "--to", www)
    assert r.returncode == 2 and "exists with other bytes" in r.stderr
    assert (www / "v1" / "index").read_bytes() == index and not (www / "v1" / "bundles" / "4").exists()

    # a damaged store: a bundle that no longer matches its index entry is copied nowhere
    (state / "store" / "bundles" / "v3.json").write_bytes(b"{}")
    fresh = tmp_path / "fresh"
    r = run("publish", "--state", state, "--to", fresh)
    assert r.returncode == 2 and "does not match the digest" in r.stderr and not fresh.exists()


def test_an_index_write_that_fails_leaves_the_new_bundles_and_the_old_index(
        state: Path, tmp_path: Path, k: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    mirror_mod.mirror(state / "store", www)
    old_index = (www / "v1" / "index").read_bytes()
    Store(state / "store", k.signing).publish(B.sign_bundle(make_bundle(3), k.signing))
    write = mirror_mod._write

    def crash_at_the_index(path: Path, data: bytes, *, after: int | None = None) -> None:
        if path.name == "index":
            raise StateError(f"cannot write {path}: No space left on device")
        write(path, data, after=after)

    monkeypatch.setattr(mirror_mod, "_write", crash_at_the_index)
    with pytest.raises(StateError):
        mirror_mod.mirror(state / "store", www)
    # a reader sees the old index, and every bundle it names (and the new one, named by nothing yet)
    assert (www / "v1" / "index").read_bytes() == old_index
    assert all((www / "v1" / "bundles" / str(e.version)).exists() for e in B.parse_index(old_index).bundles)
    assert (www / "v1" / "bundles" / "3").exists()
    monkeypatch.undo()
    assert mirror_mod.mirror(state / "store", www).written == ("v1/index",)


def test_prune_removes_what_the_index_no_longer_lists_and_nothing_else(tmp_path: Path, k: Keys) -> None:
    store = Store(tmp_path / "state" / "store", k.signing, keep=2)
    store.publish(_with_object(store, 1, b"\x7fELF object one", k))
    store.publish(B.sign_bundle(make_bundle(2), k.signing))
    www = tmp_path / "www"
    assert run("publish", "--state", tmp_path / "state", "--to", www).returncode == 0
    (www / "v1" / "bundles" / "README").write_text("put here by hand\n")
    store.publish(B.sign_bundle(make_bundle(3), k.signing))  # the index now lists v2 and v3 only
    kept = run("publish", "--state", tmp_path / "state", "--to", www, "-o", "json")
    assert kept.returncode == 0 and json.loads(kept.stdout)["pruned"] == []
    assert (www / "v1" / "bundles" / "1").exists()  # without --prune the mirror keeps every file
    r = run("publish", "--state", tmp_path / "state", "--to", www, "--prune", "-o", "json")
    assert r.returncode == 0, r.stderr
    sha = hashlib.sha256(b"\x7fELF object one").hexdigest()
    assert sorted(json.loads(r.stdout)["pruned"]) == ["v1/bundles/1", f"v1/objects/{sha}"]
    assert sorted(p.name for p in (www / "v1" / "bundles").iterdir()) == ["2", "3", "README"]
    assert not (www / "v1" / "objects" / sha).exists()
    index = B.verify_index((www / "v1" / "index").read_bytes(), [k.public], min_serial=0, min_version=0)
    assert index.version == 3 and [e.version for e in index.bundles] == [2, 3]


def test_watch_mirrors_each_new_index_until_sigterm(state: Path, tmp_path: Path, k: Keys) -> None:
    import signal
    import time

    www = tmp_path / "www"
    proc = subprocess.Popen([str(PALISADE), "publish", "--state", str(state), "--to", str(www), "--watch",
                             "--interval", "0.1", "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def mirrored() -> int:
            try:
                return B.parse_index((www / "v1" / "index").read_bytes()).version
            except (FileNotFoundError, B.VerificationError):
                return 0

        deadline = time.monotonic() + 20
        while mirrored() < 2:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        Store(state / "store", k.signing).publish(B.sign_bundle(make_bundle(3), k.signing))
        while mirrored() < 3:
            assert time.monotonic() < deadline and proc.poll() is None, "v3 was not mirrored"
            time.sleep(0.05)
        assert (www / "v1" / "bundles" / "3").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert [json.loads(line)["version"] for line in out.splitlines()] == [2, 3]  # one line per publish

"""The bundle store: atomic publishing, index upkeep, and crash safety under real SIGKILLs."""
from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.errors import StateError, VerificationError
from reconciler.state.ledger import Ledger, Result
from reconciler.state.store import Store
from support.bundles import T0, Keys, commit_id, keypair, make_bundle
from wire import bundle as B

ROOT = Path(__file__).resolve().parents[3]
CHILD = ROOT / "tests" / "support" / "crash_publisher.py"


@pytest.fixture()
def k(tmp_path: Path) -> Keys:
    return keypair(tmp_path / "keys")


@pytest.fixture()
def store(tmp_path: Path, k: Keys) -> Store:
    return Store(tmp_path / "store", k.signing)


def _publish(store: Store, k: Keys, version: int, now: dt.datetime = T0, **kw: object) -> B.Index:
    return store.publish(B.sign_bundle(make_bundle(version), k.signing), now=now, **kw)  # type: ignore[arg-type]


def _check_store(store: Store, k: Keys, now: dt.datetime | None = None) -> B.Index:
    """What an agent would check: the index verifies and every bundle it names is there, intact."""
    data = store.index_bytes()
    assert data is not None
    index = B.verify_index(data, [k.public], now=now)
    for entry in index.bundles:
        raw = store.bundle_bytes(entry.version)
        assert raw is not None, f"index names v{entry.version}, which is missing"
        b = B.verify_bundle(raw, [k.public], expected_sha256=entry.sha256, expected_size=entry.size)
        assert b.version == entry.version
    return index


def test_publish_writes_bundle_then_a_signed_index(store: Store, k: Keys) -> None:
    assert store.index() is None and store.latest_version() == 0
    index = _publish(store, k, 1)
    assert (store.root / "index.json").is_file() and (store.root / "bundles" / "v1.json").is_file()
    assert index.serial == 1 and index.version == 1
    assert dict(index.stages) == {"canary": 1, "web": 1, "fleet": 1, "default": 1}
    assert index.expires - index.issued == dt.timedelta(hours=24)
    assert _check_store(store, k, now=T0) == index
    index2 = _publish(store, k, 2, now=T0 + dt.timedelta(minutes=1))
    assert (index2.serial, index2.version, [b.version for b in index2.bundles]) == (2, 2, [1, 2])
    assert sorted(p.name for p in store.root.rglob("*")) == ["bundles", "index.json", "v1.json", "v2.json"]


def test_publishing_the_same_bundle_again_changes_nothing(store: Store, k: Keys) -> None:
    data = B.sign_bundle(make_bundle(1), k.signing)
    first = store.publish(data, now=T0)
    again = store.publish(data, now=T0 + dt.timedelta(hours=1))
    assert again == first and store.index() == first


def test_versions_only_grow_and_bundles_are_never_overwritten(store: Store, k: Keys) -> None:
    _publish(store, k, 2)
    other = B.sign_bundle(make_bundle(2, created=T0 + dt.timedelta(seconds=1)), k.signing)
    with pytest.raises(StateError, match="already names v2"):
        store.publish(other)
    with pytest.raises(StateError, match="already names v2"):
        _publish(store, k, 1)
    # A leftover bundle file (a publish interrupted before its index) is never replaced.
    store.bundle_path(3).write_bytes(b"{}")
    with pytest.raises(StateError, match=r"v3\.json exists with different content"):
        _publish(store, k, 3)
    assert store.bundle_path(3).read_bytes() == b"{}"
    assert store.latest_version() == 3  # so the ledger never hands out v3 again


def test_only_bundles_signed_by_the_store_key_are_published(store: Store, tmp_path: Path) -> None:
    stranger = keypair(tmp_path / "stranger")
    with pytest.raises(VerificationError, match="not signed by a trusted key"):
        store.publish(B.sign_bundle(make_bundle(1), stranger.signing))
    assert store.index() is None and store.versions_on_disk() == []


def test_a_store_without_key_reads_but_cannot_write(tmp_path: Path, store: Store, k: Keys) -> None:
    _publish(store, k, 1)
    reader = Store(store.root)
    assert reader.index() == store.index()
    with pytest.raises(StateError, match="without a signing key"):
        reader.resign_if_due(now=T0 + dt.timedelta(days=2))


def test_index_keeps_the_newest_bundles_and_every_pinned_one(tmp_path: Path, k: Keys) -> None:
    store = Store(tmp_path / "s", k.signing, keep=5)
    _publish(store, k, 1)
    for v in range(2, 13):
        _publish(store, k, v, stages={"canary": v, "fleet": 2, "default": 2})
    index = _check_store(store, k, now=T0)
    assert [b.version for b in index.bundles] == [2, 8, 9, 10, 11, 12]
    assert store.versions_on_disk() == list(range(1, 13))  # files stay for auditors and slow agents


def test_pin_rewrites_stages_with_a_new_serial(store: Store, k: Keys) -> None:
    _publish(store, k, 1)
    _publish(store, k, 2)
    index = store.pin({"canary": 2, "web": 1, "fleet": 1, "default": 1}, now=T0 + dt.timedelta(minutes=5))
    assert index.serial == 3 and index.version == 2 and index.pinned("web") == 1 and index.pinned("x") == 1
    with pytest.raises(StateError, match="cannot pin stage canary to v7"):
        store.pin({"canary": 7})


def test_index_is_resigned_before_it_expires(store: Store, k: Keys) -> None:
    first = _publish(store, k, 1, expiry=dt.timedelta(hours=4))
    assert store.resign_if_due(now=T0 + dt.timedelta(hours=1)) is None  # 3 h of 4 left
    resigned = store.resign_if_due(now=T0 + dt.timedelta(hours=2, minutes=1))
    assert resigned is not None
    assert resigned.serial == first.serial + 1
    assert resigned.expires == T0 + dt.timedelta(hours=6, minutes=1)
    assert (resigned.bundles, resigned.stages) == (first.bundles, first.stages)
    # An agent that saw the first index accepts the re-signed one (higher serial, same version) ...
    B.verify_index(store.index_bytes() or b"", [k.public], now=T0 + dt.timedelta(hours=5), min_serial=1,
                   min_version=1)
    # ... and the next publish keeps the lifetime of the last index.
    nxt = _publish(store, k, 2, now=T0 + dt.timedelta(hours=3))
    assert nxt.expires - nxt.issued == dt.timedelta(hours=4)


def test_an_expired_index_is_resigned_and_valid_again(store: Store, k: Keys) -> None:
    _publish(store, k, 1, expiry=dt.timedelta(hours=1))
    late = T0 + dt.timedelta(days=3)
    with pytest.raises(VerificationError, match="index expired"):
        B.verify_index(store.index_bytes() or b"", [k.public], now=late)
    assert store.resign_if_due(now=late) is not None
    assert B.verify_index(store.index_bytes() or b"", [k.public], now=late).serial == 2


def test_temporary_files_of_a_dead_writer_are_removed_on_open(store: Store, k: Keys) -> None:
    _publish(store, k, 1)
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        (store.root / f".index.json.tmp-{dead_pid.pid}").write_bytes(b"{half")
        (store.root / "bundles" / f".v2.json.tmp-{dead_pid.pid}").write_bytes(b"{half")
        (store.root / "bundles" / f".v3.json.tmp-{live.pid}").write_bytes(b"{being written")
        Store(store.root)  # a reader touches nothing
        assert len(list(store.root.rglob(".*"))) == 3
        Store(store.root, k.signing)  # a writer clears what dead writers left
        assert [p.name for p in store.root.rglob(".*")] == [f".v3.json.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()


# -- crash safety --------------------------------------------------------------------


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", f"child did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"


@pytest.mark.slow
def test_sigkill_at_random_points_never_breaks_the_store_or_the_ledger(tmp_path: Path, k: Keys) -> None:
    """Kill a real publisher (SIGKILL) at random points, many times; after every kill the store is one an
    agent accepts, and after every restart the ledger holds each accepted commit once, versions unique."""
    seed = int(os.environ.get("PALISADE_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    state = tmp_path / "state"
    count, rounds = 400, 40
    env = {**os.environ, "PALISADE_TEST_SLOW_WRITES": "0.004"}
    seen_files: dict[int, bytes] = {}  # version → bundle bytes: a version's content never changes
    last_serial = last_version = 0
    windows = {"pending publish": 0, "bundle without index": 0, "temporary file": 0}

    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, str(CHILD), str(state), str(k.key_path), str(count)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        _wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == 0:
            break  # finished before the kill
        assert proc.returncode == -signal.SIGKILL

        store = Store(state / "store")  # a reader: sees exactly what the kill left, temporaries included
        if store.index_bytes() is None:
            continue
        index = _check_store(store, k)
        assert (index.serial, index.version) >= (last_serial, last_version), f"seed {seed}: went back"
        last_serial, last_version = index.serial, index.version
        for v in store.versions_on_disk():
            data = store.bundle_bytes(v) or b""
            assert seen_files.setdefault(v, data) == data, f"seed {seed}: v{v} was rewritten"
        windows["bundle without index"] += store.versions_on_disk()[-1] > index.version
        windows["temporary file"] += any(p.name.startswith(".") for p in store.root.rglob("*"))
        with Ledger.open(state, readonly=True) as ledger:
            entries = ledger.entries()
            windows["pending publish"] += any(e.result is Result.PUBLISHING for e in entries)
            _check_ledger(entries, store, k, seed)

    # A last, uninterrupted run completes every commit.
    subprocess.run([sys.executable, str(CHILD), str(state), str(k.key_path), str(count)], check=True,
                   capture_output=True, timeout=300)
    store = Store(state / "store", k.signing)
    index = _check_store(store, k)
    with Ledger.open(state) as ledger:
        entries = ledger.entries()
        _check_ledger(entries, store, k, seed)
        assert ledger.pending() is None
    outcome = {e.commit: e.result for e in entries if e.result in (Result.ACCEPTED, Result.REJECTED)}
    assert outcome == {commit_id(n): Result.REJECTED if n % 5 == 3 else Result.ACCEPTED for n in range(count)}
    accepted = [e for e in entries if e.result is Result.ACCEPTED]
    assert index.version == max(e.version or 0 for e in accepted)
    print(f"crash windows hit (seed {seed}): {windows}, final version {index.version}")
    # The kills really landed inside the windows that matter.
    assert all(n > 0 for n in windows.values()), f"seed {seed}: {windows}"


def _check_ledger(entries: list, store: Store, k: Keys, seed: int) -> None:  # type: ignore[type-arg]
    oldest_first = list(reversed(entries))
    accepted = [e for e in oldest_first if e.result is Result.ACCEPTED]
    versions = [e.version for e in oldest_first if e.version is not None]
    assert len(versions) == len(set(versions)), f"seed {seed}: a version was reused"
    assert [e.version for e in accepted] == sorted(e.version for e in accepted)
    assert len({e.commit for e in accepted}) == len(accepted), f"seed {seed}: a commit was accepted twice"
    done = [e.position for e in oldest_first if e.result in (Result.ACCEPTED, Result.REJECTED)]
    assert done == list(range(len(done))), f"seed {seed}: commits skipped or repeated: {done}"
    for e in accepted:
        data = store.bundle_bytes(e.version or 0)
        assert data is not None, f"seed {seed}: accepted v{e.version} has no bundle"
        assert B.verify_bundle(data, [k.public], expected_sha256=None, expected_size=None).commit == e.commit
    assert sum(e.result is Result.PUBLISHING for e in entries) <= 1


def test_a_reader_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    reader = Store(tmp_path / "not-yet")
    assert reader.index() is None and reader.latest_version() == 0 and reader.bundle_bytes(1) is None
    assert not (tmp_path / "not-yet").exists()

"""`palisade keygen`, `palisade bundle verify` and `palisade ledger` through the real command line."""
from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from reconciler.findings import error
from reconciler.state.ledger import CommitInfo, Ledger
from reconciler.state.store import Store
from support.bundles import Keys, commit_id, keypair, make_bundle
from wire import bundle as B

ROOT = Path(__file__).resolve().parents[3]
PALISADE = ROOT / ".venv" / "bin" / "palisade"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PALISADE), *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.fixture()
def k(tmp_path: Path) -> Keys:
    return keypair(tmp_path / "keys")


@pytest.fixture()
def published(tmp_path: Path, k: Keys) -> Store:
    """A store with v1..v3 published now (the index is valid for 24 h)."""
    store = Store(tmp_path / "store", k.signing)
    for v in (1, 2, 3):
        store.publish(B.sign_bundle(make_bundle(v), k.signing))
    return store


# -- keygen ------------------------------------------------------------------------------


def test_keygen_writes_a_key_pair_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    r = run("keygen", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "palisade.key" in r.stdout and "keyid " in r.stdout
    assert stat.S_IMODE((out / "palisade.key").stat().st_mode) == 0o600
    before = (out / "palisade.key").read_bytes()

    again = run("keygen", "--out", out)
    assert again.returncode == 2
    assert "already exist; use --force" in again.stderr and "Traceback" not in again.stderr
    assert (out / "palisade.key").read_bytes() == before

    forced = run("keygen", "--out", out, "--force", "-o", "json")
    assert forced.returncode == 0
    assert json.loads(forced.stdout)["keyid"] == B.keyid(keys_public(out))
    assert (out / "palisade.key").read_bytes() != before


def keys_public(directory: Path) -> object:
    from reconciler.keys import load_public_key

    return load_public_key(directory / "palisade.pub")


# -- bundle verify ---------------------------------------------------------------------------


def test_verify_a_good_bundle(published: Store, k: Keys) -> None:
    r = run("bundle", "verify", published.bundle_path(2), "--pubkey", k.pub_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"OK {published.bundle_path(2)}: bundle v2 commit {commit_id(2)[:12]}")
    assert r.stdout.count("\n") == 1
    r = run("bundle", "verify", published.bundle_path(2), "--pubkey", k.pub_path, "--index",
            published.index_path, "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["ok"], doc["version"], doc["policies"]) == (True, 2, 3)


def test_a_bundle_with_one_byte_changed_fails(tmp_path: Path, published: Store, k: Keys) -> None:
    data = bytearray(published.bundle_bytes(3) or b"")
    at = data.index(b"TracingPolicy") + 2
    data[at] ^= 0x20  # "Tracing" → "TrAcing": still valid JSON
    tampered = tmp_path / "v3.json"
    tampered.write_bytes(bytes(data))

    r = run("bundle", "verify", tampered, "--pubkey", k.pub_path)
    assert r.returncode == 1
    assert "verification FAILED" in r.stderr and "does not match the digest" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""

    r = run("bundle", "verify", tampered, "--pubkey", k.pub_path, "--index", published.index_path)
    assert r.returncode == 1
    assert f"bundle digest {B.sha256_hex(bytes(data))} does not match the index" in r.stderr


def test_a_bundle_signed_by_someone_else_fails(tmp_path: Path, published: Store) -> None:
    stranger = keypair(tmp_path / "stranger")
    r = run("bundle", "verify", published.bundle_path(1), "--pubkey", stranger.pub_path)
    assert r.returncode == 1
    assert "not signed by a trusted key" in r.stderr


def test_a_bundle_the_index_does_not_list_fails(tmp_path: Path, published: Store, k: Keys) -> None:
    other = tmp_path / "v9.json"
    other.write_bytes(B.sign_bundle(make_bundle(9), k.signing))
    r = run("bundle", "verify", other, "--pubkey", k.pub_path, "--index", published.index_path)
    assert r.returncode == 1
    assert "bundle v9 is not listed in the index (serial 3)" in r.stderr


def test_an_expired_index_fails_unless_allowed(tmp_path: Path, k: Keys) -> None:
    store = Store(tmp_path / "old", k.signing)
    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    store.publish(B.sign_bundle(make_bundle(1), k.signing), now=long_ago)
    r = run("bundle", "verify", store.bundle_path(1), "--pubkey", k.pub_path, "--index", store.index_path)
    assert r.returncode == 1 and "index expired at 2020-01-02T00:00:00Z" in r.stderr
    r = run("bundle", "verify", store.bundle_path(1), "--pubkey", k.pub_path, "--index", store.index_path,
            "--allow-expired")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bundle", "verify", "/nonexistent/v1.json", "--pubkey", "{pub}"], "cannot read bundle"),
        (["bundle", "verify", "{bundle}", "--pubkey", "/nonexistent.pub"], "public key /nonexistent.pub"),
        (["bundle", "verify", "{bundle}", "--pubkey", "{key}"], "holds a signing key, not a public key"),
        (["bundle", "verify", "{bundle}"], "the following arguments are required: --pubkey"),
        (["bundle", "verify", "{bundle}", "--pubkey", "{pub}", "--index", "/nonexistent"], "cannot read index"),
    ],
)
def test_usage_and_io_problems_exit_2(published: Store, k: Keys, args: list[str], message: str) -> None:
    subst = {"{pub}": str(k.pub_path), "{key}": str(k.key_path), "{bundle}": str(published.bundle_path(1))}
    r = run(*(subst.get(a, a) for a in args))
    assert r.returncode == 2, r
    assert message in r.stderr and "Traceback" not in r.stderr


def test_garbage_is_a_verification_failure_not_a_crash(tmp_path: Path, k: Keys) -> None:
    junk = tmp_path / "junk.json"
    junk.write_bytes(os.urandom(4096))
    r = run("bundle", "verify", junk, "--pubkey", k.pub_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bundle is not UTF-8" in r.stderr or "malformed JSON" in r.stderr


# -- ledger ------------------------------------------------------------------------------------


def test_ledger_table_and_json(tmp_path: Path, k: Keys) -> None:
    state = tmp_path / "state"
    with Ledger.open(state) as ledger:
        store = Store(state / "store", k.signing)
        ledger.record_accepted(CommitInfo(commit_id(1), None, 0, "Dev <dev@example.com>",
                                          approvers=("Alice <alice@example.com>",)),
                               [], B.sign_bundle(make_bundle(1), k.signing), store)
        ledger.record_rejected(CommitInfo(commit_id(2), commit_id(1), 1, "Mallory <m@example.com>"), [
            error("enforcement/web.yaml", 9, 12, "ladder-skip", "observe → enforced skips enforce_ready"),
            error("rules/x.yaml", 1, 1, "schema", "bad"),
        ])
        # The commands read beside a running reconciler that holds the lock.
        r = run("ledger", "--state", state)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["TIME", "COMMIT", "RESULT", "VERSION", "AUTHOR", "APPROVERS", "FINDING"]
        assert commit_id(2)[:12] in lines[1] and "rejected" in lines[1]
        assert "enforcement/web.yaml:9:12: error[ladder-skip]" in lines[1] and "(+1 more)" in lines[1]
        assert commit_id(1)[:12] in lines[2] and "accepted" in lines[2] and "v1" in lines[2]
        assert "Alice <alice@example.com>" in lines[2]

        r = run("ledger", "--state", state, "-o", "json", "--limit", "1")
        (entry,) = json.loads(r.stdout)
        assert entry["commit"] == commit_id(2) and len(entry["findings"]) == 2


def test_ledger_without_state_is_a_clear_error(tmp_path: Path) -> None:
    r = run("ledger", "--state", tmp_path / "nowhere")
    assert r.returncode == 2 and "no ledger at" in r.stderr
    r = run("ledger", "--state", tmp_path, "--limit", "0")
    assert r.returncode == 2 and "must be 1 or more" in r.stderr


def test_ledger_state_from_the_environment(tmp_path: Path) -> None:
    Ledger.open(tmp_path).close()
    env = {**os.environ, "PALISADE_STATE": str(tmp_path)}
    r = subprocess.run([str(PALISADE), "ledger"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "the ledger is empty"
    env.pop("PALISADE_STATE")
    r = subprocess.run([str(PALISADE), "ledger"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "--state DIR" in r.stderr

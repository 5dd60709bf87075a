"""SIGKILL the real `palisade reconcile` at random points while it publishes a real git history.

After every kill: the index verifies with the key, every bundle it names is there with its
digest, no version's bytes ever change, serial and version never go back, and the ledger
holds no commit twice and no version twice. A final run finishes every commit, exactly once.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from nacl.signing import VerifyKey

from reconciler.keys import load_public_key
from reconciler.state.ledger import Ledger, Result
from support.policyrepo import PolicyRepo
from wire import bundle as B

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
COMMITS = 40


def _history(policy: PolicyRepo) -> set[int]:
    """COMMITS first-parent commits after the import: harmless edits, every sixth one broken and then fixed."""
    bad: set[int] = set()
    text = "Database servers."
    for n in range(1, COMMITS + 1):
        if n % 6 == 0:
            policy.change(f"typo {n}", [("enforcement/egress-guard.yaml", "state: observe", "state: observ")])
            bad.add(n)
            continue
        edits = [("scopes/groups.yaml", text, f"Database servers ({n}).")]
        if n % 6 == 1 and n > 1:
            edits.append(("enforcement/egress-guard.yaml", "state: observ", "state: observe"))
        policy.change(f"edit {n}", edits)
        text = f"Database servers ({n})."
    return bad


def _wait_locked(state: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until `proc` holds the state lock (the lock file names its pid) or has exited."""
    deadline = time.monotonic() + timeout
    lock = state / "lock"
    while proc.poll() is None:
        try:
            if lock.read_text().strip() == str(proc.pid):
                return
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "the reconciler did not take the state lock"
        time.sleep(0.01)


def _check(state: Path, key: VerifyKey, seen: dict[int, bytes], floor: list[int]) -> int:
    store = state / "store"
    if not (store / "index.json").exists():
        return 0
    index = B.verify_index((store / "index.json").read_bytes(), [key], min_serial=0, min_version=0)
    assert [index.serial, index.version] >= floor, "the index went back"
    floor[:] = [index.serial, index.version]
    for e in index.bundles:
        data = (store / "bundles" / f"v{e.version}.json").read_bytes()
        B.verify_bundle(data, [key], expected_sha256=e.sha256, expected_size=e.size)
    for f in (store / "bundles").glob("v*.json"):
        v = int(f.stem[1:])
        assert seen.setdefault(v, f.read_bytes()) == f.read_bytes(), f"v{v} was rewritten"
    with Ledger.open(state, readonly=True) as ledger:
        entries = ledger.entries()
    versions = [e.version for e in entries if e.version is not None]
    assert len(versions) == len(set(versions)), "a version was reused"
    done = [e.commit for e in entries if e.result in (Result.ACCEPTED, Result.REJECTED)]
    assert len(done) == len(set(done)), "a commit was processed twice"
    return index.version


def test_sigkill_during_publishes_never_breaks_the_store_or_the_ledger(tmp_path: Path) -> None:
    seed = int(os.environ.get("PALISADE_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    policy = PolicyRepo.create(tmp_path, min_observation="1s")
    bad = _history(policy)
    subprocess.run([str(BIN / "palisade"), "keygen", "--out", str(tmp_path / "k")], check=True, capture_output=True)
    key = load_public_key(tmp_path / "k" / "palisade.pub")
    state = tmp_path / "state"
    cmd = [str(BIN / "palisade"), "reconcile", "--repo", str(policy.path), "--state", str(state),
           "--key", str(tmp_path / "k" / "palisade.key"), "--once"]
    env = {**os.environ, "PALISADE_TEST_SLOW_WRITES": "0.05"}
    # the policies' CO-RE objects compiled once first (the history never changes a policy): otherwise every
    # kill lands in the first run's compile, and a killed run leaves no object behind
    subprocess.run([str(BIN / "palisade"), "validate", "--repo", str(policy.path), "--objects"], check=True,
                   capture_output=True, timeout=300)
    seen: dict[int, bytes] = {}
    floor = [0, 0]
    kills = 0
    points: list[int] = []  # the index version each kill left: progress between kills
    for _ in range(60):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # the random point is counted from when it holds the state lock: its start-up (imports) publishes
        # nothing, and takes longer the busier the machine is
        _wait_locked(state, proc)
        time.sleep(rng.uniform(0.2, 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        kills += 1
        points.append(_check(state, key, seen, floor))

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, f"seed {seed}: {final.stderr}"
    version = _check(state, key, seen, floor)
    with Ledger.open(state, readonly=True) as ledger:
        entries = list(reversed(ledger.entries()))
    outcome = [(e.position, e.result) for e in entries if e.result in (Result.ACCEPTED, Result.REJECTED)]
    assert outcome == [(n, Result.REJECTED if n in bad else Result.ACCEPTED) for n in range(COMMITS + 1)], seed
    accepted = [e.version for e in entries if e.result is Result.ACCEPTED]
    assert accepted == sorted(accepted) and version == accepted[-1]
    print(f"seed {seed}: {kills} kills, final v{version}, kill points {points}")
    assert kills >= 3, f"seed {seed}: the reconciler finished before it could be killed often enough"
    assert len(set(points)) >= 3, f"seed {seed}: the kills did not land at different points: {points}"

"""Two `palisade serve --leader-elect` on one state directory: one leads, the other stands by serving reads,
and takes over when the leader is SIGKILLed — real processes, a real git repository, real HTTP.

Every test checks what agents and auditors would: the index a standby serves is the leader's, it always
parses and verifies while the leader dies (polled throughout), and the ledger and the bundle files never
reuse a version.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from nacl.signing import VerifyKey

from reconciler.keys import generate, load_public_key
from reconciler.state.ledger import Ledger, LedgerEntry, Result
from support.policyrepo import DEV, PolicyRepo
from support.serve import Serve
from wire.bundle import Index, verify_bundle, verify_index

ROOT = Path(__file__).resolve().parents[2]
#: A standby must lead within this long of its leader's death (it tries the lock every 0.25 s; CI slack).
TAKEOVER = 10.0
#: A commit is published within this long once a leader runs (watch debounce + one pass, with CI slack).
PUBLISH = 15.0

pytestmark = pytest.mark.slow


@pytest.fixture()
def policy(tmp_path: Path) -> PolicyRepo:
    return PolicyRepo.create(tmp_path)


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, VerifyKey]:
    kp = generate(tmp_path / "keys")
    return kp.signing_key_path, load_public_key(kp.public_key_path)


@pytest.fixture()
def servers() -> Iterator[list[Serve]]:
    """Every server a test starts, killed at the end whatever happened (a test stops the ones it checks)."""
    started: list[Serve] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.kill()


# --- helpers ----------------------------------------------------------------------------------------------


def _until(what: str, timeout: float, check: Callable[[], object]) -> object:
    """`check()`'s first truthy answer, tried every 20 ms; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.02)


def _get(url: str, path: str) -> httpx.Response:
    return httpx.get(f"{url}{path}", timeout=10)


def _status(url: str) -> dict:  # type: ignore[type-arg]
    r = _get(url, "/v1/status")
    assert r.status_code == 200, r.text
    doc: dict = r.json()  # type: ignore[type-arg]
    return doc


def _index(url: str, key: VerifyKey) -> Index | None:
    r = _get(url, "/v1/index")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return verify_index(r.content, [key])


def _version(url: str, key: VerifyKey, version: int, timeout: float = PUBLISH) -> Index:
    index = _until(f"{url} serves v{version}", timeout,
                   lambda: (i := _index(url, key)) is not None and i.version >= version and i)
    assert isinstance(index, Index)
    return index


def _leader_gauge(url: str) -> str:
    for line in _get(url, "/metrics").text.splitlines():
        if line.startswith("palisade_reconciler_leader "):
            return line.split()[1]
    raise AssertionError("no palisade_reconciler_leader gauge")


def _commit(policy: PolicyRepo, n: int) -> str:
    """One more commit on main that validates (a README change: every accepted commit is a new version)."""
    policy.git.write("README.md", f"change {n}\n")
    return policy.git.commit(f"change {n}", author=DEV)


def _ledger(state: Path) -> list[LedgerEntry]:
    with Ledger.open(state, readonly=True) as ledger:
        return list(reversed(ledger.entries()))


def _never_reused(state: Path, key: VerifyKey) -> list[LedgerEntry]:
    """The ledger's and the store's versions: unique, growing, every bundle file verifies as its version;
    returns the accepted entries, oldest first."""
    entries = _ledger(state)
    versions = [e.version for e in entries if e.version is not None]
    assert len(versions) == len(set(versions)), f"a version was reused: {versions}"
    assert versions == sorted(versions), f"versions went back: {versions}"
    accepted = [e for e in entries if e.result is Result.ACCEPTED]
    commits = [e.commit for e in accepted]
    assert len(commits) == len(set(commits)), "a commit was published twice"
    for f in (state / "store" / "bundles").glob("v*.json"):
        bundle = verify_bundle(f.read_bytes(), [key], expected_sha256=None, expected_size=None)
        assert f.name == f"v{bundle.version}.json"
        entry = next((e for e in entries if e.version == bundle.version), None)
        assert entry is not None and entry.commit == bundle.commit, f"{f.name} is not the ledger's"
    index = verify_index((state / "store" / "index.json").read_bytes(), [key])
    assert index.version == accepted[-1].version
    return accepted


class _Watch:
    """Polls one server's index (and the newest bundle it names) until stopped, as an agent would: every
    answer must verify, and neither the serial nor the version may ever go back."""

    def __init__(self, url: str, key: VerifyKey) -> None:
        self.url, self.key = url, key
        self.errors: list[str] = []
        self.versions: list[int] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        serial = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(f"{self.url}/v1/index")
                    assert r.status_code == 200, f"{r.status_code}: {r.text}"
                    index = verify_index(r.content, [self.key], min_serial=serial,
                                         min_version=self.versions[-1] if self.versions else 0)
                    serial = index.serial
                    if not self.versions or self.versions[-1] != index.version:
                        entry = index.entry(index.version)
                        assert entry is not None
                        b = client.get(f"{self.url}/v1/bundles/{index.version}")
                        assert b.status_code == 200, f"bundle v{index.version}: {b.status_code}"
                        verify_bundle(b.content, [self.key], expected_sha256=entry.sha256, expected_size=entry.size)
                        self.versions.append(index.version)
                    self.polls += 1
                except Exception as e:  # every failure is the finding: the test reports them all
                    self.errors.append(f"{type(e).__name__}: {e}")
                self._stop.wait(0.02)

    def stop(self, *, until: int) -> None:
        """Once it has seen version `until` (it samples: let it catch up)."""
        _until(f"the watch sees v{until}", 10, lambda: self.versions[-1:] == [until] or self.errors)
        self._stop.set()
        self._thread.join(15)


def _pair(policy: PolicyRepo, state: Path, key: Path, pub: VerifyKey, servers: list[Serve],
          leader_env: dict[str, str] | None = None) -> tuple[Serve, Serve]:
    """A leader that has published v1 (or more), then a standby beside it."""
    leader = Serve(policy.path, state, key, "--leader-elect", env=leader_env)
    servers.append(leader)
    _version(leader.url, pub, 1, 60)
    standby = Serve(policy.path, state, key, "--leader-elect")
    servers.append(standby)
    assert "standing by" in standby.log, standby.log
    return leader, standby


def _stopped_cleanly(s: Serve) -> None:
    assert s.stop() == 0, s.log
    assert "Traceback" not in s.log, s.log


# --- tests ------------------------------------------------------------------------------------------------


def test_the_standby_serves_the_leaders_reads_and_takes_over_when_it_is_killed(
        policy: PolicyRepo, keys: tuple[Path, VerifyKey], tmp_path: Path, servers: list[Serve]) -> None:
    key, pub = keys
    state = tmp_path / "state"
    leader, standby = _pair(policy, state, key, pub, servers)

    # Roles, in the status and the metrics; the standby names the lock's holder.
    lead, stand = _status(leader.url), _status(standby.url)
    assert lead["role"] == "leader" and stand["role"] == "standby"
    assert stand["leader"] == {"pid": leader.proc.pid}
    assert stand["lastAccepted"]["commit"] == lead["lastAccepted"]["commit"]  # read from the ledger
    assert (_leader_gauge(leader.url), _leader_gauge(standby.url)) == ("1.0", "0.0")

    # Agents' view: the same index bytes (and ETag), the same bundle, from either server.
    a, b = _get(leader.url, "/v1/index"), _get(standby.url, "/v1/index")
    assert a.status_code == b.status_code == 200
    assert a.content == b.content and a.headers["etag"] == b.headers["etag"]
    assert _get(leader.url, "/v1/bundles/1").content == _get(standby.url, "/v1/bundles/1").content
    # A heartbeat the standby takes is the leader's fleet too (one fleet.db, SQLite WAL).
    beat = {"sensor": "node-1", "labels": {"role": "web"}, "version": 1, "stage": "default", "commit": None,
            "policies": [], "drift": {"detected": 0, "healed": 0, "unhealed": 0}, "counters": {},
            "observations": []}
    r = httpx.post(f"{standby.url}/v1/agents/node-1/heartbeat", json=beat, timeout=10)
    assert r.status_code == 204, r.text
    assert [x["id"] for x in _get(leader.url, "/v1/agents").json()["agents"]] == ["node-1"]

    # The leader publishes a commit; the standby serves it as soon as the leader has written it.
    second = _commit(policy, 2)
    _version(leader.url, pub, 2)
    assert _version(standby.url, pub, 2, 5).version == 2
    assert _status(standby.url)["lastAccepted"]["commit"] == second

    # SIGKILL the leader while an agent polls the standby: the standby leads within TAKEOVER.
    watch = _Watch(standby.url, pub)
    _until("the watch polled", 10, lambda: watch.polls > 0)
    t0 = time.monotonic()
    leader.kill()
    _until("the standby leads", TAKEOVER, lambda: _status(standby.url)["role"] == "leader")
    took = time.monotonic() - t0
    assert _leader_gauge(standby.url) == "1.0"
    assert "leading" in standby.log

    # ... and continues with the next version.
    third = _commit(policy, 3)
    _version(standby.url, pub, 3)
    watch.stop(until=3)
    assert watch.errors == [], watch.errors[:5]
    assert watch.versions == [2, 3]
    accepted = _never_reused(state, pub)
    assert [(e.version, e.commit) for e in accepted][-2:] == [(2, second), (3, third)]
    assert [e.version for e in accepted] == [1, 2, 3]
    doc = _status(standby.url)
    assert doc["role"] == "leader" and doc["lastAccepted"]["commit"] == third and "leader" not in doc
    _stopped_cleanly(standby)
    print(f"takeover {took:.2f}s after SIGKILL, {watch.polls} index polls of the standby, none failed")


@pytest.mark.parametrize("point", ["before the bundle", "between bundle and index"])
def test_a_leader_killed_mid_publish_burns_no_version_and_tears_no_index(
        point: str, policy: PolicyRepo, keys: tuple[Path, VerifyKey], tmp_path: Path,
        servers: list[Serve]) -> None:
    key, pub = keys
    state = tmp_path / "state"
    # v1 (and its CO-RE objects) by one pass first: a slow leader would spend minutes writing objects.
    once = subprocess.run([sys.executable, "-m", "reconciler.cli", "reconcile", "--repo", str(policy.path),
                           "--state", str(state), "--key", str(key), "--once"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert once.returncode == 0, once.stderr
    # Each file write of this leader pauses 0.25 s at each of its four steps: a publish takes 2 s.
    leader, standby = _pair(policy, state, key, pub, servers, leader_env={"PALISADE_TEST_SLOW_WRITES": "0.25"})
    watch = _Watch(standby.url, pub)
    second = _commit(policy, 2)

    def publishing() -> bool:
        with Ledger.open(state, readonly=True) as ledger:
            pending = ledger.pending()
        if pending is None or pending.commit != second:
            return False
        return point == "before the bundle" or (state / "store" / "bundles" / f"v{pending.version}.json").exists()

    _until(f"the leader is publishing ({point})", PUBLISH, publishing)
    leader.kill()
    _until("the standby leads", TAKEOVER, lambda: _status(standby.url)["role"] == "leader")

    # The interrupted commit is published once: as its reserved v2 when the bundle was written (the index
    # finished by the new leader), under a new version when it was not (v2 stays burnt).
    want = 2 if point == "between bundle and index" else 3
    _version(standby.url, pub, want)
    third = _commit(policy, 3)
    _version(standby.url, pub, want + 1)
    watch.stop(until=want + 1)
    assert watch.errors == [], watch.errors[:5]
    assert watch.versions == [1, want, want + 1]
    accepted = _never_reused(state, pub)
    assert [(e.version, e.commit) for e in accepted] == [(1, accepted[0].commit), (want, second), (want + 1, third)]
    ledger = {e.version: e.result for e in _ledger(state) if e.version is not None}
    if want == 3:
        assert ledger[2] is Result.INTERRUPTED
        assert not (state / "store" / "bundles" / "v2.json").exists()
    assert not [p.name for p in (state / "store").rglob(".*.tmp-*")], "the dead leader's temporaries stayed"
    _stopped_cleanly(standby)


def test_a_standby_writes_nothing_until_it_holds_the_lock(
        policy: PolicyRepo, keys: tuple[Path, VerifyKey], tmp_path: Path, servers: list[Serve]) -> None:
    key, pub = keys
    state = tmp_path / "state"
    first = Serve(policy.path, state, key)
    servers.append(first)
    _version(first.url, pub, 1, 60)
    _stopped_cleanly(first)

    # This test holds the lock as a leader would (its pid in the file): the standby must only read.
    fd = os.open(state / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        before = _files(state)
        standby = Serve(policy.path, state, key, "--leader-elect")
        servers.append(standby)
        doc = _status(standby.url)
        assert doc["role"] == "standby" and doc["leader"] == {"pid": os.getpid()}
        assert doc["version"] == 1 and doc["lastAccepted"] is not None
        # An operator's `palisade status --server` says so too.
        text = subprocess.run([sys.executable, "-m", "reconciler.cli", "status", "--server", standby.url],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert text.returncode == 0, text.stderr
        assert f"role           standby since {doc['roleSince']} (the leader is pid {os.getpid()})" in text.stdout
        assert _index(standby.url, pub) is not None
        # A commit while it stands by is not its to publish; reads meanwhile open the ledger read-only.
        waiting = _commit(policy, 2)
        for _ in range(10):
            assert _status(standby.url)["role"] == "standby"
            assert _index(standby.url, pub).version == 1  # type: ignore[union-attr]
        assert "leading" not in standby.log
        assert _files(state) == before, "the standby changed the state directory"
    finally:
        os.close(fd)  # the lock goes with it, as when a leader dies

    # Now it leads: it takes the lock, names itself in it, and publishes what came meanwhile.
    _until("the standby leads", TAKEOVER, lambda: _status(standby.url)["role"] == "leader")
    assert (state / "lock").read_text().strip() == str(standby.proc.pid)
    index = _version(standby.url, pub, 2)
    assert index.version == 2 and _status(standby.url)["lastAccepted"]["commit"] == waiting
    _never_reused(state, pub)
    _stopped_cleanly(standby)


def _files(state: Path) -> dict[str, str]:
    """What a standby must not change: every file of the state directory but the ones only SQLite's own
    readers touch (a read-only connection may create the WAL's side files) and the fleet (heartbeats)."""
    out = {}
    for p in sorted(state.rglob("*")):
        rel = p.relative_to(state).as_posix()
        if p.is_file() and not rel.endswith(("-wal", "-shm")) and not rel.startswith("fleet.db"):
            st = p.stat()
            out[rel] = f"{hashlib.sha256(p.read_bytes()).hexdigest()} {st.st_mtime_ns} {oct(st.st_mode)}"
    return out


def test_a_standby_that_cannot_take_over_exits_2_and_says_why(
        policy: PolicyRepo, keys: tuple[Path, VerifyKey], tmp_path: Path, servers: list[Serve]) -> None:
    key, pub = keys
    state = tmp_path / "state"
    leader, standby = _pair(policy, state, key, pub, servers)
    # A ledger this palisade cannot read (as after a newer one migrated it): the leader, already open,
    # does not look again; the standby must not serve on as a standby that can never lead.
    db = sqlite3.connect(state / "palisade.db", timeout=10)
    with db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    leader.kill()
    code = standby.wait(TAKEOVER)
    assert code == 2, standby.log
    assert "cannot take over" in standby.log and "schema version 99" in standby.log
    assert "Traceback" not in standby.log

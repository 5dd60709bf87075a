"""The state directory's layout, as reconciler/state/statedir.py names it, is where the real parts write:
a reconcile pass, a heartbeat through the real server, and readers that create nothing."""
from __future__ import annotations

from pathlib import Path

import httpx
from nacl.signing import SigningKey

from reconciler.publish.reconcile import Reconciler
from reconciler.rollout.status import read_status
from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app
from reconciler.state.statedir import StateDir, StateView
from support.policyrepo import PolicyRepo


def _tree(root: Path) -> set[Path]:
    # SQLite itself makes a WAL database's -wal/-shm side files for a read-only connection; not ours
    return {p.relative_to(root) for p in root.rglob("*") if not p.name.endswith(("-wal", "-shm"))}


def test_a_reconcile_pass_writes_where_the_layout_says(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    state = StateDir(tmp_path / "state")
    with Reconciler(str(repo.path), state, SigningKey.generate(), objects=False) as rec:
        out = rec.run_once()
        assert out.published == (1,)
        assert rec.state_dir == state.root and rec.store.root == state.store.root and rec.mirror == state.mirror
    assert state.store.index.is_file() and state.store.bundle(1).is_file()
    assert state.has_ledger() and state.has_rollouts() and state.lock.is_file()
    assert (state.mirror / "HEAD").is_file()
    assert state.root.stat().st_mode & 0o777 == 0o700
    assert not state.has_fleet()  # made by the first heartbeat, not before

    # a reader's view creates nothing, tidies nothing: the tree is the same after reading it
    before = _tree(state.root)
    view = state.view
    assert read_status(view)["version"] == 1
    assert _tree(state.root) == before and isinstance(view, StateView) and not isinstance(view, StateDir)
    assert not StateView(tmp_path / "nowhere").has_ledger() and not (tmp_path / "nowhere").exists()


def test_heartbeats_land_in_the_fleet_of_the_given_state_directory(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    state = StateDir(tmp_path / "state")
    with Reconciler(str(repo.path), state, SigningKey.generate(), objects=False) as rec:
        rec.run_once()
    elsewhere = StateDir(tmp_path / "fleet-elsewhere")
    for given, expect in ((None, state), (elsewhere, elsewhere)):
        with BackgroundServer(create_app(state.store.root, state=given)) as srv:
            r = httpx.post(f"{srv.url}/v1/agents/web-1/heartbeat", json={"labels": {"role": "web"}}, timeout=10)
            assert r.status_code == 204, r.text
            agents = httpx.get(f"{srv.url}/v1/agents", timeout=10).json()["agents"]
            assert [a["id"] for a in agents] == ["web-1"]
        assert expect.has_fleet()

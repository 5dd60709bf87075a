"""A real reconciler on a real policy repository, served on a loopback port, for the agent process tests."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agentproc import free_port

from reconciler import keys
from reconciler.publish.reconcile import Reconciler
from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app
from support.policyrepo import PolicyRepo


@dataclass
class Reconciled:
    repo: PolicyRepo
    rec: Reconciler
    server: BackgroundServer
    pub: Path
    state_dir: Path  # the reconciler's

    def publish_observe(self) -> int:
        """Commit web-lockdown back to observe (needs no approval), reconcile; the new version."""
        self.repo.change("web back to observe", [("enforcement/web-lockdown.yaml", "state: enforce_ready",
                                                  "state: observe")])
        out = self.rec.run_once()
        assert out.published, out
        self.server.publication.refresh()
        return out.published[-1]


@contextmanager
def reconciled(tmp: Path) -> Iterator[Reconciled]:
    repo = PolicyRepo.create(tmp)
    pair = keys.generate(tmp / "keys")
    rec = Reconciler(str(repo.path), tmp / "rstate", keys.load_signing_key(pair.signing_key_path))
    rec.run_once()
    server = BackgroundServer(create_app(rec.store.root), port=free_port()).start()
    try:
        yield Reconciled(repo, rec, server, pair.public_key_path, tmp / "rstate")
    finally:
        server.stop()
        rec.close()

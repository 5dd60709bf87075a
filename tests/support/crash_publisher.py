"""A stand-in reconciler for crash tests: processes fake commits 0..COUNT-1 in order.

    python tests/support/crash_publisher.py STATE_DIR KEY_FILE COUNT

Uses the real Ledger and Store exactly as the reconcile loop does: open (lock),
recover, then for each commit not yet processed either record a rejection
(every fifth commit) or build, sign and publish a bundle through
`Ledger.record_accepted`. Prints "ready" once recovered so a test can time its
SIGKILL into the publishing loop; PALISADE_TEST_SLOW_WRITES widens the windows.
"""
from __future__ import annotations

import sys
from pathlib import Path

# The project before tests/: tests/reconciler/state/ must not shadow the reconciler's own packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reconciler.findings import error
from reconciler.keys import load_signing_key
from reconciler.state.ledger import CommitInfo, Ledger
from reconciler.state.store import SignedBundle, Store
from support.bundles import commit_id, make_bundle


def is_bad(n: int) -> bool:
    return n % 5 == 3


def main(state: Path, key_file: Path, count: int) -> int:
    key = load_signing_key(key_file)
    with Ledger.open(state) as ledger:
        store = Store(state / "store", key)
        ledger.recover(store)
        print("ready", flush=True)
        done = max((e.position for e in ledger.entries() if e.result in ("accepted", "rejected")), default=-1)
        for n in range(done + 1, count):
            info = CommitInfo(commit_id(n), commit_id(n - 1) if n else None, n, "Dev <dev@example.com>")
            if is_bad(n):
                ledger.record_rejected(info, [error("rules/r.yaml", 3, 5, "bad", f"commit {n} is bad")])
                continue
            version = ledger.next_version(store)
            signed = SignedBundle.sign(make_bundle(version, commit=n), key)
            ledger.record_accepted(info, [], signed, store)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))

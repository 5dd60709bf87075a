"""Benchmark: publish → enforcement change on one node, through the whole chain.

A real reconciler on a real git repository, its HTTP API, and `palisade-agent run`
(a subprocess, engine on) for the canary sensor, whose workload is a cgroup of
its own. Each round is a commit on the tracked branch:
- `enforced → observe` (no approval needed): measured until the forbidden exec
  (`/bin/sh` in the workload) runs again;
- `observe → enforce_ready` (signed by a reviewer, after the observation window): not
  observable from outside, not measured;
- `enforce_ready → enforced` (signed): measured until the forbidden exec is killed.
The clock starts when the server starts serving the new index (the publish) and
stops at the first probe exec that shows the new behaviour (probes every 5 ms).
Then publishes that each add a policy new to the node (in an observe pack, as a new
policy must start; its CO-RE object built by the reconciler into the signed bundle): measured
until a probe exec's event from that policy is in the agent's event log.
Prints median and p99 per direction and overall. Target: p99 under 1 s
(Telovix documents one 15 s heartbeat cycle). Writes bench/results/agent_latency.json.

    .venv/bin/python bench/agent_latency.py [--publishes 30]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _bpfbench import ROOT, percentile, require_root, tempdir, workload, write_results

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))  # the project first: tests/reconciler/ mirrors its packages

FORBIDDEN = ["/bin/sh", "-c", "exit 0"]
_MAIN = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"
CANARY = "scope: {group: canary}\n      state: "
NEW_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  tracepoints:
    - subsystem: sched
      event: sched_process_exec
      selectors:
        - matchBinaries:
            - operator: In
              values: [/usr/bin/true]
          matchActions:
            - action: Post
"""


class Node:
    """Reconciler + API in this process, the agent in a subprocess, one workload cgroup."""

    def __init__(self, tmp: Path, cgroup: Path, *, drift_interval: float = 2.0, metrics: str | None = None) -> None:
        from reconciler import keys
        from reconciler.publish.reconcile import Reconciler
        from reconciler.serve.listen import BackgroundServer
        from reconciler.serve.server import create_app
        from support.policyrepo import PolicyRepo

        self.tmp, self.cgroup = tmp, cgroup
        # windows run on the reconciler's clock; latency is the subject here
        self.repo = PolicyRepo.create(tmp, min_observation="0s")
        pair = keys.generate(tmp / "keys")
        self.rec = Reconciler(str(self.repo.path), tmp / "rstate", keys.load_signing_key(pair.signing_key_path))
        self.rec.run_once()
        self.server = BackgroundServer(create_app(self.rec.store.root)).start()
        self.served: dict[int, float] = {}
        self._events_seen = 0
        from support.policyrepo import DEV

        self.repo_author = DEV
        self.server.publication.on_change(lambda snap: self.served.setdefault(snap.index.version, time.monotonic()))
        self.pin_root = Path("/sys/fs/bpf") / f"palisade-bench-agent-{uuid.uuid4().hex[:8]}"
        config = tmp / "agent.json"
        config.write_text(json.dumps({
            "workloads": [{"name": "web", "namespace": "default", "labels": {"app": "web"}, "cgroup": str(cgroup)}],
            "pinRoot": str(self.pin_root),
            "intervals": {"wait": 60, "drift": drift_interval, "heartbeat": 10},
            "buildObjects": False,  # the node loads the signed objects of the bundle, never compiles
        }))
        self.state = tmp / "agent-state"
        self.agent = subprocess.Popen(
            [sys.executable, "-c", _MAIN, "run", "--server", self.server.url, "--pubkey", str(pair.public_key_path),
             "--state", str(self.state), "--sensor-id", "node-canary-1", "--config", str(config),
             *(["--metrics", metrics] if metrics else [])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp / "agent.log", "w"),  # noqa: SIM115
            env={**os.environ, "PYTHONPATH": str(ROOT)})

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.state / "status.json").read_text())
            return doc
        except (OSError, ValueError):
            return {}

    def wait_version(self, version: int, timeout: float = 120) -> None:
        until(lambda: self.status().get("version") == version, timeout)

    def exec_rc(self) -> int:
        procs = self.cgroup / "cgroup.procs"

        def enter() -> None:
            procs.write_text(str(os.getpid()))

        return subprocess.run(FORBIDDEN, preexec_fn=enter, capture_output=True, timeout=30).returncode

    def _reconcile_and_serve(self) -> float:
        """Reconcile the new commit; the monotonic time the server starts serving the version it publishes."""
        out = self.rec.run_once()
        assert out.published, out
        self.server.publication.refresh()
        version = out.published[-1]
        until(lambda: version in self.served, 10)
        return self.served[version]

    def publish(self, old: str, new: str, signer: str | None) -> float:
        """Commit the canary's web-lockdown state change; the monotonic time the server starts serving it."""
        self.repo.change(f"canary {old} -> {new}", [("enforcement/web-lockdown.yaml", CANARY + old, CANARY + new)],
                         signer=signer, wait_days=4 if signer else 0)
        return self._reconcile_and_serve()

    def publish_new_policy(self, name: str) -> float:
        """Add a policy (observe: a new policy starts there) posting execs of /usr/bin/true; publish time."""
        git = self.repo.git
        git.branch(f"add-{name}")
        git.write(f"packs/baseline-observe/{name}.yaml", NEW_POLICY.format(name=name))
        git.commit(f"add {name}", author=self.repo_author, sign=self.repo.keys.get("dana"))
        git.checkout("main")
        git.merge(f"add-{name}", author=self.repo_author)
        return self._reconcile_and_serve()

    def probe_reported(self, name: str) -> bool:
        """Run /usr/bin/true in the workload; True once the new policy's event for it is in the event log."""
        procs = self.cgroup / "cgroup.procs"
        subprocess.run(["/usr/bin/true"], preexec_fn=lambda: procs.write_text(str(os.getpid())), timeout=30)
        data = b""
        live = self.state / "events.jsonl"
        with contextlib.suppress(OSError):
            if live.stat().st_size < self._events_seen:  # rotated (10 MB; the sensor fills it fast)
                with (self.state / "events.jsonl.1").open("rb") as f:
                    f.seek(self._events_seen)
                    data += f.read()
                self._events_seen = 0
            with live.open("rb") as f:
                f.seek(self._events_seen)
                chunk = f.read()
            data += chunk
            self._events_seen += len(chunk)
        return f'"policy_name": "{name}"'.encode() in data or f'"policy_name":"{name}"'.encode() in data

    def close(self) -> None:
        if self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(30)
        self.server.stop()
        self.rec.close()
        _unpin(self.pin_root)


def _unpin(root: Path) -> None:
    from bpf.engine import remove_all

    remove_all(root)


def until(cond: Callable[[], bool], timeout: float, step: float = 0.005) -> float:
    """monotonic time at which `cond()` first held; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(step)
    raise TimeoutError(f"condition not met within {timeout}s")


@contextlib.contextmanager
def node(**kw: Any) -> Iterator[Node]:
    with tempdir() as tmp, workload() as cg:
        n = Node(tmp, cg, **kw)
        try:
            n.wait_version(1)
            until(lambda: n.exec_rc() == -signal.SIGKILL, 10)  # v1: web-lockdown enforced on the canary
            yield n
        finally:
            n.close()


def stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median_ms": round(statistics.median(values) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--publishes", type=int, default=30, help="measured publishes (half each direction)")
    ap.add_argument("--new-policies", type=int, default=20, help="publishes each adding a policy new to the node")
    args = ap.parse_args()
    require_root()
    relax: list[float] = []
    enforce: list[float] = []
    added: list[float] = []
    with node() as n:
        stop = threading.Event()
        for _ in range(-(-args.publishes // 2)):
            if stop.is_set():
                break
            t = n.publish("enforced", "observe", None)
            relax.append(until(lambda: n.exec_rc() == 0, 10) - t)
            n.publish("observe", "enforce_ready", "alice")
            t = n.publish("enforce_ready", "enforced", "alice")
            enforce.append(until(lambda: n.exec_rc() == -signal.SIGKILL, 10) - t)
            if os.environ.get("AGENT_LOG") and enforce[-1] > 0.5:
                print((n.tmp / "agent.log").read_text()[-3000:])
            print(f"to observe {relax[-1] * 1000:.0f} ms, to enforced {enforce[-1] * 1000:.0f} ms", flush=True)
        # a policy the node has never had: fetched with its signed object, loaded, in effect
        for k in range(args.new_policies):
            name = f"new-{k}-{uuid.uuid4().hex[:6]}"
            with contextlib.suppress(OSError):
                n._events_seen = (n.state / "events.jsonl").stat().st_size
            t = n.publish_new_policy(name)
            added.append(until(lambda name=name: n.probe_reported(name), 20, step=0.002) - t)
            print(f"new policy in effect {added[-1] * 1000:.0f} ms", flush=True)
            if os.environ.get("AGENT_LOG") and added[-1] > 0.5:
                print((n.tmp / "agent.log").read_text()[-4000:])
    both = relax + enforce
    result = {"publishes": len(both), "to_observe": stats(relax), "to_enforced": stats(enforce), "all": stats(both),
              "new_policy": stats(added), "target_p99_ms": 1000, "target_new_policy_p99_ms": 150}
    path = write_results("agent_latency", result)
    enf = result["to_enforced"]
    print(f"publish → enforced: median {enf['median_ms']} ms, p99 {enf['p99_ms']} ms;"
          f" publish → back to observe: median {result['to_observe']['median_ms']} ms, "
          f"p99 {result['to_observe']['p99_ms']} ms; all {len(both)}: p99 {result['all']['p99_ms']} ms "
          f"(target < 1000 ms, Telovix: one 15 s heartbeat); publish → a new policy in effect: median "
          f"{result['new_policy']['median_ms']} ms, p99 {result['new_policy']['p99_ms']} ms (target p99 < 150 ms) "
          f"→ {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

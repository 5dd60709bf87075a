"""Benchmark: a container starts → its workload's policies apply to it, with real podman containers.

An exec allowlist with `podSelector: {matchLabels: {app: web}}` is loaded in enforced mode by the agent's
enforcer with container discovery on (nothing matches yet: a scope of nothing). Then N containers
labelled app=web are started one after another through podman (runc, its Docker-compatible API
served by `podman system service`). For each, the latency is from the runtime's report of the start
(its `start` event's time) to the moment the container's cgroup is in the policy's in-kernel scope
(Engine.scope_add returned): negative when the agent, watching the cgroup directories, was there
first; the part of it after the agent saw the container is shown too. Each
container is then checked for real: an exec in it must die of SIGKILL (podman exec's 137).
Prints median/p99 and writes bench/results/container_start.json.

    .venv/bin/python bench/container_start.py [--containers 25]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bpfbench import ROOT, percentile, require_root, write_results

sys.path.insert(1, str(ROOT / "tests"))  # the test runtime (tests/support/containers.py), after the project

from agent.config import Workload
from agent.containers import Container, ContainerWatcher
from agent.enforcer import EngineEnforcer
from agent.select import Desired
from bpf import syscall
from bpf.engine import remove_all
from support.containers import Podman, problem
from support.podpolicies import EXEC_ALLOWLIST as POLICY
from wire.bundle import Origin, sha256_hex
from wire.values import Scope, State


def _has(d: dict[str, float], key: str) -> Callable[[], bool]:
    return lambda: key in d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=25)
    args = ap.parse_args()
    require_root()
    why = problem()
    if why is not None:
        sys.exit(f"cannot run containers here: {why}")
    import tempfile

    root = Path("/sys/fs/bpf") / f"palisade-bench-containers-{uuid.uuid4().hex[:8]}"
    podman = Podman(Path(tempfile.mkdtemp(prefix="pl-podman-", dir="/tmp")), syscall.cgroup2_root())
    enforcer = EngineEnforcer([], pin_root=root, node_name="bench", containers=True)
    total: dict[str, float] = {}
    scoped: dict[str, float] = {}  # when each container's cgroup was in the policy's scope (epoch seconds)
    after_read: dict[str, float] = {}
    done = threading.Condition()
    watcher: ContainerWatcher | None = None

    def on_start(c: Container) -> None:
        read = time.time()
        enforcer.workload_started(Workload.of_container(c))
        now = time.time()
        with done:
            scoped[c.id] = now
            after_read[c.id] = now - read
            done.notify_all()

    try:
        podman.start()
        sha = sha256_hex(POLICY.encode())
        enforcer.load(Desired("web-exec-allowlist", Origin("rule", "web-exec-allowlist"), Scope(), State.ENFORCED,
                              POLICY, sha, 1, "c" * 40))
        watcher = ContainerWatcher(podman.socket, on_start,
                                   lambda c: enforcer.workload_stopped(Workload.of_container(c)))
        watcher.start()
        watcher.connected.wait(30)
        killed = 0
        for _ in range(args.containers):
            cid = podman.run(labels={"app": "web"}).id
            with done:
                done.wait_for(_has(scoped, cid), timeout=30)
            assert watcher is not None
            deadline = time.monotonic() + 5
            while cid not in watcher.reported_at and time.monotonic() < deadline:
                time.sleep(0.005)  # the runtime's own start event, which may come later than the scope
            total[cid] = scoped[cid] - watcher.reported_at[cid]
            killed += podman.exec(cid, "/bin/true").returncode == 137
            podman.remove(cid)
        lat = [total[k] * 1000 for k in total]
        read = [after_read[k] * 1000 for k in after_read]
        result: dict[str, Any] = {"containers": len(lat), "killed_by_policy": killed,
                  "start_to_scope_ms": {"median": round(statistics.median(lat), 2),
                                        "p99": round(percentile(lat, 99), 2), "max": round(max(lat), 2)},
                  "event_read_to_scope_ms": {"median": round(statistics.median(read), 2),
                                             "p99": round(percentile(read, 99), 2)}}
        print(f"container start -> policies apply: {len(lat)} podman containers, "
              f"median {result['start_to_scope_ms']['median']} ms, p99 {result['start_to_scope_ms']['p99']} ms "
              f"(of which after the agent saw the container: median {result['event_read_to_scope_ms']['median']} ms, "
              f"p99 {result['event_read_to_scope_ms']['p99']} ms); exec killed in {killed}/{len(lat)}")
        print(f"wrote {write_results('container_start', result)}")
        return 0 if killed == len(lat) == args.containers else 1
    finally:
        if watcher is not None:
            watcher.stop()
        enforcer.close()
        remove_all(root)
        podman.close()


if __name__ == "__main__":
    raise SystemExit(main())

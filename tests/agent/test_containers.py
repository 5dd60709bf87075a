"""Containers from a real runtime (podman + runc, its Docker-compatible API): the test runtime itself, and
the agent's discovery of containers, their cgroups and metadata (agent/containers.py). The pod-selector and
namespaced stories run on containerd's CRI too (agent/cri.py; its own tests: test_cri_containers.py)."""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfig, ContainerRuntime, load
from agent.containers import Container, ContainerWatcher
from agent.daemon import watch_containers
from agent.enforcer import EngineEnforcer
from agent.errors import ConfigError
from agent.select import Desired
from agent.workloads import WorkloadIndex
from bpf.engine import remove_all
from support.containers import IMAGE, Podman, podman_session, wait_for
from support.cri import CriRuntime, PodmanRuntime, Runtime, containerd_session
from support.podpolicies import EXEC_ALLOWLIST, https_only
from wire.bundle import Origin, sha256_hex
from wire.values import Scope, State

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def podman(require_kernel: None) -> Iterator[Podman]:
    with podman_session() as p:
        yield p


def test_a_container_runs_in_its_own_cgroup_and_is_removed(podman: Podman) -> None:
    c = podman.run(labels={"app": "web"})
    try:
        assert c.cgroup.is_dir(), c.cgroup
        assert str(c.pid) in (c.cgroup / "cgroup.procs").read_text().split()
        assert podman.exec(c.id, "/bin/true").returncode == 0
    finally:
        podman.remove(c.id)
    wait_for(lambda: not c.cgroup.exists())
    assert IMAGE


def test_the_watcher_lists_running_containers_then_follows_starts_and_deaths(podman: Podman) -> None:
    before = podman.run(labels={"app": "web", "io.kubernetes.pod.namespace": "shop",
                                "io.kubernetes.pod.name": "web-5d8f7c9b4-x2k9p", "pod-template-hash": "5d8f7c9b4"})
    started: list[Container] = []
    stopped: list[Container] = []
    w = ContainerWatcher(podman.socket, started.append, stopped.append)
    w.start()
    try:
        wait_for(lambda: any(c.id == before.id for c in started))
        c = next(c for c in started if c.id == before.id)
        assert (c.name, c.pid, Path(c.cgroup)) == (before.name, before.pid, before.cgroup)
        assert c.cgroup.endswith(f"/libpod_parent/libpod-{before.id}")
        assert (c.image_name == IMAGE and c.image_id.startswith("sha256:")) or len(c.image_id) == 64
        assert c.start_time.startswith("20")
        assert (c.namespace, c.pod_name, c.workload) == ("shop", "web-5d8f7c9b4-x2k9p", ("web", "Deployment"))
        assert c.pod_labels == {"app": "web", "pod-template-hash": "5d8f7c9b4",
                                "palisade.test": podman.run_id}
        pod = c.tetragon_pod()
        assert pod["container"]["id"] == f"docker://{before.id}" and pod["workload_kind"] == "Deployment"

        after = podman.run(labels={"app": "db"})
        wait_for(lambda: any(x.id == after.id for x in started))
        assert next(x for x in started if x.id == after.id).label_map["app"] == "db"
        podman.remove(after.id)
        wait_for(lambda: any(x.id == after.id for x in stopped))
        assert before.id in w.running and after.id not in w.running
    finally:
        w.stop()
        podman.remove(before.id)


ALLOWLIST = EXEC_ALLOWLIST
#: The same for the namespace `shop` (the container's io.kubernetes.pod.namespace label).
NAMESPACED = ALLOWLIST.replace("kind: TracingPolicy", "kind: TracingPolicyNamespaced").replace(
    "  name: web-exec-allowlist", "  name: shop-exec-allowlist\n  namespace: shop").replace(
    "  podSelector:\n    matchLabels: {app: web}\n", "")


def _desired(text: str) -> Desired:
    name = yaml.safe_load(text)["metadata"]["name"]
    return Desired(name, Origin("rule", name), Scope(), State.ENFORCED, text, sha256_hex(text.encode()), 1, "c" * 40)


@contextlib.contextmanager
def _watching(runtime: ContainerRuntime) -> Iterator[tuple[EngineEnforcer, WorkloadIndex]]:
    """The agent's enforcer with container discovery on (no configured workloads), fed by a watcher, as
    `palisade-agent run` wires them (daemon.watch_containers)."""
    root = Path("/sys/fs/bpf") / f"palisade-containers-{uuid.uuid4().hex[:8]}"
    e = EngineEnforcer([], pin_root=root, node_name="t", containers=True)
    index = WorkloadIndex()
    cfg = AgentConfig(server="http://127.0.0.1:1", pubkeys=(), sensor_id="t", state=root, containers=runtime)
    w = watch_containers(cfg, e, index)
    assert w is not None
    try:
        wait_for(w.connected.is_set)
        yield e, index
    finally:
        w.stop()
        e.close()
        _, problems = remove_all(root)
        assert problems == []


@pytest.fixture()
def watched(podman: Podman) -> Iterator[tuple[EngineEnforcer, WorkloadIndex]]:
    with _watching(ContainerRuntime(podman.socket)) as ew:
        yield ew


@pytest.fixture(scope="module", params=["podman", "containerd"])
def runtime(request: pytest.FixtureRequest, require_kernel: None) -> Iterator[Runtime]:
    """Each real runtime the agent discovers containers from: podman's Docker API, containerd's CRI."""
    if request.param == "podman":
        yield PodmanRuntime(request.getfixturevalue("podman"))
        return
    with containerd_session() as c:
        yield CriRuntime(c)


@pytest.fixture()
def runtime_watched(runtime: Runtime) -> Iterator[tuple[EngineEnforcer, WorkloadIndex]]:
    with _watching(runtime.config) as ew:
        yield ew


def _kill_events(e: EngineEnforcer, policy: str, container_id: str) -> list[dict[str, Any]]:
    out = []
    deadline = time.monotonic() + 5
    while not out and time.monotonic() < deadline:
        for ev in e.poll_events(0.2):
            body = ev.get("process_kprobe") or ev.get("process_tracepoint") or {}
            pod = body.get("process", {}).get("pod") or {}
            if body.get("policy_name") == policy and pod.get("container", {}).get("id", "").endswith(container_id):
                out.append(body)
    return out


def _scoped(e: EngineEnforcer, cgroup: Path) -> Callable[[], bool]:
    return lambda: str(cgroup) in e.scoped_at


def test_a_pod_selector_follows_containers_that_start_after_the_policy(
        runtime: Runtime, runtime_watched: tuple[EngineEnforcer, WorkloadIndex]) -> None:
    e, index = runtime_watched
    loaded = e.load(_desired(ALLOWLIST))  # nothing matches yet: loaded with a scope of nothing
    web = runtime.run({"app": "web"})
    db = runtime.run({"app": "db"})
    wait_for(_scoped(e, web.cgroup))
    wait_for(_scoped(e, db.cgroup))
    assert e.loaded()[0].handle == loaded.handle  # the same load: nothing was reloaded
    assert runtime.exec(db.id, "/bin/true") == 0  # not selected: runs
    assert runtime.exec(web.id, "/bin/true") == 137  # 128 + SIGKILL
    (kill, *_) = _kill_events(e, "web-exec-allowlist", web.id)
    assert kill["action"] == "KPROBE_ACTION_SIGKILL"
    pod = kill["process"]["pod"]
    assert pod["name"] == web.pod and pod["namespace"] == "default" and pod["workload"] == web.pod
    assert pod["container"]["name"] == web.container and pod["container"]["image"]["name"] == IMAGE
    assert pod["container"]["image"]["id"] and pod["pod_labels"]["app"] == "web"
    assert pod["container"]["id"] == f"{web.scheme}://{web.id}" and pod["container"]["start_time"].startswith("20")
    assert kill["process"]["docker"] == web.id[:31]  # Tetragon's cut of the id
    assert e.drift() == []  # the scope changed by the agent's hand is not drift

    runtime.remove(web.id)  # out of the scope when it dies; a new web container is in again
    wait_for(lambda: str(web.cgroup) not in e.scoped_at)
    again = runtime.run({"app": "web"})
    wait_for(_scoped(e, again.cgroup))
    assert runtime.exec(again.id, "/bin/true") == 137
    assert runtime.exec(db.id, "/bin/true") == 0
    assert index.of(os.stat(again.cgroup).st_ino) is not None


def test_a_namespaced_policy_follows_containers_of_its_namespace(
        runtime: Runtime, runtime_watched: tuple[EngineEnforcer, WorkloadIndex]) -> None:
    e, _ = runtime_watched
    e.load(_desired(NAMESPACED))
    shop = runtime.run({}, namespace="shop", pod="cart-0")
    other = runtime.run({}, namespace="other", pod="cart-0")
    wait_for(_scoped(e, shop.cgroup))
    wait_for(_scoped(e, other.cgroup))
    assert runtime.exec(other.id, "/bin/true") == 0
    assert runtime.exec(shop.id, "/bin/true") == 137
    (kill, *_) = _kill_events(e, "shop-exec-allowlist", shop.id)
    assert kill["process"]["pod"]["namespace"] == "shop" and kill["process"]["pod"]["name"] == "cart-0"
    assert kill["process"]["pod"]["container"]["image"]["name"] == IMAGE


def test_without_podman_a_ci_run_fails_rather_than_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="podman and runc not installed"), podman_session():
        pass


def test_agent_yaml_turns_discovery_on_with_the_runtime_socket(tmp_path: Path) -> None:
    base = {"server": "http://127.0.0.1:8740", "pubkeys": ["k.pub"], "sensorId": "n", "state": "st"}
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump(base))
    assert load(f, {}).containers is None  # bare host: only the workloads map
    f.write_text(yaml.safe_dump({**base, "containers": {"socket": "/run/podman/podman.sock"}}))
    assert load(f, {}).containers == ContainerRuntime(Path("/run/podman/podman.sock"))
    f.write_text(yaml.safe_dump({**base, "containers": {"socket": "podman.sock"}}))
    with pytest.raises(ConfigError, match=r"containers\.socket"):
        load(f, {})


def test_a_restarted_agent_adopts_the_scoped_load_and_keeps_following_containers(podman: Podman) -> None:
    root = Path("/sys/fs/bpf") / f"palisade-containers-{uuid.uuid4().hex[:8]}"
    cfg = AgentConfig(server="http://127.0.0.1:1", pubkeys=(), sensor_id="t", state=root,
                      containers=ContainerRuntime(podman.socket))
    first = EngineEnforcer([], pin_root=root, node_name="t", containers=True)
    try:
        w1 = watch_containers(cfg, first, WorkloadIndex())
        assert w1 is not None
        handle = first.load(_desired(ALLOWLIST)).handle
        web = podman.run(labels={"app": "web"})
        wait_for(_scoped(first, web.cgroup))
        w1.stop()
        first.close()  # the agent goes away; the pinned load keeps enforcing
        assert podman.exec(web.id, "/bin/true").returncode == 137

        second = EngineEnforcer([], pin_root=root, node_name="t", containers=True)
        w2 = watch_containers(cfg, second, WorkloadIndex())
        assert w2 is not None
        try:
            assert [x.handle for x in second.loaded()] == [handle]  # adopted, not reloaded
            wait_for(_scoped(second, web.cgroup))  # listed at start
            later = podman.run(labels={"app": "web"})
            wait_for(_scoped(second, later.cgroup))
            assert podman.exec(later.id, "/bin/true").returncode == 137
            assert second.drift() == []
        finally:
            w2.stop()
            second.close()
    finally:
        first.close()
        _, problems = remove_all(root)
        assert problems == []


#: A policy on the cgroup connect hook: its programs are attached to each container's cgroup as it joins.
CONNECT = https_only("web-only-https")


def test_a_cgroup_hook_policy_is_attached_to_each_container_that_joins_and_detached_when_it_dies(
        podman: Podman, watched: tuple[EngineEnforcer, WorkloadIndex]) -> None:
    e, _ = watched
    handle = e.load(_desired(CONNECT)).handle
    web = podman.run(labels={"app": "web"})
    db = podman.run(labels={"app": "db"})
    wait_for(_scoped(e, web.cgroup))
    wait_for(_scoped(e, db.cgroup))

    def connect(cid: str) -> str:
        return podman.exec(cid, "/bin/busybox", "nc", "127.0.0.1", "9").stderr

    assert "refused" in connect(db.id).lower()  # reaches the (closed) port in its own network namespace
    assert "not permitted" in connect(web.id).lower()  # EPERM from the connect4 hook on its cgroup
    ino = os.stat(web.cgroup).st_ino
    links = sorted(p.name for p in (e.pin_root / handle).glob(f"link_*_cg{ino}"))
    assert links, "no cgroup link pinned for the container"
    assert e.drift() == []
    podman.remove(web.id)
    wait_for(lambda: not list((e.pin_root / handle).glob(f"link_*_cg{ino}")))
    assert e.drift() == []


def test_a_container_selector_picks_containers_by_their_name(
        podman: Podman, watched: tuple[EngineEnforcer, WorkloadIndex]) -> None:
    e, _ = watched
    e.load(_desired(ALLOWLIST.replace("web-exec-allowlist", "sidecar-exec-allowlist").replace(
        "  podSelector:\n    matchLabels: {app: web}\n", "  containerSelector:\n    matchLabels: {name: sidecar}\n")))
    pod = {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "cart-0"}
    sidecar = podman.run(labels={**pod, "io.kubernetes.container.name": "sidecar"})
    main = podman.run(labels={**pod, "io.kubernetes.container.name": "cart"})
    wait_for(_scoped(e, sidecar.cgroup))
    wait_for(_scoped(e, main.cgroup))
    assert podman.exec(main.id, "/bin/true").returncode == 0
    assert podman.exec(sidecar.id, "/bin/true").returncode == 137
    (kill, *_) = _kill_events(e, "sidecar-exec-allowlist", sidecar.id)
    assert kill["process"]["pod"]["container"]["name"] == "sidecar" and kill["process"]["pod"]["name"] == "cart-0"


def test_the_base_sensors_exec_and_exit_events_name_a_discovered_container_and_its_image(
        podman: Podman, tmp_path: Path) -> None:
    from agent.apply import NullEnforcer
    from agent.daemon import start_sensor
    from agent.events import EventLog, read_all
    from agent.sensor import remove_pins

    pin_root = Path("/sys/fs/bpf") / f"palisade-containers-base-{uuid.uuid4().hex[:8]}"
    cfg = AgentConfig(server="http://127.0.0.1:1", pubkeys=(), sensor_id="t", state=tmp_path, pin_root=pin_root,
                      containers=ContainerRuntime(podman.socket))
    log = EventLog(tmp_path)
    base = start_sensor(cfg, log)
    if base is None:
        # Seen once in CI, right after the containerd tests: libbpf found no valid kernel BTF (ESRCH) for
        # this load alone, while every other base-sensor load of the run worked. One more try shows whether
        # it lasts; what this test asserts is the naming, not the load (tests/agent/test_sensor.py is).
        time.sleep(1)
        base = start_sensor(cfg, log)
    assert base is not None, "the base sensor did not start"
    index = WorkloadIndex()
    watcher = watch_containers(cfg, NullEnforcer(), index, base)  # the base sensor alone: no policy
    assert watcher is not None
    try:
        wait_for(watcher.connected.is_set)
        web = podman.run(labels={"app": "web"})
        wait_for(lambda: index.of(os.stat(web.cgroup).st_ino) is not None)
        marker = uuid.uuid4().hex[:12]
        assert podman.exec(web.id, "/bin/true", marker).returncode == 0

        def execs() -> list[dict[str, Any]]:
            # the host's `podman exec … marker` has it in its arguments too; the container's /bin/true is busybox
            return [e["process_exec"]["process"] for e in read_all(tmp_path) if "process_exec" in e
                    and marker in e["process_exec"]["process"].get("arguments", "")
                    and e["process_exec"]["process"]["binary"] == "/bin/busybox"]

        wait_for(execs)
        (proc,) = execs()
        pod = proc["pod"]
        assert pod["container"]["id"] == f"docker://{web.id}" and pod["container"]["image"]["name"] == IMAGE
        assert pod["pod_labels"]["app"] == "web" and pod["name"] == web.name and proc["docker"] == web.id[:31]
        wait_for(lambda: any("process_exit" in e and e["process_exit"]["process"]["pid"] == proc["pid"]
                             for e in read_all(tmp_path)))
        (exit_,) = [e["process_exit"]["process"] for e in read_all(tmp_path)
                    if "process_exit" in e and e["process_exit"]["process"]["pid"] == proc["pid"]]
        assert exit_["pod"]["container"]["image"]["name"] == IMAGE
    finally:
        watcher.stop()
        base.stop()
        log.close()
        remove_pins(pin_root)

"""Containers from a CRI socket (agent/cri.py): a real containerd 1.6 with its CRI plugin and runc
(scripts/containerd_runtime.py), pods made through the CRI as the kubelet makes them; the watcher's
listing, its cgroup wake-ups (containerd 1.6 has no GetContainerEvents), the metadata from the sandbox,
and agent.yaml's `containers.cri`. The policy stories on CRI pods are test_containers.py's, parametrized."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import ContainerRuntime, load
from agent.containers import Container, cgroup_of
from agent.cri import CriWatcher, container_of_status
from agent.errors import ConfigError
from support.containers import wait_for
from support.cri import IMAGE, Containerd, containerd_session

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def containerd(require_kernel: None) -> Iterator[Containerd]:
    with containerd_session() as c:
        yield c


@pytest.mark.kernel
def test_a_pod_runs_in_the_kubelets_cgroup_and_is_removed(containerd: Containerd) -> None:
    pod = containerd.run(labels={"app": "web"})
    try:
        assert pod.cgroup == containerd.cgroup2_root / "kubepods" / "besteffort" / f"pod{pod.uid}" / pod.id
        assert pod.cgroup.is_dir() and str(pod.pid) in (pod.cgroup / "cgroup.procs").read_text().split()
        assert containerd.exec(pod.id, "/bin/true")[0] == 0
        assert containerd.exec(pod.id, "/bin/sh", "-c", "echo $$")[1].strip() != ""
    finally:
        containerd.remove(pod.id)
    wait_for(lambda: not pod.cgroup.exists())


@pytest.mark.kernel
def test_the_watcher_lists_pods_then_follows_starts_and_stops_through_the_cgroups(containerd: Containerd) -> None:
    before = containerd.run(labels={"app": "web", "pod-template-hash": "5d8f7c9b4"}, namespace="shop",
                            name="web-5d8f7c9b4-x2k9p", container="cart")
    started: list[Container] = []
    stopped: list[Container] = []
    reported: dict[str, float] = {}

    def up(c: Container) -> None:
        reported[c.id] = time.time()
        started.append(c)

    w = CriWatcher(containerd.socket, up, stopped.append)
    w.start()
    try:
        wait_for(lambda: any(c.id == before.id for c in started))
        c = next(c for c in started if c.id == before.id)
        assert (c.pid, Path(c.cgroup), c.runtime) == (before.pid, before.cgroup, "containerd")
        assert (c.name, c.container_name, c.image_name) == ("cart", "cart", IMAGE)
        assert c.image_id.startswith("sha256:") and c.start_time.startswith("20")
        assert (c.namespace, c.pod_name, c.pod_uid) == ("shop", "web-5d8f7c9b4-x2k9p", before.uid)
        assert c.workload == ("web", "Deployment")
        assert c.pod_labels == {"app": "web", "pod-template-hash": "5d8f7c9b4", "palisade.test": containerd.run_id}
        assert c.tetragon_pod()["container"]["id"] == f"containerd://{before.id}"
        wait_for(lambda: w.streams is not None)
        assert w.streams is False  # containerd 1.6: UNIMPLEMENTED, so the cgroup tree is the event source

        after = containerd.run(labels={"app": "db"})
        wait_for(lambda: any(x.id == after.id for x in started))
        seen = reported[after.id] - w.reported_at[after.id]  # from the start the runtime records
        assert next(x for x in started if x.id == after.id).pod_labels["app"] == "db"
        containerd.remove(after.id)
        wait_for(lambda: any(x.id == after.id for x in stopped))
        assert before.id in w.running and after.id not in w.running
        # a pod's sandbox is no container: only the two containers were ever reported
        assert {x.id for x in started} == {before.id, after.id}
        assert seen < 1.0, seen
        print(f"\ncri: container started → reported in {seen * 1000:.1f} ms (cgroup wake-up, no event stream)")
    finally:
        w.stop()
        containerd.remove(before.id)


@pytest.mark.kernel
def test_a_restarted_containerd_is_listed_again_and_followed(containerd: Containerd) -> None:
    first = containerd.run(labels={"app": "web"})
    gone = containerd.run(labels={"app": "db"})
    stopped: list[Container] = []
    w = CriWatcher(containerd.socket, lambda c: None, stopped.append)
    w.start()
    try:
        wait_for(lambda: {first.id, gone.id} <= set(w.running))

        def while_down() -> None:
            wait_for(lambda: not w.connected.is_set())  # the watcher finds it gone
            os.kill(gone.pid, signal.SIGKILL)  # and a container dies meanwhile (its shim lives on)

        containerd.restart(while_down)
        wait_for(w.connected.is_set)
        wait_for(lambda: [c.id for c in stopped] == [gone.id])  # seen when it lists again
        assert first.id in w.running and w.errors >= 1
        later = containerd.run(labels={"app": "web"})
        wait_for(lambda: later.id in w.running)
        assert containerd.exec(first.id, "/bin/true")[0] == 0  # the pod ran on through the restart
    finally:
        w.stop()
        for pod in list(containerd.pods):
            containerd.remove(pod)


def test_a_cri_status_and_its_sandbox_make_the_container(tmp_path: Path) -> None:
    from agent.criapi import runtime_pb2 as pb

    cid = "cd" * 32
    (tmp_path / "proc" / "77").mkdir(parents=True)
    (tmp_path / "proc" / "77" / "cgroup").write_text(f"1:cpu:/x\n0::/kubepods/besteffort/podu1/{cid}\n")
    status = pb.ContainerStatus(id=cid, metadata=pb.ContainerMetadata(name="cart"), state=pb.CONTAINER_RUNNING,
                                started_at=1_796_000_000_123_456_789, image=pb.ImageSpec(image="shop:1"),
                                image_ref="sha256:beef", labels={"io.kubernetes.pod.name": "stale"})
    sandbox = pb.PodSandboxStatus(id="s" * 64, labels={"app": "shop", "io.kubernetes.pod.name": "shop-0"},
                                  metadata=pb.PodSandboxMetadata(name="shop-0", uid="u1", namespace="store"))
    c = container_of_status(status, {"pid": 77}, sandbox, Path("/cg"), tmp_path / "proc")
    assert c is not None
    assert c.cgroup == f"/cg/kubepods/besteffort/podu1/{cid}"
    assert (c.pod_name, c.namespace, c.pod_uid, c.container_name) == ("shop-0", "store", "u1", "cart")  # the sandbox's
    assert (c.image_name, c.image_id, c.runtime) == ("shop:1", "sha256:beef", "containerd")
    assert c.start_time == "2026-11-30T00:53:20.123456789Z" and c.pod_labels == {"app": "shop"}
    assert container_of_status(status, {}, sandbox, Path("/cg"), tmp_path / "proc") is None  # no pid: not running


def test_agent_yaml_takes_a_cri_socket_or_the_docker_api_not_both(tmp_path: Path) -> None:
    base = {"server": "http://127.0.0.1:8740", "pubkeys": ["k.pub"], "sensorId": "n", "state": "st"}
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump({**base, "containers": {"cri": "/run/containerd/containerd.sock"}}))
    assert load(f, {}).containers == ContainerRuntime(Path("/run/containerd/containerd.sock"), "cri")
    for bad in ({"cri": "/run/c.sock", "socket": "/run/podman/podman.sock"}, {"cri": "c.sock"}, {}):
        f.write_text(yaml.safe_dump({**base, "containers": bad}))
        with pytest.raises(ConfigError, match="containers"):
            load(f, {})


#: Runs `palisade-agent run` with grpc made unimportable (as in a base install), printing the exit code.
_WITHOUT_GRPC = r"""
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "grpc":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Blocker())
from agent.cli import main
sys.exit(main(["run", "--config", sys.argv[1], "--no-engine"]))
"""


def test_a_cri_socket_without_grpcio_exits_3_saying_what_to_install(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump({"server": "http://127.0.0.1:1", "pubkeys": [str(tmp_path / "k.pub")],
                                 "sensorId": "n", "state": str(tmp_path / "st"),
                                 "containers": {"cri": "/run/containerd/containerd.sock"}}))
    r = subprocess.run([sys.executable, "-c", _WITHOUT_GRPC, str(f)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 3, r.stderr
    assert "grpcio" in r.stderr and "palisade[cri]" in r.stderr and "Traceback" not in r.stderr


def test_without_containerd_a_ci_run_fails_rather_than_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"), containerd_session():
        pass


def test_the_committed_cri_messages_are_what_the_proto_compiles_to() -> None:
    """`make cri-proto` regenerates agent/criapi/runtime_pb2.py; the committed one must be its output (no hand
    edits): its embedded descriptor is the proto's."""
    from google.protobuf import descriptor_pb2

    from agent.criapi import runtime_pb2 as pb

    fd = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fd)
    proto = (ROOT / "agent" / "criapi" / "runtime.proto").read_text()
    messages = {m.name for m in fd.message_type}
    declared = {line.split()[1] for line in proto.splitlines() if line.startswith("message ")}
    assert fd.package == "runtime.v1" and messages == declared
    assert [m.name for m in fd.service[0].method] == [
        line.split()[1].split("(")[0] for line in proto.splitlines() if line.strip().startswith("rpc ")]


class _EventingRuntime:
    """A CRI server of the test's own on a unix socket, for the path containerd 1.6 cannot show: a runtime
    with GetContainerEvents (containerd 1.7 and later). Its containers are real processes of the test."""

    def __init__(self, sock: Path) -> None:
        import queue

        import grpc

        from agent.criapi import runtime_pb2 as pb

        self.pb = pb
        self.running: dict[str, tuple[int, str]] = {}  # id -> (pid, sandbox id)
        self.events: queue.Queue[object] = queue.Queue()
        self.sandbox = pb.PodSandboxStatus(id="f" * 64, labels={"app": "web", "io.kubernetes.pod.name": "web-0"},
                                           metadata=pb.PodSandboxMetadata(name="web-0", uid="u7", namespace="shop"))

        def unary(fn: Callable[[Any, Any], Any], req: Any, resp: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString,
                                                       response_serializer=resp.SerializeToString)

        def stream(_: Any, context: Any) -> Iterator[Any]:
            while context.is_active():
                with contextlib.suppress(queue.Empty):
                    ev = self.events.get(timeout=0.1)
                    if ev is None:
                        return
                    yield ev

        handlers = {
            "Version": unary(lambda r, _: pb.VersionResponse(runtime_name="test"), pb.VersionRequest,
                             pb.VersionResponse),
            "ListContainers": unary(lambda r, _: pb.ListContainersResponse(containers=[
                pb.Container(id=c, pod_sandbox_id=s, state=pb.CONTAINER_RUNNING) for c, (_, s) in self.running.items()
                if not r.filter.id or r.filter.id == c]), pb.ListContainersRequest, pb.ListContainersResponse),
            "ContainerStatus": unary(self._status, pb.ContainerStatusRequest, pb.ContainerStatusResponse),
            "PodSandboxStatus": unary(lambda r, _: pb.PodSandboxStatusResponse(status=self.sandbox),
                                      pb.PodSandboxStatusRequest, pb.PodSandboxStatusResponse),
            "GetContainerEvents": grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=pb.GetEventsRequest.FromString,
                response_serializer=pb.ContainerEventResponse.SerializeToString),
        }
        from concurrent import futures

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("runtime.v1.RuntimeService",
                                                                                   handlers),))
        self.server.add_insecure_port(f"unix:{sock}")
        self.server.start()

    def _status(self, r: Any, context: Any) -> Any:
        import grpc

        pb = self.pb
        if r.container_id not in self.running:
            context.abort(grpc.StatusCode.NOT_FOUND, f"container {r.container_id} not found")
        pid, sid = self.running[r.container_id]
        return pb.ContainerStatusResponse(
            status=pb.ContainerStatus(id=r.container_id, metadata=pb.ContainerMetadata(name="app"),
                                      state=pb.CONTAINER_RUNNING, started_at=time.time_ns(),
                                      image=pb.ImageSpec(image=IMAGE), image_ref="sha256:" + "e" * 64),
            info={"info": json.dumps({"pid": pid, "sandboxID": sid})})

    def start(self, cid: str, pid: int) -> None:
        self.running[cid] = (pid, self.sandbox.id)
        self.events.put(self.pb.ContainerEventResponse(container_id=cid,
                                                       container_event_type=self.pb.CONTAINER_STARTED_EVENT,
                                                       pod_sandbox_status=self.sandbox))

    def stop(self, cid: str) -> None:
        del self.running[cid]
        self.events.put(self.pb.ContainerEventResponse(container_id=cid,
                                                       container_event_type=self.pb.CONTAINER_STOPPED_EVENT))

    def close(self) -> None:
        self.events.put(None)
        self.server.stop(1).wait()


def test_a_runtime_with_container_events_is_followed_by_its_stream(tmp_path: Path) -> None:
    rt = _EventingRuntime(tmp_path / "cri.sock")
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    started: list[Container] = []
    stopped: list[Container] = []
    w = CriWatcher(tmp_path / "cri.sock", started.append, stopped.append)
    try:
        rt.running["a" * 64] = (sleepers[0].pid, rt.sandbox.id)  # running before the agent: listed
        w.start()
        wait_for(lambda: [c.id for c in started] == ["a" * 64])
        rt.start("b" * 64, sleepers[1].pid)
        wait_for(lambda: len(started) == 2)
        assert w.streams is True
        c = started[1]
        assert (c.id, c.pid, c.name, c.pod_name, c.namespace, c.pod_uid) == (
            "b" * 64, sleepers[1].pid, "app", "web-0", "shop", "u7")
        assert c.pod_labels == {"app": "web"} and c.cgroup == cgroup_of(c.pid)
        rt.stop("b" * 64)
        wait_for(lambda: [x.id for x in stopped] == ["b" * 64])
        assert set(w.running) == {"a" * 64}
    finally:
        w.stop()
        rt.close()
        for p in sleepers:
            p.kill()
            p.wait()

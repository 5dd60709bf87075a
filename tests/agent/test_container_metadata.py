"""A container's metadata from the runtime's inspect document: cgroup, pod identity, workload, Tetragon's pod."""
from __future__ import annotations

from pathlib import Path

from agent.config import Workload
from agent.containers import Container, cgroup_of, container_of
from agent.workloads import pod_of

CID = "ab" * 32


def _proc(tmp_path: Path, pid: int, text: str) -> Path:
    (tmp_path / "proc" / str(pid)).mkdir(parents=True)
    (tmp_path / "proc" / str(pid) / "cgroup").write_text(text)
    return tmp_path / "proc"


def test_the_cgroup_is_the_init_process_cgroup2_line(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 7, f"4:memory:/libpod_parent/libpod-{CID}\n0::/libpod_parent/libpod-{CID}\n")
    root = Path("/sys/fs/cgroup/unified")
    assert cgroup_of(7, proc, root) == f"{root}/libpod_parent/libpod-{CID}"
    assert cgroup_of(8, proc, root) is None  # gone


def _kube(**extra: str) -> Container:
    labels = {"io.kubernetes.pod.name": "shop-7c9d8f6b5-q2x7z", "io.kubernetes.pod.namespace": "store",
              "io.kubernetes.pod.uid": "0f3c", "io.kubernetes.container.name": "cart", "app": "shop",
              "pod-template-hash": "7c9d8f6b5", **extra}
    return Container(CID, "k8s_cart_shop", "sha256:1234", "docker.io/library/shop:1",
                     tuple(sorted(labels.items())), "2026-12-01T22:00:00Z", 4242, "/sys/fs/cgroup/x",
                     runtime="containerd")


def test_kubelet_labels_give_the_pod_and_the_deployment() -> None:
    c = _kube()
    assert (c.pod_name, c.namespace, c.pod_uid, c.container_name) == ("shop-7c9d8f6b5-q2x7z", "store", "0f3c", "cart")
    assert c.workload == ("shop", "Deployment")
    assert c.pod_labels == {"app": "shop", "pod-template-hash": "7c9d8f6b5"}  # the kubelet's own left out
    assert pod_of(Workload.of_container(c)) == {
        "namespace": "store", "name": "shop-7c9d8f6b5-q2x7z",
        "container": {"id": f"containerd://{CID}", "name": "cart",
                      "image": {"id": "sha256:1234", "name": "docker.io/library/shop:1"},
                      "start_time": "2026-12-01T22:00:00Z", "pid": 1},
        "pod_labels": {"app": "shop", "pod-template-hash": "7c9d8f6b5"},
        "workload": "shop", "workload_kind": "Deployment"}


def test_a_plain_container_is_its_own_pod_in_the_default_namespace(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 99, f"0::/libpod_parent/libpod-{CID}\n")
    info = {"Id": CID, "Name": "/web1", "Image": "sha256:feed",
            "State": {"Pid": 99, "StartedAt": "2026-12-01T22:00:00Z"},
            "Config": {"Image": "localhost/web:1", "Labels": {"app": "web"}}}
    c = container_of(info, Path("/cg"), proc)
    assert c is not None
    assert (c.name, c.image_name, c.cgroup, c.namespace, c.workload) == (
        "web1", "localhost/web:1", f"/cg/libpod_parent/libpod-{CID}", "default", ("web1", None))
    assert "workload_kind" not in c.tetragon_pod()
    assert container_of({**info, "State": {"Pid": 0}}, Path("/cg"), proc) is None  # not running

"""A real CRI runtime on this machine: Debian's containerd (1.6) with its CRI plugin and runc, all of its
state under one directory, its CRI on a unix socket there, pods and containers made through the CRI
(Debian has no crictl: agent/cri.py's client makes the calls).

Used by the tests (tests/support/cri.py).

How it runs here (measured): containerd gets a config file of its own (root, state, sockets, the runc
shim's root and the CRI plugin's directories under `base`; nothing under /var/lib or /etc), the cgroupfs
driver (`SystemdCgroup = false`), no registry and no CNI: the image is a busybox-static rootfs written as
a docker archive and `ctr -n k8s.io images import`ed, the same image is the sandbox image (its command,
`sleep`, keeps the sandbox alive), and pods use the host's network namespace (no CNI plugin needed). As
the kubelet does with cgroupfs, a pod's sandbox gets the cgroup parent `/kubepods/besteffort/pod<uid>`,
so a container's cgroup2 directory is `<unified>/kubepods/besteffort/pod<uid>/<container id>`.
The one path outside `base` that containerd 1.6 insists on is its shims' socket directory
(/run/containerd/s, fixed in the binary); each shim removes its socket when it exits, and `close()`
removes any a killed shim left. `close()` removes every pod of the run, stops containerd and its shims,
unmounts what they left mounted under `base`, removes the pods' cgroups and `base`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from podman_runtime import IMAGE, RUN_LABEL, add_rootfs, stop_group  # scripts/ is on the path of whoever runs either
from podman_runtime import problem as runtime_problem

from agent.cri import CriClient, CriNotFound, CriProtocolError, CriUnreachable

__all__ = ["IMAGE", "Containerd", "ContainerdUnavailable", "Pod", "problem"]

NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin works in
SHIM_SOCKETS = Path("/run/containerd/s")


class ContainerdUnavailable(Exception):
    """containerd did not come up, or its CRI did not answer."""


def problem() -> str | None:
    """Why containerd's CRI cannot run pods here, or None."""
    why = runtime_problem(("containerd", "containerd-shim-runc-v2", "ctr", "runc"), "containerd needs root")
    if why is not None:
        return why
    try:
        import grpc  # noqa: F401
    except ImportError:
        return "grpcio is not installed (pip install '.[cri]')"
    return None


@dataclass(frozen=True)
class Pod:
    """A pod sandbox with one container, as started here."""

    sandbox_id: str
    id: str  # the container's
    name: str  # the pod's
    namespace: str
    uid: str
    container: str  # the container's name
    pid: int
    cgroup: Path  # the container's cgroup2 directory


def _docker_archive(path: Path, image: str) -> None:
    """A one-layer docker archive (`docker save` format) of a busybox-static rootfs."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        add_rootfs(tar)  # podman's test image's files
    blob = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(blob).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [image], "Layers": ["layer/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in ((config_name, config), ("layer/layer.tar", blob), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def _config(base: Path, image: str) -> str:
    return f"""version = 2
root = "{base}/root"
state = "{base}/state"
oom_score = 0
[grpc]
  address = "{base}/cri.sock"
[ttrpc]
  address = "{base}/cri.sock.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  disable_apparmor = true
  restrict_oom_score_adj = true  # the sandbox's -998 needs CAP_SYS_RESOURCE, which this host withholds
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which('runc') or 'runc'}"
        Root = "{base}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{base}/cni/bin"
    conf_dir = "{base}/cni/conf"
"""


class Containerd:
    """One containerd of its own under `base` (keep it short: its sockets' paths must fit a sockaddr_un)."""

    image, run_label = IMAGE, RUN_LABEL  # podman's, so the tests name one image whichever runs it

    def __init__(self, base: Path, cgroup2_root: Path) -> None:
        self.base, self.cgroup2_root, self.socket = base, cgroup2_root, base / "cri.sock"
        self.run_id = uuid.uuid4().hex[:8]  # every sandbox of this run is labelled run_label=run_id
        self._daemon: subprocess.Popen[bytes] | None = None
        self._client: CriClient | None = None
        self.pods: dict[str, Pod] = {}  # by container id
        self._parents: set[str] = set()  # the cgroup parents given to sandboxes
        self._sandboxes: set[str] = set()
        self._made_run_dir = False

    @property
    def cri(self) -> CriClient:
        assert self._client is not None, "not started"
        return self._client

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
                              capture_output=True, text=True, timeout=timeout, check=True)

    def start(self) -> None:
        """Start containerd, wait for its CRI, import the image."""
        self.base.mkdir(parents=True, exist_ok=True)
        self._made_run_dir = not SHIM_SOCKETS.parent.exists()  # containerd makes it for its shims' sockets
        (self.base / "config.toml").write_text(_config(self.base, self.image))
        self._client = CriClient(self.socket, timeout=30)
        self._daemon_up()
        archive = self.base / "image.tar"
        _docker_archive(archive, self.image)
        self.ctr("images", "import", str(archive))

    def _daemon_up(self) -> None:
        with open(self.base / "containerd.log", "ab") as err:  # the child keeps its own descriptor
            self._daemon = subprocess.Popen(["containerd", "--config", str(self.base / "config.toml")],
                                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 30
        pb = self.cri.pb
        while True:
            try:  # the CRI answers Version before it has loaded its pods ("server is not initialized yet")
                self.cri.call("ListPodSandbox", pb.ListPodSandboxRequest())
                return
            except (CriUnreachable, CriProtocolError) as e:
                if self._daemon.poll() is not None or time.monotonic() > deadline:
                    raise ContainerdUnavailable(f"containerd's CRI did not come up ({e}): {self.log()}") from None
                time.sleep(0.05)

    def restart(self, down: Callable[[], None] | None = None) -> None:
        """Stop containerd (its shims, and so the containers, live on), call `down()`, start it again."""
        assert self._daemon is not None
        stop_group(self._daemon)
        if down is not None:
            down()
        self._daemon_up()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.base / "containerd.log").read_text()[-3000:]
        return ""

    def run(self, *command: str, labels: dict[str, str] | None = None, namespace: str = "default",
            name: str | None = None, container: str = "main",
            container_labels: dict[str, str] | None = None) -> Pod:
        """A pod (sandbox) labelled `labels` with one container `container` running `command` (default: sleep),
        as the kubelet makes them: the pod's labels and io.kubernetes.pod.* on the sandbox, the container's
        io.kubernetes.* on the container."""
        pb = self.cri.pb
        name = name or f"pl-{self.run_id}-{uuid.uuid4().hex[:6]}"
        uid = str(uuid.uuid4())
        parent = f"/kubepods/besteffort/pod{uid}"
        self._parents.add(parent)
        kube = {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid}
        logs = self.base / "pods" / uid
        logs.mkdir(parents=True, exist_ok=True)
        host_net = pb.NamespaceOption(network=pb.NODE, pid=pb.POD, ipc=pb.POD)
        sandbox = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            log_directory=str(logs),  # no hostname: the host's UTS namespace goes with its network
            labels={**(labels or {}), **kube, self.run_label: self.run_id},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=parent,
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=host_net)))
        sid = self.cri.call("RunPodSandbox", pb.RunPodSandboxRequest(config=sandbox)).pod_sandbox_id
        self._sandboxes.add(sid)
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=container, attempt=0),
            image=pb.ImageSpec(image=self.image), command=list(command or ("/bin/sleep", "600")),
            labels={**kube, "io.kubernetes.container.name": container, **(container_labels or {})},
            log_path=f"{container}.log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD))))
        try:
            cid = self.cri.call("CreateContainer", pb.CreateContainerRequest(
                pod_sandbox_id=sid, config=config, sandbox_config=sandbox)).container_id
            self.cri.call("StartContainer", pb.StartContainerRequest(container_id=cid))
        except Exception:
            self._remove_sandbox(sid)
            raise
        _, info = self.cri.status(cid)
        pod = Pod(sid, cid, name, namespace, uid, container, int(info["pid"]),
                  self.cgroup2_root / parent.lstrip("/") / cid)
        self.pods[cid] = pod
        return pod

    def exec(self, cid: str, *command: str, timeout: int = 30) -> tuple[int, str, str]:
        """Run `command` in the container (CRI ExecSync): its exit code, stdout, stderr."""
        pb = self.cri.pb
        r = self.cri.call("ExecSync", pb.ExecSyncRequest(container_id=cid, cmd=list(command), timeout=timeout),
                          timeout=timeout + 10)
        return r.exit_code, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def remove(self, cid: str) -> None:
        """Stop and remove the container and its pod."""
        pod = self.pods.pop(cid, None)
        pb = self.cri.pb
        with contextlib.suppress(CriNotFound):
            self.cri.call("StopContainer", pb.StopContainerRequest(container_id=cid, timeout=0))
            self.cri.call("RemoveContainer", pb.RemoveContainerRequest(container_id=cid))
        if pod is not None:
            self._remove_sandbox(pod.sandbox_id)

    def _remove_sandbox(self, sid: str) -> None:
        pb = self.cri.pb
        with contextlib.suppress(CriNotFound):
            self.cri.call("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            self.cri.call("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=sid))

    def _shims(self) -> list[int]:
        """The pids of the shims this containerd started (they name its socket on their command line)."""
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (d / "cmdline").read_bytes().split(b"\0")
                    if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in argv:
                        out.append(int(d.name))
        return out

    def close(self) -> None:
        """Remove every pod of this run, stop containerd and its shims, unmount, remove cgroups and `base`."""
        if self._client is not None:
            pb = self._client.pb
            with contextlib.suppress(Exception):
                f = pb.PodSandboxFilter(label_selector={self.run_label: self.run_id})
                for s in self._client.call("ListPodSandbox", pb.ListPodSandboxRequest(filter=f)).items:
                    r = self._client.call("ListContainers", pb.ListContainersRequest(
                        filter=pb.ContainerFilter(pod_sandbox_id=s.id)))
                    for c in r.containers:
                        with contextlib.suppress(Exception):
                            self.remove(c.id)
                    with contextlib.suppress(Exception):
                        self._remove_sandbox(s.id)
            self._client.close()
        shims = self._shims()
        if self._daemon is not None:
            stop_group(self._daemon)
        for pid in shims:  # a shim outlives containerd while it has a task; none should be left by now
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._unmount()
        self._remove_cgroups()
        shutil.rmtree(self.base, ignore_errors=True)

    def _unmount(self) -> None:
        """Whatever containerd left mounted under `base` (the snapshotter's overlays, a sandbox's shm), deepest
        first."""
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        prefix = str(self.base) + "/"
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def _remove_cgroups(self) -> None:
        """The pods' cgroups in every hierarchy, then `kubepods/besteffort` and `kubepods` when empty."""
        for hierarchy in [*self.cgroup2_root.parent.iterdir(), self.cgroup2_root]:
            for parent in self._parents:
                pod = hierarchy / parent.lstrip("/")
                with contextlib.suppress(OSError):
                    for child in pod.iterdir():
                        if child.is_dir():
                            child.rmdir()
                with contextlib.suppress(OSError):
                    pod.rmdir()
            for up in ("kubepods/besteffort", "kubepods"):
                with contextlib.suppress(OSError):
                    (hierarchy / up).rmdir()
        for sid in self._sandboxes:  # the socket of a shim killed above (containerd 1.6 names it so)
            digest = hashlib.sha256(f"{self.socket}/{NAMESPACE}/{sid}".encode()).hexdigest()
            with contextlib.suppress(OSError):
                (SHIM_SOCKETS / digest).unlink()
        if self._made_run_dir:
            with contextlib.suppress(OSError):
                SHIM_SOCKETS.rmdir()
                SHIM_SOCKETS.parent.rmdir()

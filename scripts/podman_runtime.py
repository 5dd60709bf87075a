"""A real container runtime on this machine: Debian's podman with runc, its own storage under one
directory, and its Docker-compatible API served on a unix socket (`podman system service`).

Used by `make demo` (scripts/demo.py) and by the tests (tests/support/containers.py).

How it runs here (measured): `--cgroup-manager=cgroupfs --runtime=runc` (crun refuses this hybrid
cgroup layout), explicit `--ulimit nofile/nproc` (the defaults exceed the sandbox's hard limits), no
network (`--network=none`) and no registry, so the image is a busybox-static rootfs `podman import`ed
once. A container's cgroup2 directory is `<unified>/libpod_parent/libpod-<id>`. Every container
started here carries the label `<run_label>=<run id>`, and `close()` removes them all, stops the
service, and removes the socket, the storage and the image.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

IMAGE = "localhost/palisade-test/busybox:1"
BUSYBOX = Path("/bin/busybox")
#: Applets linked in the image's /bin (the rootfs has nothing else).
APPLETS = ("sh", "sleep", "true", "cat", "ls", "id")
RUN_LABEL = "palisade.test"


class PodmanUnavailable(Exception):
    """podman system service did not come up."""


def problem(tools: tuple[str, ...] = ("podman", "runc"), root: str = "podman with cgroupfs needs root") -> str | None:
    """Why podman (or the runtime made of `tools`) cannot run containers here, or None."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (run scripts/kernel-tools.sh)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing (busybox-static; run scripts/kernel-tools.sh)"
    if os.geteuid() != 0:
        return root
    return None


def add_rootfs(tar: tarfile.TarFile) -> None:
    """The image's files: a busybox-static rootfs, its applets linked in /bin (scripts/containerd_runtime.py
    makes its image of the same)."""
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        info = tarfile.TarInfo(d)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    tar.add(BUSYBOX, "bin/busybox")
    for applet in APPLETS:
        info = tarfile.TarInfo(f"bin/{applet}")
        info.type, info.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(info)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """End a daemon started in a session of its own: SIGTERM to its group, SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)


@dataclass(frozen=True)
class Started:
    id: str
    name: str
    pid: int
    cgroup: Path  # its cgroup2 directory


class Podman:
    """One podman of its own: storage under `base`, the API on `base/api.sock` (keep `base` short: the
    socket's path must fit a sockaddr_un)."""

    def __init__(self, base: Path, cgroup2_root: Path, *, image: str = IMAGE, run_label: str = RUN_LABEL) -> None:
        self.base = base
        self.cgroup2_root = cgroup2_root
        self.image = image
        self.run_label = run_label
        self.run_id = uuid.uuid4().hex[:8]
        self.socket = base / "api.sock"
        self._service: subprocess.Popen[bytes] | None = None
        self._global = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run"),
                        "--cgroup-manager=cgroupfs", "--runtime=runc", "--events-backend=file",
                        "--tmpdir", str(base / "tmp")]

    def podman(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._global, *args], capture_output=True, text=True, timeout=timeout, check=check)

    def start(self) -> None:
        """Import the image and start the API service; returns once the socket answers."""
        self.base.mkdir(parents=True, exist_ok=True)
        rootfs = self.base / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            add_rootfs(tar)
        self.podman("import", str(rootfs), self.image)
        with open(self.base / "service.log", "wb") as err:  # the child keeps its own descriptor
            self._service = subprocess.Popen(
                [*self._global, "system", "service", "--time=0", f"unix://{self.socket}"],
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self._answers():
            if self._service.poll() is not None or time.monotonic() > deadline:
                raise PodmanUnavailable(f"podman system service did not come up: {self.service_log()}")
            time.sleep(0.05)

    def service_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.base / "service.log").read_text()[-2000:]
        return ""

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(2)
            s.connect(str(self.socket))
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.")
        except OSError:
            return False
        finally:
            s.close()

    def run(self, *command: str, labels: dict[str, str] | None = None, name: str | None = None) -> Started:
        """Start a detached container running `command` (default: sleep) with `labels`."""
        name = name or f"pl-{self.run_id}-{uuid.uuid4().hex[:6]}"
        args = ["run", "-d", "--network=none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                "--name", name, "--label", f"{self.run_label}={self.run_id}"]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        cid = self.podman(*args, self.image, *(command or ("sleep", "600"))).stdout.strip()
        info = json.loads(self.podman("inspect", cid).stdout)[0]
        return Started(cid, name, int(info["State"]["Pid"]),
                       self.cgroup2_root / "libpod_parent" / f"libpod-{cid}")

    def exec(self, cid: str, *command: str) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", cid, *command, check=False)

    def remove(self, cid: str) -> None:
        self.podman("rm", "-f", "-t", "0", cid, check=False)

    def close(self) -> None:
        """Remove every container of this run, stop the service, remove the image, storage and socket."""
        ids = self.podman("ps", "-aq", "--filter", f"label={self.run_label}={self.run_id}",
                          check=False).stdout.split()
        if ids:
            self.podman("rm", "-f", "-t", "0", *ids, check=False)
        if self._service is not None:
            stop_group(self._service)
        self.podman("rmi", "-f", self.image, check=False)
        # unmount the storage's overlay mounts (podman leaves its driver's root mounted)
        self.podman("system", "reset", "-f", check=False, timeout=60)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        shutil.rmtree(self.base, ignore_errors=True)
        # the parent cgroup podman makes in every hierarchy for its containers (and conmon's), once empty
        for parent in self.cgroup2_root.parent.glob("*/libpod_parent"):
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    if child.is_dir():
                        child.rmdir()
                parent.rmdir()

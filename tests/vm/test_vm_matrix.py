"""The kernel matrix on a real QEMU: Debian's stock 6.1 kernel boots, runs a command on the host's root, read-only.

One boot (module fixture) runs a guest script whose outcomes the first tests check: the
kernel release, the guest BTF, a write refused on the host root, a CO-RE kernel test
passing inside, and the script's exit code 3 coming back. Further boots check the
runner's timeouts and a failing guest init. A boot costs ~5 s under TCG, the whole module
about a minute; it runs when PALISADE_VM=1 or CI=true (there, `make test` runs it).
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from vm_support import ROOT, RUN, VENV_PYTHON, VM_MARKS, Boot, boot, orphan_qemus

CORE_TEST = "tests/bpf/core/test_core_sensor.py::test_sigkill_is_reported_as_the_exit_signal"

pytestmark = VM_MARKS


@pytest.fixture(scope="module")
def probe_name() -> str:
    return f"palisade-vm-write-probe-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def guest(require_vm: None, tmp_path_factory: pytest.TempPathFactory, probe_name: str) -> Boot:
    script = f"""
echo "uname=$(uname -r)"
echo "btf=$(sha256sum /sys/kernel/btf/vmlinux | cut -d' ' -f1)"
if touch /{probe_name} 2>/tmp/err; then echo root=writable; else echo "root=$(cat /tmp/err)"; fi
if echo x > /tmp/x; then echo tmp=writable; fi
{VENV_PYTHON} -m pytest -q -p no:cacheprovider {CORE_TEST}
echo "pytest=$?"
exit 3
"""
    try:
        return boot(tmp_path_factory.mktemp("vm"), "--core-objects", "--", "/bin/sh", "-c", script)
    finally:
        Path("/", probe_name).unlink(missing_ok=True)  # only there if the guest could write the host root


def test_the_guest_runs_debians_6_1_kernel(guest: Boot) -> None:
    release = guest.value("uname")
    assert re.fullmatch(r"6\.1\.0-\d+-amd64", release), release
    assert release != os.uname().release


def test_the_guest_command_exit_code_comes_back(guest: Boot) -> None:
    assert guest.returncode == 3, guest.stderr
    assert "command exited 3" in guest.stderr


def test_the_host_root_is_read_only_inside_and_tmp_is_writable(guest: Boot, probe_name: str) -> None:
    assert "Read-only file system" in guest.value("root")
    assert not Path("/", probe_name).exists()
    assert guest.value("tmp") == "writable"


def test_the_guest_btf_is_the_one_extracted_from_its_vmlinuz(guest: Boot) -> None:
    # the CO-RE objects were built on the host for this BTF: the guest's lookup must hit them
    cache = Path(os.environ.get("PALISADE_VM_CACHE") or "/var/cache/palisade-vm")
    btf = cache / "kernels" / guest.value("uname") / "vmlinux.btf"
    assert hashlib.sha256(btf.read_bytes()).hexdigest() == guest.value("btf")


def test_a_core_kernel_test_passes_inside(guest: Boot) -> None:
    assert guest.value("pytest") == "0", guest.stdout
    assert re.search(r"^1 passed", guest.stdout, re.M), guest.stdout


def test_boot_is_quick_and_nothing_is_left_behind(guest: Boot, record_property: pytest.RecordProperty) -> None:
    record_property("boot_seconds", guest.boot_seconds)
    record_property("run_seconds", round(guest.seconds, 1))
    assert guest.boot_seconds < 60
    assert list(guest.tmpdir.iterdir()) == []
    assert orphan_qemus(guest.tmpdir) == []


def test_a_boot_timeout_kills_qemu_and_cleans_up(require_vm: None, tmp_path: Path) -> None:
    b = boot(tmp_path / "t", "--boot-timeout", "1", "--", "true")
    assert b.returncode == 124, b.stderr
    assert "BootTimeout" in b.stderr
    assert b.seconds < 30
    assert list(b.tmpdir.iterdir()) == [] and orphan_qemus(b.tmpdir) == []


def test_a_command_timeout_kills_qemu_and_cleans_up(require_vm: None, tmp_path: Path) -> None:
    b = boot(tmp_path / "t", "--timeout", "2", "--", "sh", "-c", "echo started; exec sleep 300")
    assert b.returncode == 125, b.stderr
    assert "CommandTimeout" in b.stderr and "started" in b.stdout  # output streamed before the kill
    assert b.seconds < 60
    assert list(b.tmpdir.iterdir()) == [] and orphan_qemus(b.tmpdir) == []


def test_a_failing_guest_init_is_a_boot_failure(require_vm: None, tmp_path: Path) -> None:
    b = boot(tmp_path / "t", "--writable", f"/nonexistent-{uuid.uuid4().hex[:8]}", "--", "true")
    assert b.returncode == 123, b.stderr
    assert "BootFailed" in b.stderr and "no such directory" in b.stderr


def test_sigterm_to_the_runner_kills_qemu_and_cleans_up(require_vm: None, tmp_path: Path) -> None:
    tmp = tmp_path / "t"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, str(RUN), "--kernel", "6.1", "--", "sleep", "300"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the command is running once the runner says the guest booted
            if "booted in" in line:
                break
        assert orphan_qemus(tmp), "no QEMU running for this test"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(tmp.iterdir()) == [] and orphan_qemus(tmp) == []

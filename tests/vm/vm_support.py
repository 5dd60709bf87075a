"""What the VM tests share: booting the runner (scripts/vm/run.py) and reading what the guest printed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.kernel import unavailable

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "scripts" / "vm" / "run.py"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

#: Marks of every test that boots a VM: they run when PALISADE_VM=1 or CI=true (`make test` in CI).
VM_MARKS = [
    pytest.mark.kernel,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PALISADE_VM") != "1" and os.environ.get("CI") != "true",
                       reason="boots QEMU (about a minute): set PALISADE_VM=1"),
]


@dataclass(frozen=True)
class Boot:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    tmpdir: Path

    def value(self, key: str) -> str:
        m = re.search(rf"^{key}=(.*)$", self.stdout, re.M)
        assert m, f"{key}= not in the guest's output:\n{self.stdout}\n{self.stderr}"
        return m.group(1)

    @property
    def boot_seconds(self) -> float:
        m = re.search(r"booted in ([\d.]+) s", self.stderr)
        assert m, self.stderr
        return float(m.group(1))


def boot(tmp: Path, *args: str, timeout: float = 600) -> Boot:
    tmp.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # TMPDIR: the runner's temporary files go here, so the test sees that none is left
    proc = subprocess.run([sys.executable, str(RUN), "--kernel", "6.1", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)})
    return Boot(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started, tmp)


def orphan_qemus(tmp: Path) -> list[int]:
    """QEMU processes still running with a file of this test's temporary directory."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(tmp).encode() in cmdline:
            found.append(int(d.name))
    return found


@pytest.fixture(scope="session")
def require_vm() -> None:
    if os.geteuid() != 0:
        unavailable("the VM runner needs root (it installs QEMU and fetches a kernel into /var/cache)")
    if not VENV_PYTHON.is_file():
        unavailable(f"{VENV_PYTHON} is missing (make venv)")

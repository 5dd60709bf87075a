"""The policy engine on Debian's stock 6.1 kernel (QEMU, TCG): the corpus, the exec allowlist, the evasions.

The guest runs the engine's own kernel tests on the host's code, read-only. Objects are
CO-RE, so the guest loads what the host built: it gets a writable copy of the host's
object cache and builds with the host's BTF (`PALISADE_CORE_BTF`), which gives the same
object names for the same sources. Only a source that differs on 6.1 (a feature or a
tracepoint layout of its own) is compiled in the guest, which TCG makes slow (6-7 s).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from vm_support import ROOT, VENV_PYTHON, VM_MARKS, Boot, boot

from bpf.core.build import KERNEL_BTF, default_cache_dir

#: The guest runs about 240 engine tests under TCG (10-12 min): more than the suite's 600 s per test.
pytestmark = [*VM_MARKS, pytest.mark.timeout(1700)]

#: The corpus as the guest can reach it (its /tmp, /var/tmp and /run are its own tmpfs).
CORPUS = Path(os.environ.get("PALISADE_CORPUS") or ROOT.parent / "shared" / "tetragon-corpus").resolve()
_HIDDEN = ("/tmp/", "/var/tmp/", "/run/")

#: Needs a cgroup v1 hierarchy, which the guest (cgroup2 only) does not mount.
HOST_ONLY = ("tests/bpf/test_engine.py::test_a_load_failing_halfway_is_rolled_back",)
#: The engine's kernel tests that run in the VM (the rest of tests/bpf runs on this kernel only).
ENGINE_TESTS = ("tests/bpf/test_engine_corpus.py", "tests/bpf/test_engine.py", "tests/bpf/test_engine_evasion.py",
                "tests/bpf/test_engine_kprobes.py", "tests/bpf/test_engine_task_selectors.py",
                "tests/bpf/test_engine_lsm.py", "tests/bpf/test_engine_pids.py", "tests/bpf/test_engine_rawtp.py",
                "tests/bpf/test_engine_stacks.py", "tests/bpf/test_engine_ftrace.py",
                "tests/bpf/test_engine_fd_install_corpus.py", "tests/bpf/test_engine_socktrack.py",
                "tests/bpf/test_engine_returns.py", "tests/bpf/test_engine_loader.py",
                "tests/bpf/test_engine_ratelimit.py", "tests/bpf/test_engine_usdt.py",
                "tests/bpf/test_engine_fentry.py")


@pytest.fixture(scope="module")
def engine_in_6_1(require_vm: None, tmp_path_factory: pytest.TempPathFactory) -> Boot:
    cache = default_cache_dir()
    btf = cache / "btf" / "host-vmlinux"
    btf.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(KERNEL_BTF, btf)
    deselect = " ".join(f"--deselect {t}" for t in HOST_ONLY)
    probe = ("import json; from bpf.probe import probe; "
             "print('probe=' + json.dumps({n: [f.available, f.reason] for n, f in probe().items()}))")
    script = f"""
echo "uname=$(uname -r)"
{VENV_PYTHON} -c "{probe}"
{VENV_PYTHON} -m pytest -q -rs -p no:cacheprovider -s {' '.join(ENGINE_TESTS)} {deselect}
echo "pytest=$?"
"""
    # executable and writable in the guest (not a blocked dir); one per run, so two runs never share it
    scratch = Path(f"/var/lib/palisade-vm-scratch-{os.getpid()}")
    scratch.mkdir(exist_ok=True)
    try:
        corpus = ("--writable", str(CORPUS)) if str(CORPUS).startswith(_HIDDEN) else ()
        return boot(tmp_path_factory.mktemp("vm-engine"), *corpus, "--writable", str(cache), "--writable", str(scratch),
                    "--env", f"PALISADE_CORE_CACHE={cache}", "--env", f"PALISADE_CORE_BTF={btf}",
                    "--env", f"PALISADE_EXEC_SCRATCH={scratch}", "--env", f"PALISADE_CORPUS={CORPUS.resolve()}",
                    "--timeout", "1500", "--", "/bin/sh", "-c", script, timeout=1800)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_the_engine_tests_pass_on_the_stock_6_1_kernel(engine_in_6_1: Boot,
                                                       record_property: pytest.RecordProperty) -> None:
    record_property("run_seconds", round(engine_in_6_1.seconds, 1))
    assert re.fullmatch(r"6\.1\.0-\d+-amd64", engine_in_6_1.value("uname"))
    assert engine_in_6_1.value("pytest") == "0", engine_in_6_1.stdout[-6000:]
    assert re.search(r"^\d+ passed", engine_in_6_1.stdout, re.M), engine_in_6_1.stdout[-3000:]


def test_the_probe_proves_what_a_stock_kernel_adds(engine_in_6_1: Boot) -> None:
    # kprobes, trampolines and BPF LSM, which this host lacks, each proved by a program the guest loaded
    features = json.loads(engine_in_6_1.value("probe"))
    for name in ("kprobes", "fentry", "fexit", "fmod_ret", "bpf_lsm", "uprobes", "uretprobes",
                 "btf", "bpf_loop", "send_signal", "ring_buffer"):
        assert features[name][0], (name, features[name][1])
    # Debian's 6.1 has no fprobe: kprobe_multi links are refused, and the probe says so in the kernel's words
    assert not features["kprobe_multi"][0] and "ENOTSUP" in features["kprobe_multi"][1]
    assert "fired" in features["uprobes"][1]
    # Debian kernels have no error injection: neither bpf_override_return nor fmod_ret on syscall entries
    assert not features["override_return"][0] and not features["fmod_ret_syscall"][0]
    assert "not modifiable" in features["fmod_ret_syscall"][1]


def test_the_corpus_policies_that_load_here_load_on_6_1(engine_in_6_1: Boot) -> None:
    # test_engine_corpus prints "Tetragon corpus: N loaded, ..." (-s): kprobes, LSM and fmod_ret load there
    m = re.search(r"Tetragon corpus: (\d+) loaded", engine_in_6_1.stdout)
    assert m, engine_in_6_1.stdout[-3000:]
    assert int(m.group(1)) >= 70  # issue 12's target for a stock kernel (test_engine_corpus's STOCK_KERNEL_FLOOR)



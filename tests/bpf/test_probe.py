"""bpf.probe on this machine: the facts DESIGN.md §6 records, proved by programs the
kernel really loaded during the probe."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from bpf import probe as probe_mod
from bpf import syscall as sc
from bpf.probe import FEATURE_NAMES, TETRA_NAMES, Feature, Features, probe
from bpf.syscall import Insn, ProgType


def _next_prog_id() -> int:
    """The id the kernel gives the next program (ids only grow)."""
    fd = sc.prog_load(ProgType.BPF_PROG_TYPE_TRACEPOINT, [Insn(0xB7, dst=0, imm=0), Insn(0x95)])
    try:
        return sc.prog_info(fd).id
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def probed(require_kernel: None) -> tuple[Features, int, int]:
    """A fresh probe, with program ids taken just before and just after it."""
    before = _next_prog_id()
    features = probe(cache=False)
    after = _next_prog_id()
    return features, before, after


def test_this_machine_has_what_design_records(probed: tuple[Features, int, int]) -> None:
    f, _, _ = probed
    for name in ("tracepoints", "syscall_tracepoints", "send_signal", "cgroup_sock_create",
                 "cgroup_connect4", "cgroup_connect6", "cgroup_sendmsg4", "cgroup_sendmsg6", "cgroup_send_signal",
                 "ia32_syscalls", "ring_buffer", "perf_buffer", "btf", "bpf_loop"):
        assert f.get(name).available, f"{name}: {f.get(name).reason}"
    assert "killed a test process" in f.send_signal.reason


def test_missing_features_say_why(probed: tuple[Features, int, int]) -> None:
    f, _, _ = probed
    assert not f.kprobes.available
    assert "without kprobes" in f.kprobes.reason
    assert not f.bpf_lsm.available
    # Listed as active, yet the program does not load: both facts are in the reason.
    assert "bpf is an active LSM" in f.bpf_lsm.reason
    assert "fails to load" in f.bpf_lsm.reason
    assert not f.override_return.available
    assert f.override_return.reason
    for trampoline in (f.fentry, f.fexit, f.fmod_ret, f.fmod_ret_syscall):  # this kernel refuses trampolines
        assert not trampoline.available
        assert "fails to load" in trampoline.reason
    assert "test fexit program on vfs_read" in f.fexit.reason
    # The program loads; the kernel (no fprobe here) refuses the link, and says so.
    assert not f.kprobe_multi.available
    assert f.kprobe_multi.reason == ("a test kprobe_multi program on vfs_read fails to attach: "
                                     "ENOTSUP (Operation not supported)")
    assert len(f.kprobe_multi.test_programs) == 1


def test_btf_and_bpf_loop_are_proved_by_programs_that_use_them(probed: tuple[Features, int, int]) -> None:
    f, _, _ = probed
    assert "current->mm->exe_file through bpf_get_current_task_btf()" in f.btf.reason
    assert "bpf_loop with a callback subprogram loaded" in f.bpf_loop.reason
    assert len(f.btf.test_programs) == 1
    assert len(f.bpf_loop.test_programs) == 1


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool is not installed")
def test_btf_member_offsets_agree_with_bpftool(require_kernel: None) -> None:
    raw = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    task = re.search(r"\] STRUCT 'task_struct' size=\d+ vlen=\d+\n((?:\t.*\n)+)", raw)
    assert task
    bits = dict(re.findall(r"'(\w+)' type_id=\d+ bits_offset=(\d+)", task.group(1)))
    for member in ("mm", "self_exec_id", "group_leader", "pid", "tgid"):
        assert probe_mod._btf_member_offset("task_struct", member) == int(bits[member]) // 8, member
    assert probe_mod._btf_member_offset("task_struct", "no_such_member") is None
    assert probe_mod._btf_func_id("vfs_read") == int(re.search(r"\[(\d+)\] FUNC 'vfs_read'", raw).group(1))


def test_uprobes_are_proved_by_one_firing(probed: tuple[Features, int, int]) -> None:
    f, _, _ = probed
    assert f.uprobes.available, f.uprobes.reason
    assert "fired when it ran" in f.uprobes.reason
    assert f.uprobes.test_programs
    # The entry of /usr/bin/true never returns: the uretprobe is on libc's getpid in a test process.
    assert f.uretprobes.available, f.uretprobes.reason
    assert re.fullmatch(r"a uretprobe on getpid in /\S+/libc\.so\.6 fired when a test process returned from it",
                        f.uretprobes.reason)
    assert len(f.uretprobes.test_programs) == 1


def test_positive_answers_come_from_programs_the_kernel_loaded(probed: tuple[Features, int, int]) -> None:
    f, before, after = probed
    seen: set[int] = set()
    for name, feature in f.items():
        if feature.available:
            assert feature.test_programs, f"{name} is reported available without a test program"
        for prog_id in feature.test_programs:
            assert before < prog_id < after, f"{name}: program {prog_id} was not loaded during the probe"
            assert prog_id not in seen
            seen.add(prog_id)
    # The test programs are gone again: the probe leaves nothing loaded.
    live = set(sc.prog_ids())
    assert not seen & live


def test_probe_leaves_no_cgroups_behind(probed: tuple[Features, int, int]) -> None:
    leftovers = [p.name for p in sc.cgroup2_root().iterdir() if p.name.startswith(f"palisade-probe-{os.getpid()}-")]
    assert leftovers == []


def test_missing_for_words_refusals(probed: tuple[Features, int, int]) -> None:
    f, _, _ = probed
    assert f.missing_for("kprobes") == "kprobes, which this kernel lacks"
    assert f.missing_for("bpf_lsm") == "BPF LSM, which this kernel lacks"
    assert f.missing_for("syscall_tracepoints") is None
    assert f.missing_for("fentry") == "fentry programs, which this kernel lacks"
    assert f.missing_for("fexit") == "fexit programs, which this kernel lacks"
    assert f.missing_for("kprobe_multi") == "kprobe_multi links, which this kernel lacks"
    assert f.missing_for("bpf_loop") is None
    with pytest.raises(ValueError, match="unknown kernel feature 'kprobe_session'"):
        f.missing_for("kprobe_session")


def test_tetra_names_carry_our_answers(probed: tuple[Features, int, int]) -> None:
    f, _, _ = probed
    tetra = f.tetra()
    assert tuple(tetra) == TETRA_NAMES
    assert TETRA_NAMES[:5] == ("override_return", "buildid", "kprobe_multi", "uprobe_multi", "fmodret")
    ours = {"override_return": f.override_return, "kprobe_multi": f.kprobe_multi, "fmodret": f.fmod_ret,
            "fmodret_syscall": f.fmod_ret_syscall, "signal": f.send_signal, "lsm": f.bpf_lsm, "fentry": f.fentry,
            "probe_write_user": f.probe_write_user}
    for name, value in tetra.items():
        assert value == (ours[name].available if name in ours else None), name
    assert tetra["signal"] is True and tetra["kprobe_multi"] is False


def test_cache_returns_the_same_answer_without_probing_again(probed: tuple[Features, int, int]) -> None:
    first = probe(cache=True)
    # Every probe builds a new answer; getting the very same object back means no probing.
    assert probe(cache=True) is first
    assert probe(cache=False) is not first


def test_json_lists_every_feature(probed: tuple[Features, int, int]) -> None:
    f, _, _ = probed
    doc = f.to_json()
    assert doc["kernel_release"] == os.uname().release
    features = doc["features"]
    assert isinstance(features, dict)
    assert list(features) == list(FEATURE_NAMES)
    assert features["kprobes"]["available"] is False


def test_a_failing_check_is_a_negative_answer_not_a_crash() -> None:
    def boom() -> str:
        raise PermissionError(13, "Permission denied", "/sys/fs/cgroup/x")

    feature = probe_mod._check(boom)
    assert feature == Feature(False, "PermissionError: [Errno 13] Permission denied: '/sys/fs/cgroup/x'")

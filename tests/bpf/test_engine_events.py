"""Events: Tetragon's export shape from ring-buffer records, and the per-policy counters (incl. lost)."""
from __future__ import annotations

import json
import os
import struct
import sys

import pytest
from engine_support import Workload, policy, wait_events

from bpf.compile import Features, compile_policy
from bpf.engine import Engine
from bpf.events import RawEvent, render
from bpf.policy import parse
from bpf.tpformat import builtin_formats

CORPUS_KEYS = {"process_tracepoint", "process_kprobe", "node_name", "time"}


def _record(hook: int, action: int, mode: int, acted: int, ints: list[int], s0: bytes, binary: bytes) -> bytes:
    return struct.pack("<QQ10I8q256s256s256sii", 5_000_000_000, 77, 4242, 4243, 1000, hook, 0, action, mode, acted,
                       9, 0, *(ints + [0] * (8 - len(ints))), s0, b"", binary, 0, 0)


def test_a_record_renders_as_a_tetragon_process_tracepoint_event() -> None:
    plan = compile_policy(parse({
        "apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "tmp-exec"},
        "spec": {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_execve",
                                  "args": [{"index": 5, "type": "string", "label": "filename"}],
                                  "selectors": [{"matchActions": [{"action": "Sigkill"}]}]}]}}),
        Features(), builtin_formats)
    raw = RawEvent.unpack(_record(0, 1, 1, 0, [], b"/tmp/x\0", b"/bin/bash\0"))
    ev = render(raw, plan, "node-1", clock_offset_ns=1_700_000_000_000_000_000)
    assert set(ev) == {"process_tracepoint", "node_name", "time", "palisade"}
    tp = ev["process_tracepoint"]
    assert tp["process"]["binary"] == "/bin/bash" and tp["process"]["pid"] == 4242
    assert (tp["subsys"], tp["event"], tp["policy_name"]) == ("syscalls", "sys_enter_execve", "tmp-exec")
    assert tp["args"] == [{"string_arg": "/tmp/x", "label": "filename"}]
    assert tp["action"] == "KPROBE_ACTION_SIGKILL"
    assert ev["time"] == "2023-11-14T22:13:25.000000000Z"
    assert ev["palisade"] == {"mode": "enforce_ready", "acted": False, "would_have_acted": True, "selector": 0,
                              "cgroup_id": 77, "policy_key": "tmp-exec"}
    json.dumps(ev)  # one JSON object per line


def test_the_event_shape_matches_the_corpus(corpus: object) -> None:
    from pathlib import Path

    sample = json.loads((Path(str(corpus)) / "events" / "sample_process_kprobe.json").read_text())
    kp = sample["process_kprobe"]
    plan = compile_policy(parse({
        "apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "p"},
        "spec": {"kprobes": [{"call": "sys_openat", "syscall": True, "args": [{"index": 0, "type": "int"}]}]}}),
        Features(), builtin_formats)
    ev = render(RawEvent.unpack(_record(0, 0, 2, 0, [3], b"", b"/bin/vi\0")), plan, "n", 0)
    mine = ev["process_kprobe"]
    assert {"process", "function_name", "args", "action", "policy_name"} <= set(mine) & set(kp)
    assert {"pid", "binary", "arguments", "uid", "exec_id"} <= set(mine["process"]) & set(kp["process"])
    assert set(sample) - {"process_kprobe"} <= set(ev)  # node_name, time
    assert mine["args"] == [{"int_arg": 3}]


def test_message_and_tags_of_a_hook_are_in_its_events() -> None:
    plan = compile_policy(parse({
        "apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "tagged"},
        "spec": {"kprobes": [{"call": "sys_openat", "syscall": True, "message": "file opened",
                              "tags": ["observability.filesystem", "mitre.T1005"]}]}}),
        Features(), builtin_formats)
    kp = render(RawEvent.unpack(_record(0, 0, 2, 0, [], b"", b"/bin/vi\0")), plan, "n", 0)["process_kprobe"]
    assert kp["message"] == "file opened"
    assert kp["tags"] == ["observability.filesystem", "mitre.T1005"]
    untagged = compile_policy(parse({
        "apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "plain"},
        "spec": {"kprobes": [{"call": "sys_openat", "syscall": True}]}}), Features(), builtin_formats)
    plain = render(RawEvent.unpack(_record(0, 0, 2, 0, [], b"", b"/bin/vi\0")), untagged, "n", 0)["process_kprobe"]
    assert "message" not in plain and "tags" not in plain


@pytest.mark.kernel
def test_counters_count_posted_and_lost_events(engine: Engine, workload: Workload) -> None:
    """More events than the ring buffer holds, with nobody reading: the overflow is counted as lost."""
    p = policy("getpid-watch", {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_getppid"}]})
    assert engine.load(p, "observe", cgroups=[workload.path]).loaded
    n = 3000
    done = workload.run([sys.executable, "-c", f"import os\nfor _ in range({n}): os.getppid()"])
    assert done.returncode == 0
    c = engine.counters("getpid-watch")
    assert c.posted + c.lost == n
    assert c.lost > 0 and c.posted > 100
    events = wait_events(engine, lambda ev: False, timeout=1.0)
    assert len(events) == c.posted
    assert {e["process_tracepoint"]["event"] for e in events} == {"sys_enter_getppid"}
    assert all(e["palisade"]["cgroup_id"] == os.stat(workload.path).st_ino for e in events)


@pytest.mark.kernel
def test_the_base_sensor_emits_process_exec_and_exit(engine: Engine, workload: Workload) -> None:
    from bpf import process_events

    assert engine.load(process_events.policy(), "observe", cgroups=[workload.path]).loaded
    sleeper = workload.popen(["/usr/bin/sleep", "1.5"])
    # arguments come from /proc while the process lives (the kernel side records the binary only)
    events = wait_events(engine, lambda ev: "process_exec" in ev)
    assert sleeper.wait(10) == 0
    events += wait_events(engine, lambda ev: "process_exit" in ev)
    execs = [e["process_exec"]["process"] for e in events if "process_exec" in e]
    exits = [e["process_exit"]["process"] for e in events if "process_exit" in e]
    [ex] = [p for p in execs if p["binary"] == "/usr/bin/sleep"]
    assert ex["arguments"] == "1.5"
    [gone] = [p for p in exits if p["pid"] == ex["pid"]]
    assert gone["binary"] == "/usr/bin/sleep"  # known from the exec, /proc no longer answers at exit
    assert all(set(e) == {"process_exec", "node_name", "time"} or set(e) == {"process_exit", "node_name", "time"}
               for e in events)

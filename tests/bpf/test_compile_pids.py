"""matchPIDs in the compiler, without a kernel: what followForks adds to a plan, and Tetragon's limits kept."""
from __future__ import annotations

from typing import Any

from bpf.compile import Features, check, compile_policy
from bpf.policy import parse
from bpf.tpformat import builtin_formats


def _doc(pids: list[dict[str, Any]], hook: dict[str, Any] | None = None) -> dict[str, Any]:
    h = hook or {"subsystem": "syscalls", "event": "sys_enter_getppid"}
    key = "tracepoints" if "event" in h else "kprobes"
    return {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "p"},
            "spec": {key: [{**h, "selectors": [{"matchPIDs": pids}]}]}}


def test_follow_forks_adds_the_lineage_map_its_programs_and_the_walk() -> None:
    plan = compile_policy(parse(_doc([{"operator": "In", "followForks": True, "values": [42]}])),
                          Features(), builtin_formats)
    assert plan.lineage
    fns = {s.function for s in plan.sites}
    assert {"pl_track_lfork", "pl_track_lexit"} <= fns
    assert "pl_lineage SEC(\".maps\")" in plan.source
    assert "struct pl_anc *pl_anc = pl_lineage_walk(pl_t);" in plan.source
    assert "pl_anc_pid(pl_anc, 42)" in plan.source


def test_without_follow_forks_there_is_no_lineage() -> None:
    plan = compile_policy(parse(_doc([{"operator": "NotIn", "values": [42]}])), Features(), builtin_formats)
    assert not plan.lineage
    assert "pl_lineage" not in plan.source
    assert "!(tgid == 42)" in plan.source


def test_is_namespace_pid_with_follow_forks_rejects_the_initial_namespace_whatever_the_operator() -> None:
    plan = compile_policy(parse(_doc([{"operator": "NotIn", "followForks": True, "isNamespacePID": True,
                                       "values": [1]}])), Features(), builtin_formats)
    assert "(pl_anc && pl_anc->ns[0] && !(pl_anc_ns(pl_anc, 1)))" in plan.source


def test_only_the_first_entry_and_its_first_four_values_count_as_in_tetragon() -> None:
    plan = compile_policy(parse(_doc([{"operator": "In", "values": [1, 2, 3, 4, 5]},
                                      {"operator": "NotIn", "values": [7]}])), Features(), builtin_formats)
    assert "(tgid == 1 || tgid == 2 || tgid == 3 || tgid == 4)" in plan.source
    assert "tgid == 5" not in plan.source and "tgid == 7" not in plan.source
    assert any("matchPIDs[1]: ignored, as Tetragon does" in n for n in plan.notes), plan.notes
    assert any("matchPIDs[0]: only the first 4 values count" in n for n in plan.notes), plan.notes


def test_follow_forks_on_the_cgroup_hooks_is_refused() -> None:
    # connect without kprobes runs on cgroup hooks, which have no current task to walk from
    got = check(parse(_doc([{"operator": "In", "followForks": True, "values": [1]}],
                           {"call": "tcp_connect", "syscall": False, "args": [{"index": 0, "type": "sock"}]})),
                Features(), builtin_formats)
    assert any("read the current task" in r and "tcp_connect" in r for r in got), got


def test_values_are_32_bit_pids() -> None:
    got = check(parse(_doc([{"operator": "In", "followForks": True, "values": [1 << 32]}])), Features(),
                builtin_formats)
    assert any("matchPIDs values are 32-bit pids" in r for r in got), got

"""`generated_ftrace` lists: a kprobe on each kernel function of the ftrace list (available_filter_functions)
that the list's pattern matches, as Tetragon's list-generated-ftrace example writes it. Kprobes exist in the
kernel matrix's stock 6.1 guest (tests/vm), not here, where the policy is refused with the reason."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from engine_support import Workload, wait_events

from bpf.compile import Features, check
from bpf.engine import Engine, ftrace_functions
from bpf.errors import Unsupported
from bpf.policy import parse

CORPUS = Path("/work/shared/tetragon-corpus/examples/tracingpolicy/list-generated-ftrace.yaml")
KILL = os.path.realpath("/usr/bin/kill")


def _example() -> dict:
    if CORPUS.exists():
        return yaml.safe_load(CORPUS.read_text())
    return {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "all-ksys-for-kill"},
            "spec": {"lists": [{"name": "ksys", "type": "generated_ftrace", "pattern": "^ksys_*"}],
                     "kprobes": [{"call": "list:ksys", "selectors": [{"matchBinaries": [
                         {"operator": "In", "values": ["/usr/bin/kill"]}]}]}]}}


def test_the_pattern_is_matched_against_the_ftrace_list(tmp_path: Path) -> None:
    listing = tmp_path / "available_filter_functions"
    listing.write_text("ksys_read\nksys_write\nvfs_read\nksys_read\nksys_sync_helper [mymod]\n__x64_sys_ksys\n")
    # anywhere in the name (Go's regexp MatchString), each function once, a module's without its module
    assert ftrace_functions("^ksys_*", [tmp_path / "missing", listing]) == ["ksys_read", "ksys_write",
                                                                           "ksys_sync_helper"]
    assert ftrace_functions("ksys", [listing]) == ["ksys_read", "ksys_write", "ksys_sync_helper", "__x64_sys_ksys"]
    with pytest.raises(Unsupported, match="ftrace function list"):
        ftrace_functions("^ksys_", [tmp_path / "missing"])


def test_a_list_without_a_pattern_or_with_values_is_refused() -> None:
    doc = _example()
    doc["spec"]["lists"][0] = {"name": "ksys", "type": "generated_ftrace", "values": ["ksys_read"]}
    reasons = check(parse(doc), Features(kprobes=True))
    assert any("a generated_ftrace list needs a pattern and no values" in r for r in reasons), reasons
    doc["spec"]["lists"][0] = {"name": "ksys", "type": "generated_ftrace", "pattern": "ksys_("}
    assert any("is not a regular expression" in r for r in check(parse(doc), Features(kprobes=True)))


def test_without_kprobes_the_list_is_refused_with_the_reason() -> None:
    reasons = check(parse(_example()), Features(kprobes=False))
    assert any(r.startswith("unsupported: spec.lists[0]: lists of type generated_ftrace put a kprobe on each "
                            "kernel function matching '^ksys_*', and this kernel lacks kprobes") for r in reasons), \
        reasons


@pytest.mark.kernel
@pytest.mark.stock_kernel
def test_the_example_puts_a_kprobe_on_each_ksys_function_and_names_the_one_that_ran(
        engine: Engine, workload: Workload) -> None:
    doc = parse(_example())
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert res.loaded, res.reasons
    functions = ftrace_functions("^ksys_*")
    lp = engine.loaded()[doc.key]
    (site,) = [s for h in lp.plan.hooks for s in h.sites]
    links = [name for name, _ in lp.link_ids if name.startswith(f"{site.function}_")]
    assert 0 < len(links) <= len(functions)
    assert "ksys_read" in functions
    # kill(1) reads its libraries and /proc through read(2), which is ksys_read
    assert workload.run([KILL, "-0", str(os.getpid())]).returncode == 0
    events = wait_events(engine, lambda ev: ev.get("process_kprobe", {}).get("function_name") == "ksys_read")
    mine = [ev["process_kprobe"] for ev in events if "process_kprobe" in ev]
    assert any(ev["function_name"] == "ksys_read" for ev in mine), mine
    assert all(ev["function_name"] in functions and ev["process"]["binary"] == KILL for ev in mine), mine
    assert all(ev["policy_name"] == "all-ksys-for-kill" for ev in mine)

"""`relaxing.relaxes` and `classify` on the typed TracingPolicy: edits whose answer the typed comparison decides.

The example repository's revisions are in test_plan.py; these are the cases where reading the typed value
(its defaults, its values typed, its refusals) is what gives the answer.
"""
from __future__ import annotations

from reconciler.checks.relaxing import classify, relaxes
from wire.bundle import BundlePolicy, Origin
from wire.values import Scope, State

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: p}
spec:
  kprobes:
    - call: sys_setuid
      syscall: true
      args: [{index: 0, type: int}]
      selectors:
        - matchPIDs: [{operator: NotIn, values: [1]}]
          matchArgs: [{index: 0, operator: Equal, values: ["0"]}]
          matchActions: [{action: Sigkill}]
"""

EXCEPTION = """        - matchBinaries: [{operator: In, values: [/usr/bin/sudo]}]
          matchActions: [{action: NoPost}]
"""


def _classify(before: str, after: str) -> tuple[bool, list[str]]:
    origin = Origin("rule", "p")
    c = classify([BundlePolicy.of("p", origin, Scope(), State.ENFORCED, before)],
                 [BundlePolicy.of("p", origin, Scope(), State.ENFORCED, after)])
    return c.relaxing, c.reasons


def test_a_default_written_out_is_the_same_policy() -> None:
    # `syscall: true` is the kprobe default, a pid written in hex is the same pid, a value quoted or not the same
    # value: the typed policies are equal (the dicts were not, and the change counted as tightening)
    after = (POLICY.replace("      syscall: true\n", "")
             .replace("values: [1]", "values: [0x1]").replace('values: ["0"]', "values: [0]"))
    assert relaxes(POLICY, after) == "policy reformatted (same meaning)"
    assert _classify(POLICY, after) == (True, ["p @ fleet: policy reformatted (same meaning)"])


def test_an_exception_moved_within_its_hook_is_the_same_exception() -> None:
    # a selector is compared by what it says, not by where it is written
    first = POLICY.replace("      selectors:\n", "      selectors:\n" + EXCEPTION)
    last = POLICY + EXCEPTION
    assert relaxes(POLICY, first) == "exception added"
    assert relaxes(first, last) == "policy reformatted (same meaning)"
    assert relaxes(first, POLICY) is None  # the exception went away


def test_a_policy_the_typed_parser_refuses_is_tightening() -> None:
    # a pid that is not a number: the engine would refuse the policy, so nothing can be said of what it matches
    refused = POLICY.replace("values: [1]", "values: [1, init]")
    assert relaxes(POLICY, refused) is None
    assert relaxes(refused, POLICY) is None
    assert _classify(POLICY, refused) == (False, ["p @ fleet: policy definition changed"])
    assert _classify(POLICY, "spec: [") == (False, ["p @ fleet: policy definition changed"])


def test_a_part_the_typed_policy_holds_by_name_only_makes_any_change_tightening() -> None:
    # `enforcers` (spec) and an unknown selector key are kept by name: a change to their values would go unseen
    enforcers = POLICY + "  enforcers: [{calls: [sys_setuid]}]\n"
    assert relaxes(enforcers, enforcers.replace("      selectors:\n", "      selectors:\n" + EXCEPTION)) is None
    unknown = POLICY.replace("          matchActions: [{action: Sigkill}]\n",
                             "          matchActions: [{action: Sigkill}]\n          matchSomething: [{a: 1}]\n")
    assert relaxes(unknown, unknown.replace("[{a: 1}]", "[{a: 2}]")) is None


def test_metadata_and_options_still_count() -> None:
    # labels, annotations and Tetragon options are carried by the typed policy: changing them is not "the same"
    labelled = POLICY.replace("metadata: {name: p}", "metadata: {name: p, labels: {team: a}}")
    assert relaxes(labelled, labelled.replace("team: a", "team: b")) is None
    annotated = POLICY.replace("metadata: {name: p}", "metadata: {name: p, annotations: {x: a}}")
    assert relaxes(POLICY, annotated) is None
    optioned = POLICY + "  options: [{name: disable-kprobe-multi, value: \"1\"}]\n"
    assert relaxes(POLICY, optioned) is None
    assert relaxes(optioned, optioned.replace('"1"', '"0"')) is None


def test_the_last_selector_narrowed_by_its_typed_filters() -> None:
    # NotIn gains a value (fewer matches), an extra matchArgs condition (ANDed); an operator changed is not narrower
    more_pids = POLICY.replace("values: [1]", "values: [1, 2]")
    assert relaxes(POLICY, more_pids) == "enforcing selector narrowed (e.g. allowlist widened)"
    assert relaxes(more_pids, POLICY) is None
    extra = POLICY.replace('values: ["0"]}]', 'values: ["0"]}, {index: 0, operator: NotEqual, values: ["5"]}]')
    assert relaxes(POLICY, extra) == "enforcing selector narrowed (e.g. allowlist widened)"
    assert relaxes(POLICY, POLICY.replace("operator: Equal", "operator: NotEqual")) is None
    assert relaxes(POLICY, POLICY.replace("action: Sigkill", "action: Post")) is None

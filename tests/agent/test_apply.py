"""Per-policy transactions against the NullEnforcer, and the pure plan."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from agent.apply import Loaded, NullEnforcer, Refused, StepKind, apply, plan, read_policy
from agent.select import Desired
from bpf.errors import PolicyError
from bpf.policy import parse
from wire.bundle import Origin, sha256_hex
from wire.values import Scope, State

GOOD = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {n}\nspec: {{}}\n# {rev}\n"


def _d(name: str, state: State = State.OBSERVE, rev: int = 1, text: str | None = None) -> Desired:
    y = text if text is not None else GOOD.format(n=name, rev=rev)
    return Desired(name, Origin("pack", "x"), Scope(), state, y, sha256_hex(y.encode()), rev, "c" * 40)


class Journal(NullEnforcer):
    """The NullEnforcer, recording the order of calls (to check load-before-unload)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def load(self, policy: Desired) -> Loaded:
        self.calls.append(f"load {policy.name}")
        return super().load(policy)

    def unload(self, handle: str) -> None:
        self.calls.append(f"unload {handle.split('#')[0]}")
        super().unload(handle)


def _state(e: NullEnforcer) -> Sequence[tuple[str, str, State]]:
    return sorted((x.name, x.digest[:8], x.state) for x in e.loaded())


def test_load_replace_switch_unload() -> None:
    e = Journal()
    apply(e, plan(e.loaded(), [_d("a"), _d("b"), _d("c")]))
    e.calls.clear()
    steps = plan(e.loaded(), [_d("a", rev=2), _d("b", State.ENFORCED)])
    assert [(s.kind, s.name) for s in steps] == [(StepKind.REPLACE, "a"), (StepKind.MODE, "b"), (StepKind.UNLOAD, "c")]
    report = apply(e, steps)
    assert e.calls == ["load a", "unload a", "unload c"]  # the new a is in before the old one goes
    assert [(p.name, p.status, p.state) for p in report.policies] == [("a", "loaded", State.OBSERVE),
                                                                      ("b", "loaded", State.ENFORCED)]
    assert _state(e) == [("a", _d("a", rev=2).sha256[:8], State.OBSERVE), ("b", _d("b").sha256[:8], State.ENFORCED)]
    assert plan(e.loaded(), [_d("a", rev=2), _d("b", State.ENFORCED)])[0].kind is StepKind.KEEP


def test_a_policy_that_fails_is_reported_and_the_others_apply() -> None:
    e = NullEnforcer()
    apply(e, plan(e.loaded(), [_d("a"), _d("b")]))
    broken = _d("a", rev=2, text="kind: [unclosed")
    report = apply(e, plan(e.loaded(), [broken, _d("b", State.ENFORCED), _d("new")]))
    by = {p.name: p for p in report.policies}
    assert by["a"].status == "refused" and "not valid YAML" in (by["a"].reason or "")
    assert by["a"].digest == _d("a").sha256  # the previous a still enforces: no gap
    assert (by["b"].status, by["new"].status) == ("loaded", "loaded")
    assert {x.name for x in e.loaded()} == {"a", "b", "new"}


def test_duplicates_left_by_a_crash_are_reduced_to_the_wanted_one() -> None:
    e = NullEnforcer()
    old, new = e.load(_d("a")), e.load(_d("a", rev=2))  # a replacement killed before its unload
    steps = plan(e.loaded(), [_d("a", rev=2)])
    assert [(s.kind, s.handle, s.remove) for s in steps] == [(StepKind.KEEP, new.handle, (old.handle,))]
    apply(e, steps)
    assert [x.handle for x in e.loaded()] == [new.handle]


def test_refused_is_an_exception_with_the_reason() -> None:
    with pytest.raises(Refused, match="apiVersion"):
        NullEnforcer().load(_d("x", text="apiVersion: v1\nkind: Pod\n"))


PLACEHELD = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: p}\nspec:\n  kprobes:\n"
             "  - call: tcp_connect\n    syscall: false\n    args: [{index: 0, type: sock}]\n    selectors:\n"
             "    - matchArgs: [{index: 0, operator: DAddr, values: ['${PODCIDR}', 10.1.0.0/16]}]\n")


def test_read_policy_is_the_typed_policy_with_the_nodes_placeholders_filled_when_given() -> None:
    d = _d("p", text=PLACEHELD)
    values = read_policy(d, {"PODCIDR": ["10.0.0.0/8", "fd00::/8"]}).hooks[0].selectors[0].match_args[0].values
    assert values == ("10.0.0.0/8", "fd00::/8", "10.1.0.0/16")
    # the NullEnforcer gives none: the values stay as written, as before
    assert read_policy(d).hooks[0].selectors[0].match_args[0].values == ("${PODCIDR}", "10.1.0.0/16")
    with pytest.raises(Refused, match=r"policy p: .*placeholder \$\{PODCIDR\} has no value on this node"):
        read_policy(d, {})
    with pytest.raises(Refused, match="policy p is not valid YAML"):
        read_policy(_d("p", text="spec: [unclosed\n"))


def test_a_renamed_policy_is_the_policy_a_parse_of_its_renamed_document_gives() -> None:
    tp = read_policy(_d("p", text=PLACEHELD))
    new = tp.renamed("p--0123456789ab-1")
    assert (new.name, new.key, new.document["metadata"]) == ("p--0123456789ab-1",) * 2 + ({"name": new.name},)
    assert new == parse(new.document)
    assert replace(new, name=tp.name, document=tp.document) == tp
    assert tp.document["metadata"] == {"name": "p"}  # the original is left as it was
    with pytest.raises(PolicyError, match="invalid policy name"):
        tp.renamed("x" * 201)

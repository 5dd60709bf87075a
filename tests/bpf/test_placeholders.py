"""bpf.policy.fill_placeholders: Tetragon's `${PODCIDR}`-style matchArgs values, filled from the node."""
from __future__ import annotations

import pytest

from bpf.compile import Features, check
from bpf.errors import PolicyError
from bpf.policy import fill_placeholders, parse


def _doc(values: list[str]) -> dict[str, object]:
    return {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "egress"},
            "spec": {"kprobes": [{"call": "tcp_connect", "syscall": False, "args": [{"index": 0, "type": "sock"}],
                                  "selectors": [{"matchArgs": [{"index": 0, "operator": "NotDAddr",
                                                                "values": values}]}]}]}}


def test_a_placeholder_becomes_every_value_of_the_node() -> None:
    filled = fill_placeholders(_doc(["${PODCIDR}", "127.0.0.1"]), {"PODCIDR": ["10.0.0.0/8", "fd00::/8"]})
    args = filled["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]
    assert args["values"] == ["10.0.0.0/8", "fd00::/8", "127.0.0.1"]
    assert check(parse(filled)) == []


def test_an_unset_placeholder_names_its_path() -> None:
    with pytest.raises(PolicyError) as e:
        fill_placeholders(_doc(["${SERVICECIDR}"]), {"PODCIDR": ["10.0.0.0/8"]})
    assert str(e.value).startswith("spec.kprobes[0].selectors[0].matchArgs[0].values[0]: placeholder ${SERVICECIDR}")


def test_unfilled_the_policy_is_refused_saying_the_node_fills_it() -> None:
    [why] = check(parse(_doc(["${PODCIDR}"])), Features())
    assert "placeholder ${PODCIDR} is filled on each node" in why

"""GetUrl and DnsLookup in the compiler: accepted with their argument, named per selector in the plan for the
agent (agent/callouts.py sends them), refused without a usable argument or on a uprobe, as in Tetragon."""
from __future__ import annotations

from typing import Any

from bpf.compile import Callout, Features, check, compile_policy
from bpf.policy import parse
from bpf.tpformat import builtin_formats


def _doc(actions: list[dict[str, Any]], section: str = "tracepoints") -> dict[str, Any]:
    hook: dict[str, Any] = {"subsystem": "syscalls", "event": "sys_enter_getppid"}
    if section == "uprobes":
        hook = {"path": "/bin/sh", "symbols": ["main"]}
    hook["selectors"] = [{"matchArgs": []}, {"matchActions": actions}]
    return {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "c"},
            "spec": {section: [hook]}}


def test_each_selectors_callouts_are_in_the_plan() -> None:
    plan = compile_policy(parse(_doc([{"action": "Sigkill"}, {"action": "GetUrl", "argUrl": "https://x.example/t"},
                                      {"action": "DnsLookup", "argFqdn": "t.canary.example"}])),
                          Features(), builtin_formats)
    assert plan.callouts_of(0, 0) == ()
    assert plan.callouts_of(0, 1) == (Callout("GetUrl", "https://x.example/t"),
                                      Callout("DnsLookup", "t.canary.example"))
    assert Callout("DnsLookup", "t.example").to_json() == {"action": "DnsLookup", "argFqdn": "t.example"}


def test_a_callout_without_a_usable_argument_is_refused() -> None:
    def reasons(action: dict[str, Any]) -> str:
        return " ".join(check(parse(_doc([action])), Features(), builtin_formats))

    assert "GetUrl needs argUrl, an http:// or https:// URL" in reasons({"action": "GetUrl"})
    assert "GetUrl needs argUrl" in reasons({"action": "GetUrl", "argUrl": "file:///etc/passwd"})
    assert "DnsLookup needs argFqdn, a DNS name" in reasons({"action": "DnsLookup", "argFqdn": "bad..name"})
    assert "DnsLookup needs argFqdn" in reasons({"action": "DnsLookup", "argFqdn": "a" * 64 + ".example"})
    assert reasons({"action": "GetUrl", "argUrl": "http://127.0.0.1:8080/x?y=1"}) == ""


def test_callouts_on_a_uprobe_are_refused_as_tetragon_does() -> None:
    got = " ".join(check(parse(_doc([{"action": "GetUrl", "argUrl": "http://x.example"}], "uprobes")), Features(),
                         builtin_formats))
    assert "GetUrl on a uprobe" in got

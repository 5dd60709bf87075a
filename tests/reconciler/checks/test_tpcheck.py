"""Tetragon's load-time rules, checked before a policy ships: each mistake gets its code at its line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.checks import tpcheck
from reconciler.findings import Finding, Severity
from reconciler.repository import schema, source
from support import mutate

EXAMPLE = Path(__file__).resolve().parents[3] / "example-repo"

HEADER = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: t\nspec:\n"


def _findings(spec: str) -> tuple[str, list[Finding]]:
    text = HEADER + spec
    docs, parse = source.parse_file(source.SourceFile("p.yaml", text.encode()))
    assert parse == [] and len(docs) == 1
    assert schema.check_document(docs[0]) == [], [f.text() for f in schema.check_document(docs[0])]
    return text, tpcheck.check_policy(docs[0])


def _line(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


KPROBE = """  kprobes:
  - call: {call}
    syscall: {syscall}
    args:
    - index: 0
      type: {type}
    selectors:
    - matchArgs:
      - index: {index}
        operator: {op}
        values: {values}
      matchActions:
      - action: {action}
"""


def kprobe(call: str = "sys_openat", syscall: str = "true", type: str = "int", index: int = 0,
           op: str = "Equal", values: str = '["1"]', action: str = "Post") -> str:
    return KPROBE.format(call=call, syscall=syscall, type=type, index=index, op=op, values=values, action=action)


CASES = [
    # (id, spec, code, line needle, message part)
    ("undeclared-index", kprobe(index=2), "tp-arg-index", "index: 2", "index 2 is not declared"),
    ("daddr-on-int", kprobe(op="DAddr", values="[10.0.0.1]"), "tp-operator-type", "operator: DAddr",
     "needs a sock, skb, sockaddr or socket argument; this one is int"),
    ("prefix-on-int", kprobe(op="Prefix", values="[/etc]"), "tp-operator-type", "operator: Prefix",
     "compares text"),
    ("mask-on-string", kprobe(type="string", op="Mask", values='["1"]'), "tp-operator-type", "operator: Mask",
     "compares numbers"),
    ("equal-on-sock", kprobe(type="sock", op="Equal"), "tp-operator-type", "operator: Equal",
     "does not apply to a sock"),
    ("daddr-on-sockaddr", kprobe(call="security_socket_connect", syscall="false", type="sockaddr",
                                 op="NotDAddr", values="[10.0.0.0/8]"), "tp-operator-type", "operator: NotDAddr",
     "sockaddr holds one address"),
    ("inmap-on-string", kprobe(type="string", op="InMap", values="[a]"), "tp-operator-type", "operator: InMap",
     "needs an integer"),
    ("inrange-on-path", kprobe(type="path", op="InRange", values='["1:2"]'), "tp-operator-type",
     "operator: InRange", "32- or 64-bit integer"),
    ("bad-address", kprobe(type="sock", op="DAddr", values='["10.0.0.300"]'), "tp-value", "10.0.0.300",
     "not an IP address"),
    ("bad-port", kprobe(type="sock", op="DPort", values='["70000"]'), "tp-value", "70000", "not a port"),
    ("non-integer", kprobe(values='["one"]'), "tp-value", "values:", "is not an integer"),
    ("bad-range", kprobe(op="InRange", values='["5"]'), "tp-value", "values:", "must be a range MIN:MAX"),
    ("five-int-values", kprobe(values='["1", "2", "3", "4", "5"]'), "tp-too-many-values", "values:",
     "use InMap"),
    ("signal-without-sig", kprobe(action="Signal"), "tp-action-arg", "action: Signal", "Signal needs argSig"),
    ("override-without-error", kprobe(action="Override"), "tp-action-arg", "action: Override",
     "Override needs argError"),
    ("override-off-error-injection", kprobe(call="fd_install", syscall="false",
                                            action="Override\n        argError: -1"),
     "tp-override", "action: Override", "fd_install is none of these"),
    ("set-on-kprobe", kprobe(action="Set\n        argIndex: 0\n        argValue: 1"), "tp-action", "action: Set",
     "usdts"),
    ("notify-without-enforcers", kprobe(action="NotifyEnforcer\n        argSig: 9"), "tp-enforcer",
     "NotifyEnforcer", "spec.enforcers"),
    ("ratelimit-on-sigkill", kprobe(action="Sigkill\n        rateLimit: 1m"), "tp-action", "rateLimit",
     "Post only"),
    ("unknown-list", kprobe(call='"list:nope"'), "tp-list", "list:nope", "names no list"),
    ("inmap-unknown-list", kprobe(op="InMap", values='["list:nope"]'), "tp-list", "list:nope", "names no list"),
    ("tracepoint-override", """  tracepoints:
  - subsystem: syscalls
    event: sys_enter_mount
    selectors:
    - matchActions:
      - action: Override
        argError: -1
""", "tp-override", "action: Override", "tracepoint"),
    ("tracepoint-index", """  tracepoints:
  - subsystem: syscalls
    event: sys_enter_setuid
    args:
    - index: 5
      type: int
    selectors:
    - matchArgs:
      - index: 3
        operator: Equal
        values: ["0"]
""", "tp-arg-index", "index: 3", "declared: 5"),
    ("six-selectors", "  kprobes:\n  - call: sys_openat\n    selectors:\n"
     + "    - matchActions: [{action: Post}]\n" * 5 + "    - matchPIDs: [{operator: In, values: [1]}]\n",
     "tp-too-many-selectors", "matchPIDs", "6 selectors on one hook; Tetragon takes at most 5"),
    ("four-actions", """  kprobes:
  - call: sys_openat
    selectors:
    - matchActions:
      - action: Post
      - action: Sigkill
      - action: NoPost
      - action: GetUrl
        argUrl: http://canary.example
""", "tp-too-many-actions", "action: GetUrl", "4 actions in matchActions"),
    ("six-arg-filters", "  kprobes:\n  - call: sys_openat\n    args:\n    - index: 0\n      type: int\n"
     "    selectors:\n    - matchArgs:\n"
     + "      - {index: 0, operator: NotEqual, values: ['1']}\n" * 6,
     "tp-too-many-filters", "matchArgs:", "6 matchArgs/matchData filters"),
    ("two-match-binaries", """  kprobes:
  - call: sys_openat
    selectors:
    - matchBinaries:
      - operator: In
        values: [/bin/sh]
      - operator: NotIn
        values: [/bin/bash]
""", "tp-match-binaries", "operator: NotIn", "one per selector"),
    ("follow-children-prefix", """  kprobes:
  - call: sys_openat
    selectors:
    - matchBinaries:
      - operator: Prefix
        values: [/usr/]
        followChildren: true
""", "tp-match-binaries", "followChildren", "In or NotIn"),
    ("namespace-values", """  kprobes:
  - call: sys_openat
    selectors:
    - matchNamespaces:
      - namespace: Pid
        operator: In
        values: ["1", "2", "3", "4", "host_ns"]
""", "tp-namespaces", "values:", "at most 4"),
    ("namespace-value", """  kprobes:
  - call: sys_openat
    selectors:
    - matchNamespaces:
      - namespace: Mnt
        operator: In
        values: [hostns]
""", "tp-value", "values:", "inode number or host_ns"),
    ("two-namespace-changes", """  kprobes:
  - call: sys_openat
    selectors:
    - matchNamespaceChanges:
      - operator: In
        values: [Mnt]
      - operator: NotIn
        values: [Pid]
""", "tp-namespaces", "operator: NotIn", "single filter"),
    ("capability", """  kprobes:
  - call: sys_openat
    selectors:
    - matchCapabilities:
      - type: Effective
        operator: In
        values: [CAP_SYS_ADMN]
""", "tp-capability", "values:", "unknown capability 'CAP_SYS_ADMN'"),
    ("macro", """  kprobes:
  - call: sys_openat
    selectors:
    - macros: [nope]
""", "tp-macro", "macros:", "macro 'nope'"),
    ("return-args-without-returnarg", """  kprobes:
  - call: sys_openat
    return: true
    selectors:
    - matchReturnArgs:
      - index: 0
        operator: Equal
        values: ["0"]
""", "tp-arg-index", "index: 0", "needs the hook's returnArg"),
    ("override-on-return", """  kprobes:
  - call: sys_openat
    return: true
    returnArg: {index: 0, type: int}
    selectors:
    - matchReturnActions:
      - action: Override
        argError: -1
""", "tp-override", "action: Override", "too late"),
    ("size-arg-index", """  kprobes:
  - call: sys_write
    args:
    - index: 1
      type: char_buf
      sizeArgIndex: 4
""", "tp-arg-index", "sizeArgIndex", "sizeArgIndex 4"),
    ("raw-tracepoint-index", """  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    raw: true
    args:
    - index: 6
      type: uint64
""", "tp-arg-index", "index: 6", "at most 6 arguments"),
    ("capabilities-gained", """  kprobes:
  - call: commit_creds
    syscall: false
    args:
    - index: 0
      type: int
    selectors:
    - matchArgs:
      - args: [0]
        operator: CapabilitiesGained
""", "tp-operator-type", "CapabilitiesGained", "needs args: [NEW, OLD]"),
]


@pytest.mark.parametrize(("spec", "code", "needle", "part"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_is_found_at_its_line(spec: str, code: str, needle: str, part: str) -> None:
    text, findings = _findings(spec)
    hits = [f for f in findings if f.code == code]
    assert hits, [f.text() for f in findings]
    assert part in hits[0].message, hits[0].text()
    assert hits[0].line == _line(text, needle), hits[0].text()
    assert hits[0].severity is Severity.ERROR


WARNINGS = [
    ("return-selector-ignored", """  kprobes:
  - call: sys_openat
    selectors:
    - matchReturnArgs:
      - index: 0
        operator: Equal
        values: ["0"]
""", "tp-return", "matchReturnArgs:"),
    ("duplicate-hook", """  kprobes:
  - call: sys_openat
  - call: sys_openat
""", "tp-duplicate-hook", "- call: sys_openat"),
]


@pytest.mark.parametrize(("spec", "code", "needle"), [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_advice_is_a_warning(spec: str, code: str, needle: str) -> None:
    text, findings = _findings(spec)
    [hit] = [f for f in findings if f.code == code]
    assert hit.severity is Severity.WARNING
    if code == "tp-duplicate-hook":
        assert hit.line == text.splitlines().index("  - call: sys_openat", _line(text, needle)) + 1
    else:
        assert hit.line == _line(text, needle)


@pytest.mark.parametrize("spec", [
    kprobe(),                                                          # Equal on an int
    kprobe(type="string", op="Prefix", values="[/etc/]"),
    kprobe(type="file", op="Postfix", values="[.conf]"),
    kprobe(type="sock", op="DAddr", values='["10.0.0.0/8", "fd00::/8"]'),
    kprobe(type="sock", op="DPort", values='["80", "8000:8080"]'),
    kprobe(type="sockaddr", op="SAddr", values='["127.0.0.1"]', call="security_socket_connect", syscall="false"),
    kprobe(op="Mask", values='["0x200", "017"]'),
    kprobe(op="InRange", values='["0:1023"]'),
    kprobe(op="InMap", values='["1", "2", "3", "4", "5", "6"]'),
    kprobe(call="security_file_open", syscall="false", type="file", op="Prefix", values="[/etc]",
           action="Override\n        argError: -1"),
    kprobe(action="Override\n        argError: -1"),                   # a syscall
    kprobe(type="sock", op="DAddr", values='["${PODCIDR}"]'),          # a template placeholder
    """  lists:
  - name: dups
    type: syscalls
    values: [sys_dup, sys_dup2]
  enforcers:
  - calls: ["list:dups"]
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args:
    - index: 4
      type: syscall64
    selectors:
    - matchArgs:
      - index: 0
        operator: InMap
        values: ["list:dups"]
      matchActions:
      - action: NotifyEnforcer
        argSig: 9
""",
    """  lsmhooks:
  - hook: file_open
    args:
    - index: 0
      type: file
    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values: [/etc/shadow]
      matchActions:
      - action: Override
        argError: -1
""",
])
def test_policies_tetragon_accepts_pass(spec: str) -> None:
    _, findings = _findings(spec)
    assert findings == [], [f.text() for f in findings]


def test_example_repository_policies_pass() -> None:
    docs, _ = source.parse(source.from_worktree(EXAMPLE))
    policies = [d for d in docs if d.kind in ("TracingPolicy", "TracingPolicyNamespaced")]
    assert policies
    findings = [f.text() for d in policies for f in tpcheck.check_policy(d)]
    assert findings == [], findings


def test_non_mapping_spec_is_left_to_the_schema() -> None:
    docs, _ = source.parse_file(source.SourceFile("p.yaml", (HEADER + "  - a\n").encode()))
    assert tpcheck.check_policy(docs[0]) == []


# --- robustness: the checks never raise, even on documents the schema would reject ------------

def _samples() -> list[object]:
    docs, _ = source.parse(source.from_worktree(EXAMPLE))
    plains = [d.plain for d in docs if d.kind == "TracingPolicy"]
    for _, spec, *_ in CASES:
        parsed, _ = source.parse_file(source.SourceFile("p.yaml", (HEADER + spec).encode()))
        plains += [d.plain for d in parsed]
    return plains


_SAMPLES = _samples()
_junk = st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.text(max_size=12),
                  st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
                  st.dictionaries(st.sampled_from(["index", "operator", "values", "type", "action", "args"]),
                                  st.one_of(st.integers(-3, 9), st.text(max_size=6)), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_checks_never_raise_on_mutated_policies(data: st.DataObject) -> None:
    plain = data.draw(st.sampled_from(_SAMPLES))
    where = data.draw(st.sampled_from(mutate.paths(plain)))
    mutated = mutate.replace(plain, where, data.draw(_junk))
    docs, _ = source.parse_file(source.SourceFile("p.yaml", json.dumps(mutated).encode()))
    for doc in docs:
        for f in tpcheck.check_policy(doc):
            assert f.code.startswith("tp-") and f.line >= 1


MONITOR = "  options:\n  - name: policy-mode\n    value: {mode}\n"


def test_an_invalid_policy_mode_is_refused_as_tetragon_refuses_it() -> None:
    text, found = _findings(MONITOR.format(mode="monitoring") + kprobe())
    (f,) = [f for f in found if f.code == "tp-policy-mode"]
    assert f.severity is Severity.ERROR and f.line == _line(text, "value: monitoring")
    assert "enforce, monitor" in f.message


def test_monitor_mode_on_a_killing_policy_warns_that_it_never_acts() -> None:
    _, found = _findings(MONITOR.format(mode="monitor") + kprobe(action="Sigkill"))
    (f,) = [f for f in found if f.code == "tp-policy-mode"]
    assert f.severity is Severity.WARNING and "Sigkill never acts" in f.message
    _, quiet = _findings(MONITOR.format(mode="monitor") + kprobe(action="Post"))
    assert not [f for f in quiet if f.code == "tp-policy-mode"]


def test_return_without_a_return_arg_is_refused_as_the_crd_refuses_it() -> None:
    spec = "  kprobes:\n  - call: fd_install\n    syscall: false\n    return: true\n"
    text, found = _findings(spec)
    (f,) = [f for f in found if f.code == "tp-return" and f.severity is Severity.ERROR]
    assert f.severity is Severity.ERROR and f.line == _line(text, "return: true")

"""Schema checks: the example repository passes, and mistakes are reported at their line, in words."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler.findings import Finding
from reconciler.repository import schema, source

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "example-repo"
SCHEMAS = ROOT / "schemas"


def _check(text: str, path: str = "x.yaml") -> list[Finding]:
    docs, findings = source.parse_file(source.SourceFile(path, text.encode()))
    assert findings == [], [f.text() for f in findings]
    return [f for d in docs for f in schema.check_document(d)]


def _line(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    for n, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in text")


# --- the schema files ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["repository", "group", "pack", "rule", "enforcement", "rollout", "tracingpolicy"])
def test_schema_files_are_draft_2020_12_with_ids(name: str) -> None:
    doc = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == f"https://palisade.dev/schemas/{name}.schema.json"
    assert len(doc["description"]) > 40
    assert doc["additionalProperties"] is False


def test_every_object_in_every_schema_is_closed() -> None:
    """additionalProperties false everywhere (maps of labels excepted) so that typos are caught."""
    def walk(node: object, where: str) -> list[str]:
        open_ = []
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                open_.append(where)
            for k, v in node.items():
                open_ += walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                open_ += walk(v, f"{where}/{i}")
        return open_
    for f in SCHEMAS.glob("*.schema.json"):
        assert walk(json.loads(f.read_text()), f.name) == []


def test_schema_for_returns_the_kind_schema() -> None:
    assert schema.schema_for("Rule")["$id"].endswith("/rule.schema.json")
    assert schema.schema_for("TracingPolicyNamespaced")["$id"].endswith("/tracingpolicy.schema.json")
    with pytest.raises(KeyError):
        schema.schema_for("Nope")


# --- the example repository ------------------------------------------------------------------

def test_every_example_document_passes() -> None:
    docs, findings = source.parse(source.from_worktree(EXAMPLE))
    assert findings == []
    kinds = {d.kind for d in docs}
    assert {"Repository", "Group", "Pack", "Rule", "Enforcement", "Rollout", "TracingPolicy"} <= kinds
    problems = [f.text() for d in docs for f in schema.check_document(d)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(("path", "old", "new", "needle", "expect"), [
    ("packs/web-lockdown/allowlist.yaml", "action: Sigkill", "action: SigKil", "SigKil",
     "spec.tracepoints[0].selectors[0].matchActions[0].action: 'SigKil' is not one of Post, Sigkill"),
    ("packs/web-lockdown/allowlist.yaml", "operator: NotIn", "operator: NotInn", "NotInn", "(did you mean NotIn?)"),
    ("packs/baseline-observe/privileges.yaml", "operator: Equal", "operator: Equals", "Equals",
     "'Equals' is not one of Equal, NotEqual"),
    ("packs/baseline-observe/privileges.yaml", "- matchArgs:", "- matchArg:", "matchArg:",
     "unknown field 'matchArg' in spec.tracepoints[0].selectors[0] (did you mean matchArgs?)"),
    ("packs/egress-guard/connect.yaml", "- call: tcp_connect", "- function: tcp_connect", "function:",
     "unknown field 'function'"),
    ("rules/kernel-hardening.yaml", "state: enforce_ready", "state: enforce-ready", "enforce-ready",
     "(did you mean enforce_ready?)"),
    ("rules/kernel-hardening.yaml", "scope: {group: db}", "scope: {grp: db}", "grp",
     "unknown field 'grp' in spec.scope (did you mean group?)"),
    ("staging/default.yaml", "bake: 2h", "bake: 2 hours", "2 hours", "spec.stages[1].bake: '2 hours' is not valid"),
    ("staging/default.yaml", "minReportingRatio: 0.9", "minReportingRatio: 90", "minReportingRatio: 90",
     "must be at most 1"),
    ("scopes/groups.yaml", "sensors: [db-legacy-7]", "sensors: db-legacy-7", "sensors: db-legacy-7",
     "spec.sensors: expected a list, got a string"),
    ("palisade.yaml", "minObservation: 72h", "minObservaton: 72h", "minObservaton",
     "(did you mean minObservation?)"),
    ("enforcement/egress-guard.yaml", "state: enforce_ready", "state: enforcing", "enforcing",
     "'enforcing' is not one of observe, enforce_ready, enforced"),
])
def test_mistake_in_an_example_file_is_reported_at_its_line(path: str, old: str, new: str, needle: str,
                                                             expect: str) -> None:
    original = (EXAMPLE / path).read_text()
    assert old in original, f"example-repo/{path} changed; update this case"
    text = original.replace(old, new, 1)
    findings = _check(text, path)
    assert findings, "no finding"
    hit = [f for f in findings if expect in f.message]
    assert hit, [f.text() for f in findings]
    assert hit[0].line == _line(text, needle), hit[0].text()
    assert hit[0].file == path and hit[0].code == "schema"


# --- TracingPolicy typos ---------------------------------------------------------------------

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: sample
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - index: 1
      type: string
    selectors:
    - matchArgs:
      - index: 1
        operator: Prefix
        values: [/etc/]
      matchActions:
      - action: Post
        rateLimit: 1m
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_execve
"""


def test_the_sample_policy_passes() -> None:
    assert _check(POLICY) == []


@pytest.mark.parametrize(("old", "new", "needle", "expect"), [
    ("- call: sys_openat", "- calll: sys_openat", "calll",
     "unknown field 'calll' in spec.kprobes[0] (did you mean call?)"),
    ("    syscall: true\n", "    syscall: true\n    retrun: true\n", "retrun", "(did you mean return?)"),
    ("- call: sys_openat\n    syscall: true", "- syscall: true", "syscall: true",
     "spec.kprobes[0]: missing required field 'call'"),
    ("    event: sys_enter_execve\n", "", "subsystem: syscalls", "spec.tracepoints[0]: missing required field 'event'"),
    ("  - subsystem: syscalls\n", "  - event2: x\n", "event2", "missing required field 'subsystem'"),
    ("type: string", "type: str", "type: str", "(did you mean string?)"),
    ("operator: Prefix", "operator: Equals", "Equals", "(did you mean Equal?)"),
    ("action: Post", "action: post", "action: post", "(did you mean Post?)"),
    ("rateLimit: 1m", "rateLimit: 1 minute", "rateLimit", "rateLimit: '1 minute' is not valid"),
    ("values: [/etc/]", "values: /etc/", "values: /etc/", "expected a list, got a string"),
    ("- index: 1\n        operator", "- index: -1\n        operator", "index: -1", "must be at least 0"),
    ("  name: sample", "  name: Sample_Policy", "Sample_Policy", "metadata.name: 'Sample_Policy' is not valid"),
    ("  kprobes:", "  kprobe:", "kprobe:", "unknown field 'kprobe' in spec (did you mean kprobes?)"),
    ("kind: TracingPolicy", "kind: TracingPolicies", "TracingPolicies", "(did you mean TracingPolicy?)"),
])
def test_tracingpolicy_typos_are_rejected_at_their_line(old: str, new: str, needle: str, expect: str) -> None:
    assert old in POLICY
    text = POLICY.replace(old, new, 1)
    findings = _check(text)
    hit = [f for f in findings if expect in f.message]
    assert hit, [f.text() for f in findings]
    assert hit[0].line == _line(text, needle), hit[0].text()


def test_a_misspelt_required_field_is_reported_once() -> None:
    findings = _check(POLICY.replace("- call: sys_openat", "- calll: sys_openat"))
    assert len(findings) == 1 and "did you mean call?" in findings[0].message


def test_unknown_kind_and_api_version() -> None:
    [f] = _check("apiVersion: palisade.dev/v1\nkind: Rules\nmetadata: {name: a}\nspec: {}\n")
    assert f.code == "unknown-kind" and f.line == 2 and "did you mean Rule?" in f.message
    [f] = _check("apiVersion: palisade.dev/v2\nkind: Rule\n")
    assert f.code == "unknown-kind" and f.line == 1 and "palisade.dev/v1" in f.message
    [f] = _check("apiVersion: palisade.dev/v1\nkind: TracingPolicy\n")
    assert f.code == "unknown-kind" and "cilium.io/v1alpha1" in f.message
    [f] = _check("kind: Rule\n")
    assert f.code == "unknown-kind" and "missing 'apiVersion'" in f.message
    [f] = _check("- a\n- b\n")
    assert f.code == "schema" and "got a list" in f.message


# --- palisade kinds: shapes the loader relies on ---------------------------------------------

RULE = """apiVersion: palisade.dev/v1
kind: Rule
metadata:
  name: custom-rule
spec:
  template: custom
  scope: {sensor: node-1}
  state: observe
  enabled: false
  exceptions:
    - parentBinary: /usr/bin/containerd-shim
      reason: the runtime sets up namespaces
      expires: 2027-01-31
  policy:
    spec:
      kprobes:
        - call: sys_unshare
          selectors:
            - matchActions:
                - action: Sigkill
"""


def test_custom_rule_with_inline_policy_passes() -> None:
    assert _check(RULE) == []


@pytest.mark.parametrize(("old", "new", "expect"), [
    ("template: custom", "template: block-unshare",
     "spec.policy: not allowed here ('policy' is only used with template: custom)"),
    ("  policy:\n    spec:\n      kprobes:\n        - call: sys_unshare\n          selectors:\n"
     "            - matchActions:\n                - action: Sigkill\n", "", "missing required field 'policy'"),
    ("action: Sigkill", "action: Sigkil", "spec.policy.spec.kprobes[0].selectors[0].matchActions[0].action"),
    ("scope: {sensor: node-1}", "scope: {sensor: node-1, group: web}", "needs at most 1 field(s)"),
    ("scope: {sensor: node-1}", "scope: fleet", "spec.scope: expected a mapping, got a string"),
    ("    - parentBinary: /usr/bin/containerd-shim\n", "    - user: root\n", "unknown field 'user'"),
    ("    - parentBinary: /usr/bin/containerd-shim\n      reason", "    - reason",
     "needs at least one of binary, parentBinary"),
    ("      reason: the runtime sets up namespaces\n", "", "missing required field 'reason'"),
    ("expires: 2027-01-31", "expires: soon", "'soon' is not valid"),
    ("expires: 2027-01-31", "expires: '2027-02-30'", "'2027-02-30' is not a valid date"),
    ("enabled: false", "enabled: 'no'", "spec.enabled: expected a boolean"),
])
def test_rule_mistakes(old: str, new: str, expect: str) -> None:
    assert old in RULE
    findings = _check(RULE.replace(old, new, 1))
    assert any(expect in f.message for f in findings), [f.text() for f in findings]


def test_durations_follow_the_model_parser() -> None:
    from reconciler.repository.model import parse_duration

    base = "apiVersion: palisade.dev/v1\nkind: Repository\nmetadata: {{name: r}}\nspec:\n  reviewers: " \
           "[{{name: a, email: a@x.org, key: ssh-ed25519 AAAA}}]\n  minObservation: {}\n"
    for good in ("30m", "72h", "7d", "1h30m", "90s", "2w", "1.5h"):
        assert _check(base.format(good)) == [], good
        parse_duration(good)
    for bad in ("72", "h", "3 days", "1h 30m", "-1h", "72H"):
        assert _check(base.format(repr(bad))), bad

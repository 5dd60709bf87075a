"""Bad input never crashes validation: every malformed file becomes at least one finding.

Each case is a real example-repo file with one mistake put in (or a raw byte
blob), run through the parsing edge (`source.parse_file`), the schema check,
the TracingPolicy checks and the whole-revision `validate.validate_snapshot`.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.checks import tpcheck, validate
from reconciler.findings import Finding, Severity
from reconciler.repository import schema, source
from support import mutate

EXAMPLE = Path(__file__).resolve().parents[3] / "example-repo"
TODAY = _dt.date(2026, 11, 21)


def _mut(path: str, old: str, new: str) -> tuple[str, bytes]:
    text = (EXAMPLE / path).read_text(encoding="utf-8")
    assert old in text, f"example-repo/{path} no longer contains {old!r}; update this test case"
    return path, text.replace(old, new, 1).encode("utf-8")


def _raw(path: str, data: bytes | str) -> tuple[str, bytes]:
    return path, data if isinstance(data, bytes) else data.encode("utf-8")


def _billion_laughs() -> bytes:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


_SELECTOR = """        - matchBinaries:
            - operator: NotIn"""

CASES: dict[str, tuple[str, bytes]] = {
    # palisade.yaml
    "repo-bad-duration": _mut("palisade.yaml", "minObservation: 72h", "minObservation: 3 days"),
    "repo-wrong-type": _mut("palisade.yaml", "required: 1 ", "required: one "),
    "repo-huge-int": _mut("palisade.yaml", "required: 1 ", "required: 99999999999999999999999999 "),
    "repo-bad-key": _mut("palisade.yaml", "key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDmf",
                         "key: ssh-dss AAAAC3NzaC1lZDI1NTE5AAAAIDmf"),
    "repo-typo-field": _mut("palisade.yaml", "email: alice@example.com", "emial: alice@example.com"),
    "repo-unknown-api": _mut("palisade.yaml", "apiVersion: palisade.dev/v1", "apiVersion: palisade.dev/v2"),
    "repo-unknown-kind": _mut("palisade.yaml", "kind: Repository", "kind: Repo"),
    "repo-reviewers-map": _mut("palisade.yaml", "  reviewers:\n    - name: Alice Reviewer",
                               "  reviewers:\n    alice:\n      name: Alice Reviewer"),
    # scopes/
    "group-string-not-list": _mut("scopes/groups.yaml", "sensors: [node-canary-1]", "sensors: node-canary-1"),
    "group-bad-name": _mut("scopes/groups.yaml", "name: canary", "name: Canary_Group"),
    "group-long-name": _mut("scopes/groups.yaml", "name: canary", "name: " + "c" * 64),
    "group-typo-selector": _mut("scopes/groups.yaml", "    matchLabels:\n      role: web",
                                "    matchLabel:\n      role: web"),
    "group-unicode-kind": _mut("scopes/groups.yaml", "kind: Group", "kind: Grоup"),  # Cyrillic o
    # packs/
    "pack-wrong-bool": _mut("packs/baseline-observe/pack.yaml", "enforcementCapable: false",
                            "enforcementCapable: nope"),
    "pack-missing-description": _mut("packs/egress-guard/pack.yaml",
                                     "  description: Outbound connections only to the internal networks "
                                     "and the ports services use.\n", ""),
    "tp-typo-event": _mut("packs/baseline-observe/exec.yaml", "event: sched_process_exec",
                          "evnt: sched_process_exec"),
    "tp-bad-operator": _mut("packs/baseline-observe/privileges.yaml", "operator: Equal", "operator: Equals"),
    "tp-bad-arg-type": _mut("packs/baseline-observe/privileges.yaml", "type: int", "type: integer"),
    "tp-undeclared-index": _mut("packs/baseline-observe/privileges.yaml", "- index: 0          # position",
                                "- index: 7          # position"),
    "tp-bad-action": _mut("packs/web-lockdown/allowlist.yaml", "action: Sigkill", "action: SigKil"),
    "tp-two-match-binaries": _mut("packs/web-lockdown/allowlist.yaml", "          matchActions:",
                                  "            - operator: In\n              values: [/bin/sh]\n"
                                  "          matchActions:"),
    "tp-bad-binary-operator": _mut("packs/web-lockdown/allowlist.yaml", "operator: NotIn", "operator: NotInn"),
    "tp-override-on-tracepoint": _mut("packs/web-lockdown/allowlist.yaml", "- action: Sigkill",
                                      "- action: Override\n              argError: -1"),
    "tp-missing-call": _mut("packs/egress-guard/connect.yaml", "- call: tcp_connect",
                            "- calls: tcp_connect"),
    "tp-operator-type": _mut("packs/egress-guard/connect.yaml", "type: sock", "type: string"),
    "tp-four-actions": _mut("packs/web-lockdown/allowlist.yaml", "            - action: Sigkill",
                            "            - action: Sigkill\n            - action: Post\n"
                            "            - action: NoPost\n            - action: Post"),
    "tp-six-selectors": _mut("packs/web-lockdown/allowlist.yaml", "      selectors:\n",
                             "      selectors:\n" + "        - matchActions: [{action: Post}]\n" * 5),
    "tp-float-index": _mut("packs/egress-guard/connect.yaml", "- index: 0\n          type", "- index: 0.5\n"
                           "          type"),
    "tp-bool-call": _mut("packs/egress-guard/connect.yaml", "call: tcp_connect", "call: true"),
    # rules/
    "rule-bad-state": _mut("rules/kernel-hardening.yaml", "state: enforced", "state: enforce"),
    "rule-scope-both": _mut("rules/kernel-hardening.yaml", "scope: {}", "scope: {group: web, sensor: x}"),
    "rule-scope-list": _mut("rules/kernel-hardening.yaml", "scope: {group: web}", "scope: [web]"),
    "rule-scope-typo": _mut("rules/kernel-hardening.yaml", "scope: {group: db}", "scope: {grop: db}"),
    "rule-bad-expiry": _mut("rules/kernel-hardening.yaml", 'expires: "2027-03-31"', 'expires: "31/03/2027"'),
    "rule-impossible-date": _mut("rules/kernel-hardening.yaml", 'expires: "2027-03-31"', "expires: 2027-02-30"),
    "rule-exception-no-binary": _mut("rules/kernel-hardening.yaml", "    - binary: /usr/bin/ping\n      reason",
                                     "    - reason"),
    "rule-exception-no-reason": _mut("rules/kernel-hardening.yaml",
                                     "\n      reason: operators ping from database hosts", ""),
    "rule-bad-template": _mut("rules/kernel-hardening.yaml", "template: block-raw-sockets",
                              "template: block-raw-socket"),
    "rule-custom-without-policy": _mut("rules/kernel-hardening.yaml", "template: block-execve-tmp",
                                       "template: custom"),
    "rule-enabled-string": _mut("rules/kernel-hardening.yaml", "  state: observe\n  params:",
                                "  state: observe\n  enabled: yes please\n  params:"),
    # enforcement/
    "enf-capital-state": _mut("enforcement/web-lockdown.yaml", "state: enforced", "state: Enforced"),
    "enf-assignments-map": _mut("enforcement/baseline-observe.yaml", "  assignments:\n    - scope: {}\n"
                                "      state: observe", "  assignments: {}"),
    "enf-pack-int": _mut("enforcement/web-lockdown.yaml", "pack: web-lockdown", "pack: 42"),
    # staging/
    "stage-bad-bake": _mut("staging/default.yaml", "bake: 30m", "bake: 30 minutes"),
    "stage-ratio": _mut("staging/default.yaml", "minReportingRatio: 1.0", "minReportingRatio: 1.5"),
    "stage-rest-string": _mut("staging/default.yaml", "rest: true", "rest: 'yes'"),
    "stage-gate-typo": _mut("staging/default.yaml", "maxAgentErrors: 0", "maxAgentErors: 0"),
    # raw input
    "empty-file": _raw("rules/empty.yaml", b""),
    "only-comments": _raw("rules/comments.yaml", "# nothing here\n# at all\n"),
    "empty-documents": _raw("rules/docs.yaml", "---\n---\n"),
    "top-level-list": _raw("rules/list.yaml", "- apiVersion: palisade.dev/v1\n- kind: Rule\n"),
    "top-level-scalar": _raw("scopes/scalar.yaml", "hello\n"),
    "binary": _raw("scopes/binary.yaml", bytes(range(256))),
    "latin-1": _raw("rules/latin1.yaml", "apiVersion: palisade.dev/v1\nkind: Rule\n# café\n".encode("latin-1")),
    "utf-16": _raw("rules/utf16.yaml", "apiVersion: palisade.dev/v1\n".encode("utf-16")),
    "tab-indent": _raw("scopes/tabs.yaml", "apiVersion: palisade.dev/v1\nkind: Group\nmetadata:\n\tname: a\n"),
    "duplicate-key": _raw("scopes/dup.yaml", "apiVersion: palisade.dev/v1\nkind: Group\nkind: Group\n"),
    "billion-laughs": _raw("rules/lol.yaml", _billion_laughs()),
    "deep-nesting": _raw("rules/deep.yaml", b"[" * 20000 + b"]" * 20000),
    "deep-mapping": _raw("rules/deepmap.yaml", "".join("  " * i + f"k{i}:\n" for i in range(2000)) + "  " * 2000
                         + "x\n"),
    "unclosed-quote": _raw("rules/quote.yaml", 'apiVersion: "palisade.dev/v1\nkind: Rule\n'),
    "python-tag": _raw("rules/tag.yaml", "!!python/object/apply:os.system ['true']\n"),
    "merge-keys": _raw("scopes/merge.yaml", "base: &b {apiVersion: palisade.dev/v1}\nx:\n  <<: *b\n"),
    "unicode-name": _raw("scopes/uni.yaml", "apiVersion: palisade.dev/v1\nkind: Group\nmetadata: {name: ünïcødé}\n"
                         "spec: {sensors: [a]}\n"),
    "nul-in-text": _raw("rules/nul.yaml", b"apiVersion: palisade.dev/v1\x00\n"),
    "tp-huge-int": _raw("packs/web-lockdown/huge.yaml",
                        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: huge}\nspec:\n"
                        "  kprobes:\n  - call: sys_write\n    args: [{index: " + "9" * 400 + ", type: int}]\n"),
    "tp-spec-list": _raw("packs/web-lockdown/speclist.yaml",
                         "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: s}\nspec: []\n"),
    "tp-null-spec": _raw("packs/web-lockdown/nullspec.yaml",
                         "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: s}\nspec:\n"),
}


def _example_snapshot() -> source.Snapshot:
    return source.from_worktree(EXAMPLE)


def _snapshot_with(path: str, data: bytes) -> source.Snapshot:
    base = _example_snapshot()
    files = [f for f in base.files if f.path != path] + [source.SourceFile(path, data)]
    return source.Snapshot(tuple(sorted(files, key=lambda f: f.path)))


def _check_file(path: str, data: bytes) -> list[Finding]:
    docs, findings = source.parse_file(source.SourceFile(path, data))
    for doc in docs:
        found = schema.check_document(doc)
        findings.extend(found)
        if doc.kind in ("TracingPolicy", "TracingPolicyNamespaced") and not found:
            findings.extend(tpcheck.check_policy(doc))
    return findings


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", sorted(CASES))
def test_file_checks_find_the_mistake(case: str) -> None:
    path, data = CASES[case]
    start = time.monotonic()
    findings = _check_file(path, data)
    assert findings, f"{case}: no finding"
    assert all(f.file == path for f in findings)
    assert all(f.message for f in findings)
    assert time.monotonic() - start < 10, f"{case}: checking took {time.monotonic() - start:.1f}s"


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_snapshot_reports_the_mistake(case: str) -> None:
    path, data = CASES[case]
    report = validate.validate_snapshot(_snapshot_with(path, data), TODAY)
    mine = [f for f in report.findings if f.file == path]
    assert mine, f"{case}: validate reported nothing for {path}: {[f.text() for f in report.findings]}"


def test_every_case_but_empty_ones_is_an_error() -> None:
    """Only files without any document are warnings; every real mistake blocks the commit."""
    for case, (path, data) in CASES.items():
        severities = {f.severity for f in _check_file(path, data)}
        if case in ("empty-file", "only-comments", "empty-documents"):
            continue
        assert Severity.ERROR in severities, case


def test_unmodified_files_are_clean() -> None:
    """The table is only meaningful if the files it mutates pass on their own."""
    for path in {p for p, _ in CASES.values() if (EXAMPLE / p).is_file()}:
        data = (EXAMPLE / path).read_bytes()
        errors = [f for f in _check_file(path, data) if f.severity is Severity.ERROR
                  and not f.code.startswith("tp-")]
        assert errors == [], [f.text() for f in errors]


# --- random mutations ------------------------------------------------------------------------

def _example_documents() -> list[tuple[str, object]]:
    out = []
    for f in _example_snapshot().files:
        docs, _ = source.parse_file(f)
        out += [(f.path, d.plain) for d in docs]
    return out


_DOCS = _example_documents()
_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_mutations_never_raise(data: st.DataObject) -> None:
    path, plain = data.draw(st.sampled_from(_DOCS))
    where = data.draw(st.sampled_from(mutate.paths(plain)))
    replacement = data.draw(st.one_of(_scalars, st.lists(_scalars, max_size=3),
                                      st.dictionaries(st.text(max_size=8), _scalars, max_size=3)))
    mutated = mutate.replace(plain, where, replacement)
    # JSON is YAML: the mutated document goes through the real parsing edge
    findings = _check_file(path, json.dumps(mutated).encode())
    for f in findings:
        assert f.file == path and f.line >= 0 and f.message


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(blob: bytes) -> None:
    _check_file("rules/random.yaml", blob)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab: -[]{}&*!|>'\"#\n\t?,%@`~0")), max_size=80))
def test_random_yaml_punctuation_never_raises(text: str) -> None:
    _check_file("scopes/random.yaml", text.encode())


# --- inputs that once crashed the interpreter ------------------------------------------------

_HOSTILE = {
    "flow-nesting-50k": "'[' * 50_000 + ']' * 50_000",
    "block-nesting-50k": "'- ' * 50_000 + 'x'",
    "mapping-nesting-200k": "'a: ' + '{a: ' * 200_000 + '}' * 200_000",
}


@pytest.mark.parametrize("name", sorted(_HOSTILE))
def test_deep_nesting_is_a_finding_not_a_segfault(name: str) -> None:
    """libyaml's C composer overflows the stack on deep nesting; run in a child so a crash fails one test."""
    import subprocess
    import sys

    program = (
        "from reconciler.repository import source\n"
        f"data = ({_HOSTILE[name]}).encode()\n"
        "docs, findings = source.parse_file(source.SourceFile('rules/deep.yaml', data))\n"
        "print(findings[0].code if findings else 'none')\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, f"the parser crashed (exit {proc.returncode}): {proc.stderr[-500:]}"
    assert proc.stdout.strip() == "yaml"

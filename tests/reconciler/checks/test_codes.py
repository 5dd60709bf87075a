"""The code catalogue (reconciler/checks/codes.py) names exactly the codes the checks emit.

The sources are scanned for the calls that make findings (`error(...)`, `doc.error(...)`,
`self.err(...)`, `Problem(...)`, ...), so a check that gains a code without a catalogue
entry (and so without SARIF help text) fails here.
"""
from __future__ import annotations

import ast
from pathlib import Path

from bpf import yamldocs
from reconciler.checks import ladder
from reconciler.checks.codes import CODES, describe
from reconciler.findings import Severity

ROOT = Path(__file__).resolve().parents[3]
# where validate's findings come from; publish/reconcile.py's "bundle" is the reconciler's, not validate's
SOURCES = [*sorted((ROOT / "reconciler" / "repository").glob("*.py")),
           *sorted((ROOT / "reconciler" / "checks").glob("*.py")),
           ROOT / "reconciler" / "publish" / "objects.py"]
# the position of the code among a call's arguments, by the called name (and its receiver)
_MODULE_FUNCS = {"error": 3, "warning": 3}
_METHODS = {"error": 1, "warning": 1, "err": 1, "warn": 1}
_SEMANTICS_DOCS = {"error": 3, "warning": 3}  # semantics' docs.error(kind, name, path, code, message)


def _code_position(call: ast.Call) -> int | None:
    f = call.func
    if isinstance(f, ast.Name):
        return 1 if f.id == "Problem" else _MODULE_FUNCS.get(f.id)
    if isinstance(f, ast.Attribute):
        receiver = f.value.id if isinstance(f.value, ast.Name) else None
        if receiver == "log":
            return None
        if receiver == "docs":
            return _SEMANTICS_DOCS.get(f.attr)
        return _METHODS.get(f.attr)
    return None


def emitted() -> set[str]:
    found: set[str] = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                at = _code_position(node)
                if at is not None and len(node.args) > at:
                    arg = node.args[at]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.add(arg.value)
    # codes held in constants or class attributes rather than written at the call
    found |= {ladder.UNSIGNED, ladder.BAD_SIGNATURE, ladder.NOT_REVIEWER, ladder.SELF_APPROVED,
              ladder.INSUFFICIENT, ladder.UNPROVEN_AUTHOR}
    found |= {yamldocs.YamlError.code} | {cls.code for cls in yamldocs.YamlError.__subclasses__()}
    return found


def test_the_scan_sees_the_checks() -> None:
    codes = emitted()
    assert {"schema", "tp-arg-index", "duplicate-name", "window", "duplicate-key", "yaml"} <= codes
    assert len(codes) >= 60


def test_every_emitted_code_is_catalogued_and_no_entry_is_stale() -> None:
    codes = emitted()
    assert sorted(codes - CODES.keys()) == [], "emitted but not in reconciler/checks/codes.py"
    assert sorted(CODES.keys() - codes) == [], "catalogued but emitted nowhere"


def test_entries_say_what_is_wrong_and_what_to_do() -> None:
    for code in CODES.values():
        assert code.summary.endswith(".") and code.detail and code.fix, code.id
        assert code.name[0].isupper() and "-" not in code.name
    assert CODES["approval-pending"].severity is Severity.WARNING
    assert CODES["tp-arg-index"].name == "TpArgIndex"
    assert describe("no-such-code").id == "no-such-code"

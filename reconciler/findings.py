"""Findings: what validation reports, pointing at a file, line and column."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Finding:
    """One problem, located at the YAML node that causes it (1-based line/column; 0 = whole file)."""

    file: str
    line: int
    column: int
    severity: Severity
    code: str
    message: str

    def text(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}[{self.code}]: {self.message}"

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["severity"] = str(self.severity)
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Finding:
        return cls(
            file=str(d["file"]),
            line=int(d["line"]),  # type: ignore[call-overload]
            column=int(d["column"]),  # type: ignore[call-overload]
            severity=Severity(str(d["severity"])),
            code=str(d["code"]),
            message=str(d["message"]),
        )


def error(file: str, line: int, column: int, code: str, message: str) -> Finding:
    return Finding(file, line, column, Severity.ERROR, code, message)


def warning(file: str, line: int, column: int, code: str, message: str) -> Finding:
    return Finding(file, line, column, Severity.WARNING, code, message)


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


def render_text(findings: Iterable[Finding]) -> str:
    return "\n".join(f.text() for f in sorted(findings))


def render_json(findings: Iterable[Finding]) -> str:
    return json.dumps([f.to_json() for f in sorted(findings)], indent=2)

"""JSON Schema checks of repository documents, with messages a policy author understands.

Each document is checked against the schema of its (apiVersion, kind) from
`schemas/`. jsonschema's own messages name schema keywords; the author needs the
field, what is wrong with it, and the likely fix ("did you mean ...?"), at the
line of the offending node. The schemas are loaded once per process.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from reconciler.errors import PalisadeError
from reconciler.findings import Finding
from reconciler.repository.source import Document, JsonPath

PALISADE_API = "palisade.dev/v1"
TETRAGON_API = "cilium.io/v1alpha1"

#: (apiVersion, kind) → schema file in schemas/.
KINDS: Mapping[tuple[str, str], str] = {
    (PALISADE_API, "Repository"): "repository.schema.json",
    (PALISADE_API, "Group"): "group.schema.json",
    (PALISADE_API, "Pack"): "pack.schema.json",
    (PALISADE_API, "Rule"): "rule.schema.json",
    (PALISADE_API, "Enforcement"): "enforcement.schema.json",
    (PALISADE_API, "Rollout"): "rollout.schema.json",
    (TETRAGON_API, "TracingPolicy"): "tracingpolicy.schema.json",
    (TETRAGON_API, "TracingPolicyNamespaced"): "tracingpolicy.schema.json",
}
_KINDS_BY_API: dict[str, list[str]] = {}
for _api, _kind in KINDS:
    _KINDS_BY_API.setdefault(_api, []).append(_kind)

_SUGGESTION = re.compile(r"did you mean (\S+)\?")
_MISSING = re.compile(r"missing required field '([^']+)'")

#: Why a field is required, where the bare "missing" would puzzle.
_REQUIRED_WHY = {"policy": " (template: custom needs its TracingPolicy under policy.spec)"}

#: Enumerations longer than this are abbreviated in messages.
_ENUM_SHOWN = 16


class SchemaMissing(PalisadeError):
    """The schemas directory cannot be found (a broken installation, not bad input)."""


@dataclass(frozen=True)
class Problem:
    """One schema violation: where (a JSON path into the document) and what, in words."""

    path: JsonPath
    message: str


# --- loading ---------------------------------------------------------------------------------


def schemas_dir() -> Path:
    """The schemas/ directory: $PALISADE_SCHEMAS, else next to the package (source tree, editable install),
    else where a wheel installs them (<prefix>/share/palisade/schemas)."""
    candidates = []
    if os.environ.get("PALISADE_SCHEMAS"):
        candidates.append(Path(os.environ["PALISADE_SCHEMAS"]))
    candidates.append(Path(__file__).resolve().parents[2] / "schemas")
    candidates.append(Path(sys.prefix) / "share" / "palisade" / "schemas")  # a wheel's data-files (pyproject)
    for c in candidates:
        if (c / "tracingpolicy.schema.json").is_file():
            return c
    raise SchemaMissing(f"JSON schemas not found (looked in {', '.join(map(str, candidates))}); "
                        "set PALISADE_SCHEMAS to the schemas/ directory")


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    """Every schema file by file name, parsed once."""
    d = schemas_dir()
    return {fn: json.loads((d / fn).read_text(encoding="utf-8")) for fn in sorted(set(KINDS.values()))}


@cache
def _validator(filename: str) -> Draft202012Validator:
    # $refs are inlined once: resolving them on every validation costs more than the checks themselves
    flat = _inline(_schemas()[filename], _schemas()[filename], 0)
    needs_formats = '"format"' in json.dumps(flat)
    return Draft202012Validator(flat, format_checker=Draft202012Validator.FORMAT_CHECKER if needs_formats else None)


def _inline(node: Any, root: dict[str, Any], depth: int) -> Any:
    """`node` with every $ref (local '#/$defs/X' or another schema's '$id#/$defs/X') replaced by its target."""
    if depth > 40:
        raise SchemaMissing("schemas/: $ref nesting too deep (a recursive reference?)")
    if isinstance(node, list):
        return [_inline(v, root, depth) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _inline(v, root, depth) for k, v in node.items() if k not in ("$ref", "$defs")}
    ref = node.get("$ref")
    if isinstance(ref, str):
        base, _, pointer = ref.partition("#")
        target_root = root if not base else _by_id()[base]
        target: Any = target_root
        for step in (s for s in pointer.split("/") if s):
            target = target[step]
        resolved = _inline(target, target_root, depth + 1)
        out = {**resolved, **out}  # keywords next to the $ref (description...) win
    return out


@cache
def _by_id() -> dict[str, dict[str, Any]]:
    return {s["$id"]: s for s in _schemas().values()}


def schema_for(kind: str) -> dict[str, Any]:
    """The JSON Schema of a kind (Repository, Group, Pack, Rule, Enforcement, Rollout, TracingPolicy...)."""
    for (_, k), fn in KINDS.items():
        if k == kind:
            return _schemas()[fn]
    raise KeyError(f"no schema for kind {kind!r}")


# --- checking --------------------------------------------------------------------------------


def check_document(doc: Document) -> list[Finding]:
    """Schema findings of one document (code `unknown-kind` or `schema`), each at its YAML node."""
    plain = doc.plain
    if not isinstance(plain, dict):
        return [doc.error((), "schema", f"expected a mapping with apiVersion, kind, metadata and spec, "
                                        f"got {_type_name(plain)}")]
    unknown = _unknown_kind(plain)
    if unknown is not None:
        where, message = unknown
        return [doc.error(where, "unknown-kind", message)]
    api, kind = plain["apiVersion"], plain["kind"]
    return [doc.error(p.path, "schema", p.message) for p in problems(KINDS[(api, kind)], plain)]


def problems(schema_file: str, value: Any) -> list[Problem]:
    """Every violation of `value` against one schema file (e.g. "rule.schema.json"), most specific first."""
    out: list[Problem] = []
    seen: set[tuple[JsonPath, str]] = set()
    for e in sorted(_validator(schema_file).iter_errors(value), key=_error_order):
        for p in _explain(e):
            key = (p.path, p.message)
            if key not in seen:
                seen.add(key)
                out.append(p)
    # a misspelt required field yields "unknown field 'calll' (did you mean call?)" and "missing 'call'":
    # the first says it all
    suggested = {(p.path[:-1], m) for p in out for m in _SUGGESTION.findall(p.message)
                 if p.message.startswith("unknown field")}
    return [p for p in out if not any((p.path, m) in suggested for m in _MISSING.findall(p.message))]


def _unknown_kind(plain: dict[str, Any]) -> tuple[JsonPath, str] | None:
    api, kind = plain.get("apiVersion"), plain.get("kind")
    apis = sorted(_KINDS_BY_API)
    if api is None:
        return (), f"missing 'apiVersion' (use {' or '.join(apis)})"
    if not isinstance(api, str) or api not in _KINDS_BY_API:
        return ("apiVersion",), f"unknown apiVersion {api!r}; expected one of {', '.join(apis)}" + _hint(api, apis)
    kinds = _KINDS_BY_API[api]
    if kind is None:
        return (), f"missing 'kind' (one of {', '.join(kinds)})"
    if not isinstance(kind, str) or kind not in kinds:
        other = [a for a, ks in _KINDS_BY_API.items() if kind in ks]
        if other:
            return ("apiVersion",), f"kind {kind} belongs to apiVersion {other[0]}, not {api}"
        return ("kind",), f"unknown kind {kind!r} for apiVersion {api}; expected one of " \
                          f"{', '.join(kinds)}" + _hint(kind, kinds)
    return None


def _error_order(e: ValidationError) -> tuple[Any, ...]:
    return tuple((0, p) if isinstance(p, int) else (1, str(p)) for p in e.absolute_path)


def _explain(e: ValidationError) -> Iterator[Problem]:
    """Turn one jsonschema error into problems worded for the author."""
    path: JsonPath = tuple(e.absolute_path)
    where = _render_path(path)
    prefix = f"{where}: " if where else ""
    v, inst, sch = e.validator, e.instance, e.schema
    if v == "additionalProperties" and isinstance(inst, dict) and isinstance(sch, Mapping):
        known = list(sch.get("properties", {}))
        extra = [k for k in inst if k not in known]
        for k in extra:
            loc = f" in {where}" if where else ""
            yield Problem((*path, k), f"unknown field {k!r}{loc}" + _hint(k, known, "; allowed here: ", known))
        return
    if v == "required":
        missing = [k for k in e.validator_value if isinstance(inst, dict) and k not in inst]
        for k in missing or [str(e.validator_value)]:
            yield Problem(path, f"{prefix}missing required field {k!r}" + _REQUIRED_WHY.get(k, ""))
        return
    if v == "enum":
        options = list(e.validator_value)
        yield Problem(path, f"{prefix}{_show(inst)} is not one of {_list(options)}" + _hint(inst, options))
        return
    if v == "const":
        yield Problem(path, f"{prefix}must be {_show(e.validator_value)}, not {_show(inst)}")
        return
    if v == "type":
        wanted = e.validator_value if isinstance(e.validator_value, str) else " or ".join(e.validator_value)
        quote = f" (quote it: {json.dumps(str(inst).lower() if isinstance(inst, bool) else str(inst))})" \
            if wanted == "string" and isinstance(inst, int | float) else ""
        yield Problem(path, f"{prefix}expected {_article(wanted)}, got {_type_name(inst)}{quote}")
        return
    if v == "format" and e.validator_value == "date":
        yield Problem(path, f"{prefix}{_show(inst)} is not a valid date (YYYY-MM-DD)")
        return
    if v == "pattern" or v == "format":
        desc = sch.get("description") if isinstance(sch, Mapping) else None
        what = f" ({_lower_first(desc)})" if desc else (f" (must match {e.validator_value})" if v == "pattern" else
                                          f" (not a valid {e.validator_value})")
        yield Problem(path, f"{prefix}{_show(inst)} is not valid{what}")
        return
    if v in ("anyOf", "oneOf"):
        yield from _explain_alternatives(e, path, prefix)
        return
    if v == "not" and isinstance(e.validator_value, Mapping) and "required" in e.validator_value:
        # `not: {required: [x]}`: the field is forbidden here (e.g. Rule.policy without template custom)
        for k in e.validator_value["required"]:
            yield Problem((*path, k), f"{_render_path((*path, k))}: not allowed here" + _forbidden_reason((*path, k)))
        return
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        rel = {"minimum": "at least", "maximum": "at most",
               "exclusiveMinimum": "greater than", "exclusiveMaximum": "less than"}[v]
        yield Problem(path, f"{prefix}{_show(inst)} is out of range; it must be {rel} {e.validator_value}")
        return
    if v in ("minItems", "maxItems"):
        n = e.validator_value
        rel = "at least" if v == "minItems" else "at most"
        yield Problem(path, f"{prefix}needs {rel} {n} item{'s' if n != 1 else ''} (has {len(inst)})")
        return
    if v in ("minProperties", "maxProperties"):
        desc = sch.get("description", "") if isinstance(sch, Mapping) else ""
        rel = "at least" if v == "minProperties" else "at most"
        fields = f" ({', '.join(map(str, inst))})" if isinstance(inst, dict) and inst else ""
        yield Problem(path, f"{prefix}needs {rel} {e.validator_value} field(s), has {len(inst)}{fields}"
                            + (f"; {_lower_first(desc)}" if desc else ""))
        return
    if v in ("minLength", "maxLength"):
        rel = "at least" if v == "minLength" else "at most"
        yield Problem(path, f"{prefix}must be {rel} {e.validator_value} characters long (is {len(inst)})")
        return
    if v == "uniqueItems":
        yield Problem(path, f"{prefix}has duplicate entries")
        return
    if v == "propertyNames":
        bad = e.context[0].instance if e.context else "?"
        yield Problem(path, f"{prefix}key {_show(bad)} is not a valid label key")
        return
    yield Problem(path, f"{prefix}{e.message}")


def _explain_alternatives(e: ValidationError, path: JsonPath, prefix: str) -> Iterator[Problem]:
    ctx = list(e.context or ())
    if ctx and all(c.validator == "required" for c in ctx):
        names = [str(k) for c in ctx for k in c.validator_value]
        yield Problem(path, f"{prefix}needs at least one of {', '.join(dict.fromkeys(names))}")
        return
    best = best_match(ctx) if ctx else None
    if best is not None:
        yield from _explain(best)
        return
    yield Problem(path, f"{prefix}{e.message}")


def _forbidden_reason(path: JsonPath) -> str:
    if path[-2:] == ("spec", "policy"):
        return " ('policy' is only used with template: custom)"
    return ""


# --- wording helpers -------------------------------------------------------------------------


def _render_path(path: Sequence[str | int]) -> str:
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step.replace("_", "").replace("-", "").isalnum():
            out += f".{step}" if out else step
        else:
            out += f"[{json.dumps(step)}]"
    return out


def _hint(value: Any, options: Iterable[Any], fallback: str = "", shown: Sequence[Any] = ()) -> str:
    """ ' (did you mean X?)' for a near miss; otherwise `fallback` followed by `shown` (if any)."""
    if isinstance(value, str):
        opts = [o for o in options if isinstance(o, str)]
        lower = {o.lower(): o for o in opts}
        if value.lower() in lower and lower[value.lower()] != value:
            return f" (did you mean {lower[value.lower()]}?)"
        close = difflib.get_close_matches(value, opts, n=1, cutoff=0.6)
        if close:
            return f" (did you mean {close[0]}?)"
    if fallback and shown:
        return f"{fallback}{_list(list(shown))}"
    return ""


def _lower_first(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:] if not text[1:2].isupper() else text


def _list(options: Sequence[Any]) -> str:
    shown = [str(o) for o in options[:_ENUM_SHOWN]]
    more = len(options) - len(shown)
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        text = str(value)
        return text if len(text) <= 30 else text[:27] + "..."
    return _type_name(value)


#: How a finding names a value's type; bool before int (a bool is an int to isinstance).
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (type(None), "null (an empty value)"), (bool, "a boolean"), (int, "an integer"), (float, "a number"),
    (str, "a string"), (list, "a list"), (dict, "a mapping"),
)


def _type_name(value: Any) -> str:
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), type(value).__name__)


def _article(type_name: str) -> str:
    words = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "a boolean (true or false)", "null": "null"}
    return words.get(type_name, type_name)

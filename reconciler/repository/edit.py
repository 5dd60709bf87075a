"""Operator edits of the policy repository that keep every other byte as written.

`palisade advance` and `palisade revert` change one ladder state in an
enforcement or rule file; `palisade generate` adds an assignment. People write
these files by hand, with comments, flow mappings and their own indentation, and
review the result as a diff: an edit that reflowed the file would bury the one
line that matters.

ruamel.yaml's round-trip loader finds the node (it keeps the line and column of
every key and value, across all documents of a file); the edit then replaces
exactly that value's characters in the original text, or inserts whole lines,
so nothing else can change. A re-dump by ruamel would normalise indentation,
quoting and line breaks in places. Every edit is checked by parsing the result:
its data must equal the original data with only the intended change.

Also here, because it is pure: choosing the move (`resolve`, `step`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from reconciler.errors import PalisadeError
from reconciler.repository.model import PolicyRepository
from wire.values import Scope, State

__all__ = [
    "EditError", "Refusal", "add_assignment", "flow_scope", "new_enforcement", "resolve", "set_state", "step",
]


class EditError(PalisadeError):
    """The file cannot be edited safely (exit 2): it is not what the model said, or is unusual."""


class Refusal(PalisadeError):
    """The requested move is not allowed (exit 1); the message says why and what to do."""

    exit_code = 1


# --- choosing the move ---------------------------------------------------------------------------


def resolve(ref: str, repo: PolicyRepository) -> tuple[str, str]:
    """`pack/NAME`, `rule/NAME` or a bare NAME → (kind, name); Refusal when unknown or ambiguous."""
    kind, sep, name = ref.partition("/")
    packs = {p.name for p in repo.packs} | {e.pack for e in repo.enforcements}
    rules = {r.name for r in repo.rules}
    if sep:
        if kind not in ("pack", "rule") or not name:
            raise Refusal(f"{ref!r}: write pack/NAME, rule/NAME or a bare NAME")
        known = packs if kind == "pack" else rules
        if name not in known:
            raise Refusal(f"there is no {kind} named {name!r}; {kind}s: {', '.join(sorted(known)) or 'none'}")
        return kind, name
    found = [k for k, names in (("pack", packs), ("rule", rules)) if ref in names]
    if not found:
        raise Refusal(f"there is no pack or rule named {ref!r}; packs: {', '.join(sorted(packs)) or 'none'}; "
                      f"rules: {', '.join(sorted(rules)) or 'none'}")
    if len(found) > 1:
        raise Refusal(f"{ref!r} is ambiguous: both a pack and a rule have that name; "
                      f"write pack/{ref} or rule/{ref}")
    return found[0], ref


_LADDER = (State.OBSERVE, State.ENFORCE_READY, State.ENFORCED)


def step(current: State, action: str, to: State | None = None) -> State:
    """The state `advance` (exactly one step forward) or `revert` (back, to observe by default) leads to."""
    if action == "advance":
        if current is State.ENFORCED:
            raise Refusal("it is already enforced, the last step of the ladder (observe → enforce_ready → "
                          "enforced); nothing to advance")
        nxt = _LADDER[current.rank + 1]
        if to is not None and to is not nxt:
            raise Refusal(f"advance moves exactly one step: {current.value} → {nxt.value}, not to {to.value} "
                          "(skipping a step is refused by the ladder rules)")
        return nxt
    if action == "revert":
        target = to or State.OBSERVE
        if target.rank == current.rank:
            raise Refusal(f"it is already at {current.value}; nothing to revert")
        if target.rank > current.rank:
            raise Refusal(f"revert moves back, but {target.value} is ahead of {current.value}; "
                          f"use palisade advance")
        return target
    raise ValueError(action)


# --- reading the file with ruamel ---------------------------------------------------------------


def _docs(text: str) -> list[Any]:
    try:
        return list(YAML(typ="rt").load_all(text))
    except YAMLError as e:
        raise EditError(f"cannot parse the file: {e}") from None


def _plain(text: str) -> list[Any]:
    try:
        return list(YAML(typ="safe", pure=True).load_all(text))
    except YAMLError as e:
        raise EditError(f"the edited file does not parse: {e}") from None


def _scope_of(node: Any) -> Scope:
    d = node if isinstance(node, dict) else {}
    return Scope(sensor=d.get("sensor"), group=d.get("group"))


def _enforcements(docs: list[Any], pack: str) -> Iterator[tuple[int, Any]]:
    for i, d in enumerate(docs):
        if isinstance(d, dict) and d.get("kind") == "Enforcement" and isinstance(d.get("spec"), dict) \
                and d["spec"].get("pack") == pack:
            yield i, d


def _rule(docs: list[Any], name: str) -> tuple[int, Any]:
    for i, d in enumerate(docs):
        meta = d.get("metadata") if isinstance(d, dict) else None
        if isinstance(d, dict) and d.get("kind") == "Rule" and isinstance(meta, dict) and meta.get("name") == name:
            return i, d
    raise EditError(f"no Rule named {name!r} in the file")


# --- edits ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\"(?P<dq>[^\"\\\n]*)\"|'(?P<sq>[^'\n]*)'|(?P<plain>[A-Za-z_]+)")


def set_state(text: str, *, kind: str, name: str, scope: Scope, state: State) -> str:
    """`text` with the state of pack `name`'s assignment at `scope` (or of rule `name`) set to `state`."""
    docs = _docs(text)
    expected = _plain(text)
    if kind == "pack":
        index, node = _assignment(docs, name, scope)
        expected[index]["spec"]["assignments"][_item_index(node, docs[index])]["state"] = state.value
    else:
        index, rule = _rule(docs, name)
        node = rule["spec"]
        if _scope_of(node.get("scope")) != scope:
            raise EditError(f"rule {name} is scoped to {_scope_of(node.get('scope')).key}, not {scope.key}")
        expected[index]["spec"]["state"] = state.value
    if not isinstance(node, CommentedMap):
        raise EditError("the assignment is not a mapping")
    if "state" in node:
        line, col = node.lc.value("state")
        out = _replace_scalar(text, line, col, state.value)
    elif kind == "rule":
        out = _insert_key(text, node, "state", state.value)
    else:
        raise EditError(f"the assignment of pack {name} at {scope.key} has no state")
    _check(out, expected)
    return out


def _assignment(docs: list[Any], pack: str, scope: Scope) -> tuple[int, CommentedMap]:
    seen = False
    for i, d in _enforcements(docs, pack):
        seen = True
        for a in d["spec"].get("assignments") or []:
            if isinstance(a, CommentedMap) and _scope_of(a.get("scope")) == scope:
                return i, a
    if not seen:
        raise EditError(f"no Enforcement for pack {pack!r} in the file")
    raise EditError(f"pack {pack} has no assignment at {scope.key} in the file")


def _item_index(node: Any, doc: Any) -> int:
    return next(i for i, a in enumerate(doc["spec"]["assignments"]) if a is node)


def _replace_scalar(text: str, line: int, col: int, value: str) -> str:
    lines = text.splitlines(keepends=True)
    if line >= len(lines):
        raise EditError("the value is outside the file")
    src = lines[line]
    m = _TOKEN.match(src, col)
    if m is None:
        raise EditError(f"line {line + 1}: expected a state value at column {col + 1}, found {src[col:].strip()!r}")
    if m.group("dq") is not None:
        new = f'"{value}"'
    elif m.group("sq") is not None:
        new = f"'{value}'"
    else:
        new = value
    lines[line] = src[: m.start()] + new + src[m.end():]
    return "".join(lines)


def _insert_key(text: str, node: CommentedMap, key: str, value: str) -> str:
    """Insert `key: value` as a new line after the mapping's first key (rules: after `template`)."""
    if node.fa.flow_style():
        raise EditError(f"the mapping that should hold {key!r} is written in flow style; add `{key}: {value}` by hand")
    first = next(iter(node))
    line, col = node.lc.key(first)
    lines = text.splitlines(keepends=True)
    end = _block_end(lines, line, col)
    eol = _eol(lines[end - 1])
    lines.insert(end, " " * col + f"{key}: {value}{eol}")
    return "".join(lines)


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """The index after the last content line of the node beginning at `start` (indented deeper than `indent`)."""
    end = start + 1
    last = start + 1
    while end < len(lines):
        s = lines[end]
        stripped = s.strip()
        if stripped and not stripped.startswith("#"):
            if len(s) - len(s.lstrip(" ")) <= indent or s.startswith(("---", "...")):
                break
            last = end + 1
        end += 1
    return last


def _eol(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n"


def flow_scope(scope: Scope) -> str:
    if scope.sensor is not None:
        return f"{{sensor: {_quote(scope.sensor)}}}"
    if scope.group is not None:
        return f"{{group: {_quote(scope.group)}}}"
    return "{}"


def _quote(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", value) and value.lower() not in (
            "true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"):
        return value
    return json.dumps(value)  # a JSON string is a valid double-quoted YAML scalar


def add_assignment(text: str, *, pack: str, scope: Scope, state: State = State.OBSERVE) -> str:
    """`text` with a new assignment of `pack` at `scope` appended to its list (new assignments start at observe)."""
    docs = _docs(text)
    expected = _plain(text)
    found = list(_enforcements(docs, pack))
    if not found:
        raise EditError(f"no Enforcement for pack {pack!r} in the file")
    index, doc = found[0]
    for _, d in found:
        for a in d["spec"].get("assignments") or []:
            if _scope_of(a.get("scope") if isinstance(a, dict) else None) == scope:
                raise EditError(f"pack {pack} already has an assignment at {scope.key}")
    seq = doc["spec"].get("assignments")
    lines = text.splitlines(keepends=True)
    if isinstance(seq, CommentedSeq) and len(seq) and not seq.fa.flow_style():
        item_line, item_col = seq.lc.item(len(seq) - 1)
        dash = lines[item_line].rfind("-", 0, item_col)
        if dash < 0:
            raise EditError("cannot find the list's dash; add the assignment by hand")
        end = _block_end(lines, item_line, dash)
        content = item_col
    elif "assignments" not in doc["spec"] or seq is None or (isinstance(seq, CommentedSeq) and not len(seq)):
        raise EditError(f"the Enforcement of pack {pack} has no assignment list to extend; "
                        "write the first one by hand (see example-repo/enforcement/)")
    else:
        raise EditError("the assignment list is written in flow style; add the assignment by hand")
    if end == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    eol = _eol(lines[end - 1])
    new = [" " * dash + "-" + " " * (content - dash - 1) + f"scope: {flow_scope(scope)}{eol}",
           " " * content + f"state: {state.value}{eol}"]
    lines[end:end] = new
    out = "".join(lines)
    expected[index]["spec"]["assignments"].append({"scope": scope.to_json(), "state": state.value})
    _check(out, expected)
    return out


def new_enforcement(pack: str, scope: Scope, state: State = State.OBSERVE) -> str:
    """A new enforcement file for `pack` with one assignment."""
    return (
        "apiVersion: palisade.dev/v1\n"
        "kind: Enforcement\n"
        "metadata:\n"
        f"  name: {_quote(pack)}\n"
        "spec:\n"
        f"  pack: {_quote(pack)}\n"
        "  assignments:\n"
        f"    - scope: {flow_scope(scope)}\n"
        f"      state: {state.value}\n"
    )


def _check(out: str, expected: list[Any]) -> None:
    """The edited text must parse to exactly the intended data (a guard against a wrong splice)."""
    got = _plain(out)
    if got != expected:
        raise EditError("the edit would change more than the intended value; edit the file by hand")

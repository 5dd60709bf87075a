"""YAML files read strictly into documents whose every node remembers its line and column.

The one reader of YAML files that a human wrote and wants errors pointed into: the
reconciler reads a policy repository with it (reconciler/repository/source.py adds its
findings), `palisade-agent try` reads the files it is given. `Document.locate` turns
the JSON path of a `PolicyError` (bpf.policy) into a line and column.

Parsing uses libyaml through PyYAML's C composer and builds that tree directly:
ruamel's round-trip loader (which `palisade advance` uses to edit files while
keeping their formatting) is some twenty times slower, too slow for CI on
repositories of a thousand policies. Alias expansion is bounded, so a "billion
laughs" document is refused, not an outage; duplicate keys and merge keys are refused.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from .errors import JsonPath

__all__ = ["MAX_FILE_BYTES", "MAX_NODES", "Binary", "Document", "DuplicateKey", "InvalidYaml", "NotUtf8",
           "YamlError", "read", "to_plain"]

#: Larger files are refused rather than parsed (by the callers, which know how they read the file).
MAX_FILE_BYTES = 1024 * 1024
#: Most nodes one document may expand to (aliases included).
MAX_NODES = 200_000


class YamlError(ValueError):
    """A file that is not YAML this reader takes; the class names the kind and `code` labels it, `line` and
    `column` (1-based, 0: the whole file) say where."""

    code: ClassVar[str] = "yaml"

    def __init_subclass__(cls, *, code: str = "yaml", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = code

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.line, self.column = line, column


class Binary(YamlError, code="binary"):
    """A NUL byte near the start: a binary file."""


class NotUtf8(YamlError, code="encoding"):
    """Bytes that are not UTF-8 text."""


class DuplicateKey(YamlError, code="duplicate-key"):
    """A key given twice in one mapping."""


class InvalidYaml(YamlError):
    """Not YAML, or YAML past the bounds (nesting, alias expansion) or with a merge key."""


@dataclass(frozen=True, eq=False)
class Document:
    """One YAML document of a file, with its node tree for locating what is wrong in it."""

    path: str
    index: int
    node: Any
    plain: Any = field(repr=False)

    @property
    def kind(self) -> str | None:
        k = self.plain.get("kind") if isinstance(self.plain, dict) else None
        return k if isinstance(k, str) else None

    @property
    def api_version(self) -> str | None:
        v = self.plain.get("apiVersion") if isinstance(self.plain, dict) else None
        return v if isinstance(v, str) else None

    @property
    def name(self) -> str | None:
        meta = self.plain.get("metadata") if isinstance(self.plain, dict) else None
        n = meta.get("name") if isinstance(meta, dict) else None
        return n if isinstance(n, str) else None

    def locate(self, path: JsonPath = ()) -> tuple[int, int]:
        """1-based (line, column) of the node at `path`; the nearest existing ancestor if it is missing."""
        node = self.node
        line, col = (node.line, node.col) if isinstance(node, _Map | _Seq) else (0, 0)
        for step in path:
            if isinstance(node, _Map) and isinstance(step, str) and step in node:
                child = node[step]
                # point at the key for collections (where a human looks), at the value for scalars
                line, col = node.key_pos[step] if isinstance(child, _Map | _Seq) else node.val_pos[step]
                node = child
            elif isinstance(node, _Seq) and isinstance(step, int) and 0 <= step < len(node):
                line, col = node.item_pos[step]
                node = node[step]
            else:
                break
        return line + 1, col + 1


class _Map(dict[str, Any]):
    """A mapping that remembers where it, each key and each value were written (0-based)."""

    __slots__ = ("col", "key_pos", "line", "val_pos")
    line: int
    col: int
    key_pos: dict[str, tuple[int, int]]
    val_pos: dict[str, tuple[int, int]]


class _Seq(list[Any]):
    """A sequence that remembers where it and each item were written (0-based)."""

    __slots__ = ("col", "item_pos", "line")
    line: int
    col: int
    item_pos: list[tuple[int, int]]


class _TooLarge(ValueError):
    pass


class _Duplicate(ValueError):
    def __init__(self, key: str, line: int, col: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} (first defined on line {first + 1})")
        self.line, self.col = line, col


_CONSTRUCT = yaml.constructor.SafeConstructor()
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: libyaml's composer recurses in C and overflows the stack (SIGSEGV) near 25,000 nesting levels, which
#: a 60 kB file reaches; text that might nest deeper than this goes to the pure-Python loader, which stops
#: with RecursionError instead.
_C_SAFE_DEPTH = 5_000


def _loader_for(text: str) -> type:
    # Nesting depth is at most two levels per column (indentless sequences) plus one per flow bracket.
    widest = max((len(line) for line in text.splitlines()), default=0)
    bound = 2 * widest + text.count("[") + text.count("{") + 2
    return _Loader if bound <= _C_SAFE_DEPTH else yaml.SafeLoader


class _Builder:
    """Composed libyaml nodes → plain values in _Map/_Seq, with positions; bounded alias expansion."""

    def __init__(self) -> None:
        self.count = 0

    def build(self, node: yaml.Node, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES or depth > 200:
            raise _TooLarge(f"document expands to more than {MAX_NODES} nodes or nests deeper than 200 "
                            "levels (alias bomb?)")
        if isinstance(node, yaml.MappingNode):
            m = _Map()
            m.line, m.col = node.start_mark.line, node.start_mark.column
            m.key_pos, m.val_pos = {}, {}
            for k_node, v_node in node.value:
                if k_node.tag == "tag:yaml.org,2002:merge":
                    raise ValueError("merge keys (<<) are not supported; write the keys out")
                key = self.build(k_node, depth + 1)
                if isinstance(key, dict | list):
                    raise ValueError(f"line {k_node.start_mark.line + 1}: a mapping key must be a scalar")
                key = str(key) if not isinstance(key, str) else key
                if key in m:
                    raise _Duplicate(key, k_node.start_mark.line, k_node.start_mark.column, m.key_pos[key][0])
                m[key] = self.build(v_node, depth + 1)
                m.key_pos[key] = (k_node.start_mark.line, k_node.start_mark.column)
                m.val_pos[key] = (v_node.start_mark.line, v_node.start_mark.column)
            return m
        if isinstance(node, yaml.SequenceNode):
            s = _Seq()
            s.line, s.col = node.start_mark.line, node.start_mark.column
            s.item_pos = []
            for item in node.value:
                s.append(self.build(item, depth + 1))
                s.item_pos.append((item.start_mark.line, item.start_mark.column))
            return s
        if node.tag == "tag:yaml.org,2002:timestamp":
            return str(node.value)  # dates stay text: schemas and parsers read ISO strings
        if node.tag in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:binary") or not node.tag.startswith("tag:yaml"):
            return str(node.value)
        return _CONSTRUCT.construct_object(node)


def read(path: str, data: bytes) -> list[Document]:
    """Every YAML document of the file `path` holding `data` (empty documents left out: maybe none at all);
    a YamlError of the kind's class if the file cannot be read as YAML."""
    if b"\0" in data[:8192]:
        raise Binary("binary file where YAML was expected; remove it or fix it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUtf8(f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    docs: list[Document] = []
    try:
        for i, node in enumerate(yaml.compose_all(text, Loader=_loader_for(text))):
            if node is None:
                continue
            tree = _Builder().build(node)
            if tree is None:
                continue
            docs.append(Document(path, i, tree, to_plain(tree)))
    except _Duplicate as e:
        raise DuplicateKey(f"invalid YAML: {e}", e.line + 1, e.col + 1) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        problem = (e.problem or e.context or "invalid YAML").strip()
        raise InvalidYaml(f"invalid YAML: {problem}", line, col) from None
    except (yaml.YAMLError, ValueError, RecursionError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidYaml(f"invalid YAML: {first}") from None
    return docs


def to_plain(node: Any) -> Any:
    """A parsed tree as plain dicts, lists and scalars (dates as ISO strings)."""
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, _dt.datetime | _dt.date):
        return node.isoformat()
    if isinstance(node, bytes):
        return node.decode("utf-8", "replace")
    return node

"""Reading a policy repository: files from a work tree or a git revision, parsed into documents.

This is the I/O edge of validation. Every YAML document keeps a node tree with
the line and column of every key, value and item, so that a finding can point at
the node that causes it; `Document.plain` is the same data as plain JSON values.

Parsing uses libyaml through PyYAML's C composer and builds that tree directly:
ruamel's round-trip loader (which `palisade advance` uses to edit files while
keeping their formatting) is some twenty times slower, too slow for CI on
repositories of a thousand policies. Alias expansion is bounded, so a "billion
laughs" document is a finding, not an outage.
"""
from __future__ import annotations

import datetime as _dt
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import SourceError
from reconciler.findings import Finding, error, warning
from reconciler.repository.git import Git, UnknownRevision

#: Folders whose YAML files belong to the repository format (DESIGN.md §2).
FOLDERS = ("scopes", "packs", "rules", "enforcement", "staging")
ROOT_FILE = "palisade.yaml"
#: Larger files are refused with a finding rather than parsed.
MAX_FILE_BYTES = 1024 * 1024

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class SourceFile:
    """One file of the repository as bytes, or the reason it cannot be read."""

    path: str
    data: bytes | None
    problem: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """The repository files that matter, at one revision (or the work tree when `revision` is None)."""

    files: tuple[SourceFile, ...]
    revision: str | None = None


@dataclass(frozen=True, eq=False)
class Document:
    """One YAML document of a file, with its node tree for locating findings."""

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

    def error(self, path: JsonPath, code: str, message: str) -> Finding:
        line, col = self.locate(path)
        return error(self.path, line, col, code, message)

    def warning(self, path: JsonPath, code: str, message: str) -> Finding:
        line, col = self.locate(path)
        return warning(self.path, line, col, code, message)


def wanted(path: str) -> bool:
    """Whether a repository path is part of the policy format."""
    if path == ROOT_FILE:
        return True
    top = path.split("/", 1)[0]
    return top in FOLDERS and path.endswith((".yaml", ".yml"))


# --- reading files ---------------------------------------------------------------------------


def from_worktree(root: Path) -> Snapshot:
    """Read the policy files of a checked-out repository (or any directory)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory; pass --repo with the policy repository's path")
    real_root = root.resolve()
    files: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for fn in sorted(filenames):
            full = Path(dirpath, fn)
            rel = full.relative_to(root).as_posix()
            if not wanted(rel):
                continue
            files.append(_read_file(full, rel, real_root))
    return Snapshot(tuple(files), None)


def _read_file(full: Path, rel: str, real_root: Path) -> SourceFile:
    if full.is_symlink():
        target = full.resolve()
        if not target.is_relative_to(real_root):
            return SourceFile(rel, None, f"symlink points outside the repository ({os.readlink(full)})")
        if not target.is_file():
            return SourceFile(rel, None, f"symlink target is not a file ({os.readlink(full)})")
    try:
        size = full.stat().st_size
        if size > MAX_FILE_BYTES:
            return SourceFile(rel, None, f"file is {size} bytes; the limit is {MAX_FILE_BYTES}")
        return SourceFile(rel, full.read_bytes())
    except OSError as e:
        return SourceFile(rel, None, f"cannot read: {e.strerror}")


def from_git(repo: Path, rev: str) -> Snapshot:
    """Read the policy files of `rev` straight from git's object store (no checkout)."""
    commit = resolve(repo, rev)
    git = Git(Path(repo))
    entries = [e for e in git.ls_tree(commit) if e.type == "blob" and wanted(e.path)]
    blobs = git.cat_blobs(e.sha for e in entries if e.size <= MAX_FILE_BYTES or e.is_symlink)
    by_path = {e.path: (e.sha, e.size) for e in entries}
    files: list[SourceFile] = []
    for e in entries:
        path, sha, size = e.path, e.sha, e.size
        if e.is_symlink:
            target = blobs[sha].decode("utf-8", "replace")
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            if target.startswith("/") or joined.startswith(".."):
                files.append(SourceFile(path, None, f"symlink points outside the repository ({target})"))
                continue
            if joined not in by_path:
                files.append(SourceFile(path, None, f"symlink target is not a policy file of the repository "
                                                    f"({target}); link only to files in the policy folders"))
                continue
            sha, size = by_path[joined]
            if sha not in blobs and size <= MAX_FILE_BYTES:
                blobs.update(git.cat_blobs([sha]))
        if size > MAX_FILE_BYTES:
            files.append(SourceFile(path, None, f"file is {size} bytes; the limit is {MAX_FILE_BYTES}"))
        else:
            files.append(SourceFile(path, blobs[sha]))
    return Snapshot(tuple(sorted(files, key=lambda f: f.path)), commit)


def resolve(repo: Path, rev: str) -> str:
    """The full commit id `rev` names; UnknownRevision, NotARepository (SourceErrors) say why it cannot be read."""
    if len(rev) == 40 and _FULL_SHA.fullmatch(rev) and _known_commit(repo, rev):
        return rev
    sha = Git(Path(repo)).find_commit(rev)
    if sha is None:
        raise UnknownRevision(Path(repo), rev)
    if len(_KNOWN) > 100_000:
        _KNOWN.clear()
    _KNOWN.add((str(repo), sha))
    return sha


_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_KNOWN: set[tuple[str, str]] = set()


def _known_commit(repo: Path, sha: str) -> bool:
    """Whether `sha` was already resolved as a commit of `repo` (commits never change; spares a git call)."""
    return (str(repo), sha) in _KNOWN


def parent(repo: Path, commit: str) -> str | None:
    """The first parent of `commit`, or None for a root commit."""
    return Git(Path(repo)).find_commit(f"{commit}^1")


# --- parsing ---------------------------------------------------------------------------------


#: Most nodes one document may expand to (aliases included).
MAX_NODES = 200_000


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


def parse(snapshot: Snapshot) -> tuple[list[Document], list[Finding]]:
    """Every YAML document of the snapshot, and a finding for each file that cannot be parsed."""
    docs: list[Document] = []
    findings: list[Finding] = []
    for f in snapshot.files:
        d, fs = parse_file(f)
        docs.extend(d)
        findings.extend(fs)
    return docs, findings


def parse_file(f: SourceFile) -> tuple[list[Document], list[Finding]]:
    if f.data is None:
        return [], [error(f.path, 0, 0, "unreadable", f.problem or "cannot read the file")]
    if b"\0" in f.data[:8192]:
        return [], [error(f.path, 0, 0, "binary", "binary file where YAML was expected; remove it or fix it")]
    try:
        text = f.data.decode("utf-8")
    except UnicodeDecodeError as e:
        return [], [error(f.path, 0, 0, "encoding", f"not UTF-8 text (byte {e.start}); save it as UTF-8")]
    docs: list[Document] = []
    try:
        for i, node in enumerate(yaml.compose_all(text, Loader=_loader_for(text))):
            if node is None:
                continue
            tree = _Builder().build(node)
            if tree is None:
                continue
            docs.append(Document(f.path, i, tree, to_plain(tree)))
    except _Duplicate as e:
        return [], [error(f.path, e.line + 1, e.col + 1, "duplicate-key", f"invalid YAML: {e}")]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        problem = (e.problem or e.context or "invalid YAML").strip()
        return [], [error(f.path, line, col, "yaml", f"invalid YAML: {problem}")]
    except (yaml.YAMLError, ValueError, RecursionError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [], [error(f.path, 0, 0, "yaml", f"invalid YAML: {first}")]
    if not docs:
        return [], [warning(f.path, 0, 0, "empty", "file holds no YAML document; delete it or add one")]
    return docs, []


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


def iter_documents(docs: Sequence[Document], kind: str) -> Iterator[Document]:
    return (d for d in docs if d.kind == kind)

"""Reading a policy repository: files from a work tree or a git revision, parsed into documents.

This is the I/O edge of validation. Every YAML document keeps its ruamel node
tree so that a finding can point at the exact line and column of the node that
causes it; `Document.plain` is the same data as plain JSON values for schema checks.
"""
from __future__ import annotations

import datetime as _dt
import os
import posixpath
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .errors import SourceError
from .findings import Finding, error, warning

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
        line, col = _start(node)
        for step in path:
            if isinstance(node, CommentedMap) and step in node:
                # point at the key for mappings (where a human looks), the value for scalars
                kl, kc = node.lc.key(step)
                vl, vc = node.lc.value(step)
                child = node[step]
                line, col = (vl, vc) if not isinstance(child, CommentedMap | CommentedSeq) else (kl, kc)
                node = child
            elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
                line, col = node.lc.item(step)
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


def _start(node: Any) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is not None and lc.line is not None:
        return lc.line, lc.col or 0
    return 0, 0


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
    listing = _git(repo, "ls-tree", "-r", "-z", "--full-tree", "-l", commit)
    entries: list[tuple[str, str, str, int]] = []
    for rec in listing.split(b"\0"):
        if not rec:
            continue
        meta, path_b = rec.split(b"\t", 1)
        mode, otype, sha, size_text = meta.decode().split()
        path = path_b.decode("utf-8", "surrogateescape")
        if otype == "blob" and wanted(path):
            entries.append((mode, sha, path, int(size_text) if size_text != "-" else 0))
    blobs = _cat_blobs(repo, [sha for mode, sha, _, size in entries if size <= MAX_FILE_BYTES or mode == "120000"])
    by_path = {p: (sha, size) for _, sha, p, size in entries}
    files: list[SourceFile] = []
    for mode, sha, path, size in entries:
        if mode == "120000":
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
                blobs.update(_cat_blobs(repo, [sha]))
        if size > MAX_FILE_BYTES:
            files.append(SourceFile(path, None, f"file is {size} bytes; the limit is {MAX_FILE_BYTES}"))
        else:
            files.append(SourceFile(path, blobs[sha]))
    return Snapshot(tuple(sorted(files, key=lambda f: f.path)), commit)


def resolve(repo: Path, rev: str) -> str:
    """The full commit id `rev` names, or SourceError saying why it cannot be read."""
    out = _git_optional(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if out is None:
        raise SourceError(f"{repo}: revision {rev!r} does not name a commit")
    return out.decode().strip()


def parent(repo: Path, commit: str) -> str | None:
    """The first parent of `commit`, or None for a root commit."""
    out = _git_optional(repo, "rev-parse", "--verify", "--quiet", f"{commit}^1")
    return out.decode().strip() if out else None


def _cat_blobs(repo: Path, shas: Sequence[str]) -> dict[str, bytes]:
    if not shas:
        return {}
    unique = list(dict.fromkeys(shas))
    proc = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "--batch"],
        input=("\n".join(unique) + "\n").encode(),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SourceError(f"{repo}: git cat-file failed: {proc.stderr.decode(errors='replace').strip()}")
    out, pos, result = proc.stdout, 0, {}
    for sha in unique:
        nl = out.index(b"\n", pos)
        header = out[pos:nl].split()
        size = int(header[2])
        result[sha] = out[nl + 1 : nl + 1 + size]
        pos = nl + 1 + size + 1
    return result


def _git(repo: Path, *args: str) -> bytes:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip() or f"git {args[0]} failed"
        raise SourceError(f"{repo}: {msg}")
    return proc.stdout


def _git_optional(repo: Path, *args: str) -> bytes | None:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    if proc.returncode == 128 and b"not a git repository" in proc.stderr:
        raise SourceError(f"{repo}: not a git repository")
    return proc.stdout if proc.returncode == 0 else None


# --- parsing ---------------------------------------------------------------------------------


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


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
        for i, node in enumerate(_yaml().load_all(text)):
            if node is None:
                continue
            docs.append(Document(f.path, i, node, to_plain(node)))
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        problem = (e.problem or e.context or "invalid YAML").strip()
        code = "duplicate-key" if "duplicate key" in str(e) else "yaml"
        return [], [error(f.path, line, col, code, f"invalid YAML: {problem}")]
    except (YAMLError, RecursionError, ValueError) as e:
        return [], [error(f.path, 0, 0, "yaml", f"invalid YAML: {str(e).splitlines()[0] if str(e) else e}")]
    if not docs:
        return [], [warning(f.path, 0, 0, "empty", "file holds no YAML document; delete it or add one")]
    return docs, []


def to_plain(node: Any) -> Any:
    """ruamel's round-trip values as plain JSON-compatible values (dates as ISO strings)."""
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, _dt.datetime | _dt.date):
        return node.isoformat()
    return str(node)


def iter_documents(docs: Sequence[Document], kind: str) -> Iterator[Document]:
    return (d for d in docs if d.kind == kind)

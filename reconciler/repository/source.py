"""Reading a policy repository: files from a work tree or a git revision, parsed into documents.

This is the I/O edge of validation. Every YAML document keeps a node tree with
the line and column of every key, value and item (bpf/yamldocs.py, the reader
`palisade-agent try` uses too), so that a finding can point at the node that causes
it; `Document.plain` is the same data as plain JSON values. A file that cannot be
read as YAML (binary, not UTF-8, a duplicate key, an alias bomb) is a finding, not an outage.
"""
from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bpf import yamldocs
from bpf.errors import JsonPath
from bpf.yamldocs import MAX_FILE_BYTES
from reconciler.errors import SourceError
from reconciler.findings import Finding, error, warning
from reconciler.repository.git import Git, UnknownRevision

#: Folders whose YAML files belong to the repository format (DESIGN.md §2).
FOLDERS = ("scopes", "packs", "rules", "enforcement", "staging")
ROOT_FILE = "palisade.yaml"


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
class Document(yamldocs.Document):
    """One YAML document of a file, with its node tree for locating findings."""

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
    try:
        docs = yamldocs.read(f.path, f.data)
    except yamldocs.YamlError as e:
        return [], [error(f.path, e.line, e.column, e.code, str(e))]
    if not docs:
        return [], [warning(f.path, 0, 0, "empty", "file holds no YAML document; delete it or add one")]
    return [Document(d.path, d.index, d.node, d.plain) for d in docs], []


def iter_documents(docs: Sequence[Document], kind: str) -> Iterator[Document]:
    return (d for d in docs if d.kind == kind)

"""A copy of the bundle store that any static web server, object store or CDN serves (`palisade publish`).

    <mirror>/v1/index              the signed index, byte for byte as the store holds it
    <mirror>/v1/bundles/<N>        every bundle the index lists
    <mirror>/v1/objects/<sha256>   every CO-RE object those bundles list

The paths are the API's (`palisade serve`, reconciler/serve/server.py), so an agent reads a mirror with
the same requests against another base URL: nginx's `root <mirror>;`, or the directory uploaded as is
to a bucket, serves it. Nothing here is trusted by the agent: the signatures and its rollback, expiry
and replay checks decide.

A mirror is written in the store's order: objects, then bundles, then the index, each to a dot-named
temporary file, fsync'ed, renamed over its name, its directory fsync'ed; a reader never sees an index
naming a file that is not there. Everything is read and checked before anything is written: a bundle
whose bytes do not match the index, an object whose bytes do not match its name, a mirror file of the
same name with other bytes (bundles and objects are immutable, and caches keep them for ever), or a
mirror index newer than the store's (publishing an old state directory would roll agents back) is
refused and nothing changes. A file that already holds the right bytes is left alone, so publishing
twice is a no-op.

The index's mtime moves forward by at least a second whenever it changes: nginx's ETag is the mtime in
seconds and the size, so two indexes of one size written within a second would share an ETag, and an
agent holding the first would be told 304 for the second (Last-Modified likewise).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import StateError, VerificationError
from reconciler.state.store import Store, _fsync_dir, _write_all  # the store's own write steps
from wire.bundle import Index, parse_bundle, parse_index, sha256_hex

__all__ = ["MirrorConflict", "MirrorDir", "MirrorResult", "NothingPublished", "StoreDamaged", "mirror"]

_API = "v1"
_SECOND_NS = 1_000_000_000


class NothingPublished(StateError):
    """The store has no index yet: there is nothing to mirror (exit 2)."""


class StoreDamaged(StateError):
    """A file of the store does not match the digest that names it: it is not copied anywhere (exit 2)."""


class MirrorConflict(StateError):
    """The mirror holds a different file under an immutable name, or a newer index (exit 2)."""


@dataclass(frozen=True)
class MirrorDir:
    """The layout of a mirror directory: the API's paths below `root`."""

    root: Path

    @property
    def index(self) -> Path:
        return self.root / _API / "index"

    @property
    def bundles(self) -> Path:
        return self.root / _API / "bundles"

    @property
    def objects(self) -> Path:
        return self.root / _API / "objects"

    def bundle(self, version: int) -> Path:
        return self.bundles / str(int(version))

    def object(self, sha256: str) -> Path:
        return self.objects / sha256


@dataclass(frozen=True)
class MirrorResult:
    """What one `mirror` did: the index it left in place, the files it wrote and those it pruned."""

    root: Path
    index: Index  # the index the mirror holds now
    written: tuple[str, ...]  # paths below `root` this run wrote, in the order written (the index last)
    unchanged: int  # files that already held the right bytes
    pruned: tuple[str, ...] = ()  # with prune=True: bundles and objects the index no longer lists, removed

    def to_json(self) -> dict[str, Any]:
        return {"to": str(self.root), "version": self.index.version, "serial": self.index.serial,
                "written": list(self.written), "unchanged": self.unchanged, "pruned": list(self.pruned)}


@dataclass(frozen=True)
class _Copy:
    path: Path
    data: bytes


def mirror(store: Path, to: Path, *, prune: bool = False) -> MirrorResult:
    """Bring the mirror at `to` up to the store at `store` (see the module docstring). With `prune`, once
    the new index is in place, remove the bundles and objects it no longer lists (what `palisade serve`
    would no longer serve either); files that are not the mirror's (other names) are left alone."""
    source = Store(store)  # a reader: opens nothing for writing
    index_bytes = source.index_bytes()
    if index_bytes is None:
        raise NothingPublished(f"{source.index_path} does not exist: nothing has been published yet "
                               f"(run `palisade reconcile` or `palisade serve` first)")
    index = _parse_own_index(index_bytes, source.index_path)
    dest = MirrorDir(Path(to))
    objects: dict[str, _Copy] = {}
    bundles: list[tuple[int, _Copy]] = []
    for entry in index.bundles:
        data = source.bundle_bytes(entry.version)
        if data is None or len(data) != entry.size or sha256_hex(data) != entry.sha256:
            raise StoreDamaged(f"{source.bundle_path(entry.version)} is missing or does not match the digest "
                               f"the index (serial {index.serial}) gives for v{entry.version}")
        bundles.append((entry.version, _Copy(dest.bundle(entry.version), data)))
        for o in parse_bundle(data).objects:
            if o.sha256 in objects:
                continue
            blob = source.object_bytes(o.sha256)  # None when absent or damaged (it hashes to its name)
            if blob is None or len(blob) != o.size:
                raise StoreDamaged(f"object {o.sha256} of bundle v{entry.version} is missing from the store "
                                   f"or damaged ({source.root / 'objects' / o.sha256})")
            objects[o.sha256] = _Copy(dest.object(o.sha256), blob)
    immutable = [*objects.values(), *(c for _, c in bundles)]
    todo = [c for c in immutable if _differs(c)]
    index_todo = _index_needs_writing(dest.index, index, index_bytes)
    try:
        for d in (dest.objects, dest.bundles):
            d.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as e:
        raise StateError(f"cannot create the mirror {dest.root}: {e.strerror}") from None
    for c in todo:  # objects first (they come first in the list), then bundles
        _write(c.path, c.data)
    if index_todo:
        _write(dest.index, index_bytes, after=_mtime_ns(dest.index))
    written = [c.path for c in todo] + ([dest.index] if index_todo else [])
    pruned = _prune(dest, {v for v, _ in bundles}, set(objects)) if prune else []
    return MirrorResult(dest.root, index, tuple(p.relative_to(dest.root).as_posix() for p in written),
                        unchanged=len(immutable) - len(todo) + (0 if index_todo else 1),
                        pruned=tuple(p.relative_to(dest.root).as_posix() for p in pruned))


def _prune(dest: MirrorDir, versions: set[int], objects: set[str]) -> list[Path]:
    """Remove mirror bundles and objects outside the index just written (after it: an agent holding the
    previous index may still fetch what that one listed until it polls again — one poll interval)."""
    gone: list[Path] = []
    for d, keep in ((dest.bundles, {str(v) for v in versions}), (dest.objects, objects)):
        try:
            names = sorted(p.name for p in d.iterdir())
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StateError(f"cannot list {d}: {e.strerror}") from None
        for name in names:
            mine = name.isdigit() if d == dest.bundles else len(name) == 64 and all(
                c in "0123456789abcdef" for c in name)
            if not mine or name in keep:
                continue  # a temporary file, or something put there by hand: not ours to delete
            try:
                (d / name).unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StateError(f"cannot prune {d / name}: {e.strerror}") from None
            gone.append(d / name)
    if gone:
        for d in (dest.bundles, dest.objects):
            _fsync_dir(d)
    return gone


def _parse_own_index(data: bytes, path: Path) -> Index:
    try:
        return parse_index(data)
    except VerificationError as e:
        raise StoreDamaged(f"{path} cannot be read as an index: {e}") from None


def _existing(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from None


def _differs(c: _Copy) -> bool:
    """Whether an immutable file must be written: absent (True), present with these bytes (False), else refused."""
    existing = _existing(c.path)
    if existing is None:
        return True
    if existing != c.data:
        raise MirrorConflict(f"{c.path} exists with other bytes; bundles and objects are immutable (caches keep "
                             f"them for ever), so a mirror of another store cannot be written over it")
    return False


def _index_needs_writing(path: Path, index: Index, data: bytes) -> bool:
    existing = _existing(path)
    if existing is None:
        return True
    if existing == data:
        return False
    try:
        held = parse_index(existing)
    except VerificationError:
        return True  # a damaged mirror index: ours to replace, agents refused it anyway
    if held.serial >= index.serial:
        raise MirrorConflict(f"{path} holds index serial {held.serial} (v{held.version}), not older than the "
                             f"store's serial {index.serial} (v{index.version}); agents would refuse it as a "
                             f"replay, so it is left as it is")
    return True


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _write(path: Path, data: bytes, *, after: int | None = None) -> None:
    """Write `path` atomically, world-readable (a web server's user reads it); with `after`, its mtime is at
    least one whole second past that mtime (see the module docstring)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            _write_all(fd, data)
            if after is not None:
                now = time.time_ns()
                floor = (after // _SECOND_NS + 1) * _SECOND_NS
                stamp = max(now, floor)
                os.utime(fd, ns=(stamp, stamp))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StateError(f"cannot write {path}: {e.strerror}") from None

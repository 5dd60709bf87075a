"""What is really in the kernel: BPF programs, links, cgroup attachments, palisade's
pins, and digests of chosen maps — read from the kernel itself through bpf(2).

The agent compares this with what it loaded (drift); tests assert that a load
followed by an unload leaves `diff(before, after)` empty of their objects.
Everything is a frozen dataclass, so snapshots compare with `==` and can be
kept, diffed and serialised (`to_json`).

Objects can vanish between listing an id and opening it (another process
unloads); such objects are skipped, because the snapshot is of the moment.
"""
from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import os
import struct
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generic, TypeVar

from . import syscall as sc
from .syscall import AttachType, MapType, SyscallError

__all__ = [
    "DEFAULT_CGROUP_HOOKS",
    "PIN_ROOT",
    "CgroupAttachment",
    "Change",
    "Inventory",
    "InventoryDiff",
    "Link",
    "MapDigest",
    "Pin",
    "Program",
    "diff",
    "inventory",
    "map_digest",
    "wait_until_gone",
]

PIN_ROOT = Path("/sys/fs/bpf/palisade")
# The cgroup hooks palisade enforces on; a foreign program there is drift.
DEFAULT_CGROUP_HOOKS: tuple[AttachType, ...] = (
    AttachType.BPF_CGROUP_INET_SOCK_CREATE,
    AttachType.BPF_CGROUP_INET4_CONNECT,
    AttachType.BPF_CGROUP_INET6_CONNECT,
    AttachType.BPF_CGROUP_UDP4_SENDMSG,
    AttachType.BPF_CGROUP_UDP6_SENDMSG,
)


@dataclass(frozen=True)
class Program:
    id: int
    type: str  # "tracepoint", "cgroup_sock", ... (enum bpf_prog_type without its prefix)
    name: str  # the kernel keeps at most 15 characters
    tag: str  # hash of the instructions: a program rewritten in place changes tag
    map_ids: tuple[int, ...]
    load_time_ns: int  # since boot


@dataclass(frozen=True)
class Link:
    id: int
    type: str  # "perf_event", "cgroup", ...
    prog_id: int
    attach_type: str | None = None  # cgroup links, e.g. "cgroup_inet4_connect"
    cgroup_id: int | None = None  # cgroup links; 0 once the link is detached
    target: str | None = None  # perf-event / raw tracepoint links: the tracepoint's name


@dataclass(frozen=True)
class CgroupAttachment:
    """The programs attached directly (not inherited) to one hook of one cgroup."""

    cgroup: str  # path under the cgroup2 root, "/" for the root
    cgroup_id: int
    attach_type: str
    prog_ids: tuple[int, ...]


@dataclass(frozen=True)
class Pin:
    path: str
    kind: str  # "prog", "map" or "link"
    id: int


@dataclass(frozen=True)
class MapDigest:
    """sha256 over a map's shape and every (key, value), in key order.

    Maps whose contents cannot be listed (ring buffers, perf event arrays) are
    digested by shape only, with `entries` None.
    """

    id: int
    name: str
    type: str
    sha256: str
    entries: int | None


@dataclass(frozen=True)
class Inventory:
    programs: tuple[Program, ...]
    links: tuple[Link, ...]
    cgroup_attachments: tuple[CgroupAttachment, ...]
    pins: tuple[Pin, ...]
    maps: tuple[MapDigest, ...] = ()

    def program(self, prog_id: int) -> Program | None:
        return next((p for p in self.programs if p.id == prog_id), None)

    def links_of(self, prog_id: int) -> tuple[Link, ...]:
        return tuple(link for link in self.links if link.prog_id == prog_id)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
Info = TypeVar("Info")


@dataclass(frozen=True)
class Change(Generic[T]):
    before: T
    after: T


@dataclass(frozen=True)
class InventoryDiff:
    """What appeared, disappeared or changed between two snapshots, per kind."""

    added_programs: tuple[Program, ...] = ()
    removed_programs: tuple[Program, ...] = ()
    changed_programs: tuple[Change[Program], ...] = ()
    added_links: tuple[Link, ...] = ()
    removed_links: tuple[Link, ...] = ()
    changed_links: tuple[Change[Link], ...] = ()
    added_attachments: tuple[CgroupAttachment, ...] = ()
    removed_attachments: tuple[CgroupAttachment, ...] = ()
    changed_attachments: tuple[Change[CgroupAttachment], ...] = ()
    added_pins: tuple[Pin, ...] = ()
    removed_pins: tuple[Pin, ...] = ()
    changed_pins: tuple[Change[Pin], ...] = ()
    added_maps: tuple[MapDigest, ...] = ()
    removed_maps: tuple[MapDigest, ...] = ()
    changed_maps: tuple[Change[MapDigest], ...] = ()

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__dataclass_fields__)

    def __bool__(self) -> bool:
        return not self.empty


def diff(before: Inventory, after: Inventory) -> InventoryDiff:
    """Compare two snapshots; objects are matched by kernel id (pins by path,
    attachments by cgroup and hook)."""
    progs = _diff(before.programs, after.programs, lambda p: p.id)
    links = _diff(before.links, after.links, lambda link: link.id)
    attachments = _diff(before.cgroup_attachments, after.cgroup_attachments,
                        lambda a: (a.cgroup_id, a.attach_type))
    pins = _diff(before.pins, after.pins, lambda p: p.path)
    maps = _diff(before.maps, after.maps, lambda m: m.id)
    return InventoryDiff(*progs, *links, *attachments, *pins, *maps)


def _diff(before: Sequence[T], after: Sequence[T], key: Callable[[T], K]) -> tuple[
    tuple[T, ...], tuple[T, ...], tuple[Change[T], ...]
]:
    old = {key(x): x for x in before}
    new = {key(x): x for x in after}
    added = tuple(x for k, x in new.items() if k not in old)
    removed = tuple(x for k, x in old.items() if k not in new)
    changed = tuple(Change(old[k], x) for k, x in new.items() if k in old and old[k] != x)
    return added, removed, changed


# ---------------------------------------------------------------- reading the kernel


def inventory(
    *,
    pin_root: Path = PIN_ROOT,
    cgroup_hooks: Iterable[AttachType] = DEFAULT_CGROUP_HOOKS,
    cgroup_root: Path | None = None,
    digest: Iterable[int | str | os.PathLike[str]] = (),
) -> Inventory:
    """A snapshot of the kernel: every program and link, the programs on `cgroup_hooks`
    of every cgroup under `cgroup_root` (default: the whole cgroup2 hierarchy), the
    pins under `pin_root`, and digests of the maps in `digest` (ids or pinned paths)."""
    return Inventory(
        programs=tuple(_programs()),
        links=tuple(_links()),
        cgroup_attachments=tuple(_cgroup_attachments(cgroup_root or sc.cgroup2_root(), tuple(cgroup_hooks))),
        pins=tuple(_pins(pin_root)),
        maps=tuple(map_digest(m) for m in digest),
    )


def _short(enum_cls: type[enum.IntEnum], value: int, prefix: str) -> str:
    try:
        return enum_cls(value).name.removeprefix(prefix).lower()
    except ValueError:
        return str(value)


@contextlib.contextmanager
def _opened(open_fd: Callable[[int], int], ident: int) -> Iterator[int | None]:
    """An fd for object `ident`, or None when it is already gone (ENOENT)."""
    try:
        fd = open_fd(ident)
    except SyscallError as e:
        if e.errno == errno.ENOENT:
            yield None
            return
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _infos(ids: Iterable[int], open_fd: Callable[[int], int], read: Callable[[int], Info]) -> Iterator[Info]:
    """What `read` says of each object of `ids` that is still there when opened."""
    for ident in ids:
        with _opened(open_fd, ident) as fd:
            if fd is not None:
                yield read(fd)


def _programs() -> Iterator[Program]:
    for info in _infos(sc.prog_ids(), sc.prog_get_fd_by_id, sc.prog_info):
        yield Program(info.id, info.type_name, info.name, info.tag, info.map_ids, info.load_time_ns)


def _links() -> Iterator[Link]:
    for info in _infos(sc.link_ids(), sc.link_get_fd_by_id, sc.link_info):
        attach = None if info.attach_type is None else _short(AttachType, info.attach_type, "BPF_")
        yield Link(info.id, info.type_name, info.prog_id, attach, info.cgroup_id, info.target_name)


def _cgroup_attachments(root: Path, hooks: tuple[AttachType, ...]) -> Iterator[CgroupAttachment]:
    if not hooks:
        return
    for dirpath, _dirs, _files in os.walk(root):
        try:
            fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # removed while we walked
        try:
            cgroup_id = os.fstat(fd).st_ino  # on cgroup2 the inode number is the cgroup id
            rel = "/" + os.path.relpath(dirpath, root) if dirpath != str(root) else "/"
            for hook in hooks:
                try:
                    query = sc.prog_query(fd, hook)
                except SyscallError as e:
                    if e.errno in (errno.ENOENT, errno.EINVAL):
                        continue
                    raise
                if query.prog_ids:
                    yield CgroupAttachment(rel, cgroup_id, _short(AttachType, hook, "BPF_"), query.prog_ids)
        finally:
            os.close(fd)


def _fdinfo(fd: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def _pins(root: Path) -> Iterator[Pin]:
    if not root.is_dir():
        return
    for path in sorted(p for p in root.rglob("*") if not p.is_dir()):
        try:
            fd = sc.obj_get(path)
        except SyscallError as e:
            if e.errno == errno.ENOENT:
                continue
            raise
        try:
            # The kernel's fdinfo says what kind of object the pin holds, and its id.
            info = _fdinfo(fd)
        finally:
            os.close(fd)
        # A link's fdinfo also names its prog_id, so look for link_id first.
        for kind in ("link", "map", "prog"):
            if f"{kind}_id" in info:
                yield Pin(str(path), kind, int(info[f"{kind}_id"]))
                break


def wait_until_gone(
    prog_ids: Iterable[int] = (), link_ids: Iterable[int] = (), map_ids: Iterable[int] = (),
    *, timeout: float = 2.0,
) -> bool:
    """Wait until the kernel has freed these objects; False if some are still there at `timeout`.

    Unpinning is asynchronous: the bpffs inode, and with it the last reference,
    goes after an RCU grace period (30-50 ms measured here), so an unload that
    must leave nothing behind when it returns waits here.
    """
    progs, links, maps = set(prog_ids), set(link_ids), set(map_ids)
    deadline = time.monotonic() + timeout
    while True:
        left = (progs & set(sc.prog_ids())) | (links & set(sc.link_ids())) | (maps & set(sc.map_ids()))
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


# ---------------------------------------------------------------- map digests

# Maps whose entries are not listable through bpf(2) (or hold per-open fds).
_UNLISTABLE = {MapType.BPF_MAP_TYPE_RINGBUF, MapType.BPF_MAP_TYPE_PERF_EVENT_ARRAY}


def map_digest(ref: int | str | os.PathLike[str]) -> MapDigest:
    """Digest the map with kernel id `ref` (int) or pinned at `ref` (path)."""
    fd = sc.map_get_fd_by_id(ref) if isinstance(ref, int) else sc.obj_get(ref)
    try:
        info = sc.map_info(fd)
        h = hashlib.sha256()
        h.update(struct.pack("<IIIII", info.type, info.key_size, info.value_size, info.max_entries, info.flags))
        entries: int | None = None
        if info.type not in _UNLISTABLE:
            items = sorted(sc.map_items(fd))
            for key, value in items:
                h.update(struct.pack("<II", len(key), len(value)) + key + value)
            entries = len(items)
        return MapDigest(info.id, info.name, info.type_name, h.hexdigest(), entries)
    finally:
        os.close(fd)


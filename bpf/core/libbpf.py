"""A small typed ctypes binding to the system libbpf (libbpf.so.1, Debian `libbpf1`); no bcc.

libbpf 1.x returns NULL or a negative errno and sets errno; every failure here becomes
a `LibbpfError` subclass naming the action, the errno and what libbpf printed meanwhile
(its print callback is captured instead of going to stderr). Ownership: `BpfObject`
owns its programs and maps (they refuse use after close); `Link` and `RingBuffer` are
owned by whoever made them. Everything is a context manager and closes deterministically.
"""
from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from .errors import (
    AttachFailed,
    LibbpfError,
    LibbpfMissing,
    LoadFailed,
    MapOpFailed,
    NotFound,
    ObjectClosed,
    OpenFailed,
    PinFailed,
    RingBufferFailed,
)

_P = ctypes.c_void_p
_S = ctypes.c_char_p
_I = ctypes.c_int
_U32 = ctypes.c_uint32
_SZ = ctypes.c_size_t

#: verifier/BTF log kept from a failed load (the kernel keeps the tail when it overflows)
KERNEL_LOG_SIZE = 256 * 1024

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
# map types whose values are per CPU (lookup returns one value per possible CPU)
_PERCPU_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE


class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts as of libbpf 1.1 (`sz` makes newer fields optional)."""

    _fields_ = (
        ("sz", _SZ),
        ("object_name", _S),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", _S),
        ("_attach_prog_fd", _U32),
        ("kconfig", _S),
        ("btf_custom_path", _S),
        ("kernel_log_buf", _P),
        ("kernel_log_size", _SZ),
        ("kernel_log_level", _U32),
    )


_PRINT_FN = ctypes.CFUNCTYPE(_I, _I, _S, _P)
SAMPLE_FN = ctypes.CFUNCTYPE(_I, _P, _P, _SZ)

# libbpf's messages, numbered, so an error can quote what was printed since its call began
_log: collections.deque[tuple[int, str]] = collections.deque(maxlen=400)
_seq = itertools.count(1)
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = (ctypes.c_char_p, _SZ, _S, _P)


_LIBBPF_DEBUG = 2


@_PRINT_FN
def _print(level: int, fmt: bytes | None, args: int | None) -> int:
    if level >= _LIBBPF_DEBUG:  # hundreds per load, never what explains a failure (warnings do)
        return 0
    buf = ctypes.create_string_buffer(2048)
    _libc.vsnprintf(buf, len(buf), fmt, args)  # va_list is passed through as a pointer on x86-64
    _log.append((next(_seq), buf.value.decode(errors="replace").rstrip("\n")))
    return 0


def _mark() -> int:
    return _log[-1][0] if _log else 0


def _since(mark: int) -> str:
    return "\n".join(text for seq, text in list(_log) if seq > mark)


def _declare(lib: ctypes.CDLL) -> None:
    sigs: dict[str, tuple[Any, tuple[Any, ...]]] = {
        "libbpf_set_print": (_P, (_PRINT_FN,)),
        "libbpf_num_possible_cpus": (_I, ()),
        "libbpf_strerror": (_I, (_I, ctypes.c_char_p, _SZ)),
        "bpf_object__open_mem": (_P, (_P, _SZ, ctypes.POINTER(_OpenOpts))),
        "bpf_object__open_file": (_P, (_S, ctypes.POINTER(_OpenOpts))),
        "bpf_object__load": (_I, (_P,)),
        "bpf_object__close": (None, (_P,)),
        "bpf_object__name": (_S, (_P,)),
        "bpf_object__next_program": (_P, (_P, _P)),
        "bpf_object__next_map": (_P, (_P, _P)),
        "bpf_program__name": (_S, (_P,)),
        "bpf_program__section_name": (_S, (_P,)),
        "bpf_program__fd": (_I, (_P,)),
        "bpf_program__set_autoload": (_I, (_P, ctypes.c_bool)),
        "bpf_program__attach": (_P, (_P,)),
        "bpf_program__attach_tracepoint": (_P, (_P, _S, _S)),
        "bpf_program__attach_raw_tracepoint": (_P, (_P, _S)),
        "bpf_link__pin": (_I, (_P, _S)),
        "bpf_link__unpin": (_I, (_P,)),
        "bpf_link__fd": (_I, (_P,)),
        "bpf_link__destroy": (_I, (_P,)),
        "bpf_link__open": (_P, (_S,)),
        "bpf_map__name": (_S, (_P,)),
        "bpf_map__fd": (_I, (_P,)),
        "bpf_map__type": (_I, (_P,)),
        "bpf_map__key_size": (_U32, (_P,)),
        "bpf_map__value_size": (_U32, (_P,)),
        "bpf_map__set_max_entries": (_I, (_P, _U32)),
        "bpf_map__set_value_size": (_I, (_P, _U32)),
        "bpf_map__reuse_fd": (_I, (_P, _I)),
        "bpf_map__pin": (_I, (_P, _S)),
        "bpf_map__unpin": (_I, (_P, _S)),
        "bpf_map_update_elem": (_I, (_I, _P, _P, ctypes.c_uint64)),
        "bpf_map_lookup_elem": (_I, (_I, _P, _P)),
        "bpf_map_delete_elem": (_I, (_I, _P)),
        "bpf_map_get_next_key": (_I, (_I, _P, _P)),
        "bpf_obj_get": (_I, (_S,)),
        "ring_buffer__new": (_P, (_I, SAMPLE_FN, _P, _P)),
        "ring_buffer__add": (_I, (_P, _I, SAMPLE_FN, _P)),
        "ring_buffer__poll": (_I, (_P, _I)),
        "ring_buffer__consume": (_I, (_P,)),
        "ring_buffer__free": (None, (_P,)),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


def lib() -> ctypes.CDLL:
    """The loaded libbpf, declared and with its printing captured (once per process)."""
    global _lib
    with _lock:
        if _lib is None:
            path = ctypes.util.find_library("bpf") or "libbpf.so.1"
            try:
                handle = ctypes.CDLL(path, use_errno=True)
                _declare(handle)
            except (OSError, AttributeError) as e:
                raise LibbpfMissing(f"cannot use the system libbpf ({path}): {e}") from e
            handle.libbpf_set_print(_print)
            _lib = handle
    return _lib


def _errno_of(ret: int | None = None) -> int:
    if ret is not None and ret < 0:
        return -ret
    return ctypes.get_errno() or 1


def _err(cls: type[LibbpfError], action: str, err: int, log: str = "") -> LibbpfError:
    """An error of kind `cls`, its errno described by libbpf (which knows its own 4000.. codes too)."""
    buf = ctypes.create_string_buffer(256)
    reason = ""
    if _lib is not None and _lib.libbpf_strerror(abs(err), buf, len(buf)) == 0:
        reason = buf.value.decode(errors="replace")
    return cls(action, err, log, reason)


def _b(path: Path | str) -> bytes:
    return os.fsencode(str(path))


class _Closing:
    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class _Part:
    """A program or map of a `BpfObject`, by libbpf's handle (valid while the object is open)."""

    def __init__(self, obj: BpfObject, handle: int, name: bytes | None) -> None:
        self._obj = obj
        self._h = handle
        self.name: str = (name or b"").decode()

    def _handle(self) -> int:
        self._obj._handle()
        return self._h


P = TypeVar("P", bound=_Part)


def _named(kind: str, parts: list[P], name: str) -> P:
    """The program or map called `name`, or NotFound naming those there are."""
    for x in parts:
        if x.name == name:
            return x
    raise NotFound(kind, name, tuple(x.name for x in parts))


class BpfObject(_Closing):
    """A libbpf `struct bpf_object`: open (from bytes or a file), then `load()`."""

    def __init__(self, handle: int, name: str, keep: Any = None) -> None:
        self._h: int | None = handle
        self.name = name
        self._keep = keep  # the ELF bytes and options libbpf points into; live as long as the object
        self.loaded = False

    @classmethod
    def _opts(cls, name: str) -> tuple[_OpenOpts, Any]:
        log = ctypes.create_string_buffer(KERNEL_LOG_SIZE)
        cname = name.encode()
        opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts), object_name=cname,
                         kernel_log_buf=ctypes.cast(log, _P), kernel_log_size=KERNEL_LOG_SIZE)
        return opts, (log, cname)

    @classmethod
    def open_mem(cls, data: bytes, name: str = "palisade") -> BpfObject:
        lb = lib()
        buf = ctypes.create_string_buffer(data, len(data))
        opts, keep = cls._opts(name)
        mark = _mark()
        ctypes.set_errno(0)
        h = lb.bpf_object__open_mem(buf, len(data), ctypes.byref(opts))
        if not h:
            raise _err(OpenFailed, f"opening BPF object {name!r} ({len(data)} bytes)", _errno_of(), _since(mark))
        return cls(h, name, (buf, opts, keep))

    @classmethod
    def open_file(cls, path: Path, name: str | None = None) -> BpfObject:
        lb = lib()
        oname = name or path.stem
        opts, keep = cls._opts(oname)
        mark = _mark()
        ctypes.set_errno(0)
        h = lb.bpf_object__open_file(_b(path), ctypes.byref(opts))
        if not h:
            raise _err(OpenFailed, f"opening BPF object {path}", _errno_of(), _since(mark))
        return cls(h, oname, (opts, keep))

    def _handle(self) -> int:
        if self._h is None:
            raise ObjectClosed(f"BPF object {self.name!r} is closed")
        return self._h

    def load(self) -> None:
        mark = _mark()
        ret = lib().bpf_object__load(self._handle())
        if ret < 0:
            kernel = self._keep[-1][0].value.decode(errors="replace").strip() if self._keep else ""
            printed = _since(mark)
            # what libbpf printed (say, "failed to find kernel BTF type ID of 'x'"), then the kernel's log
            # unless libbpf already quoted it
            raise _err(LoadFailed, f"loading BPF object {self.name!r}", _errno_of(ret),
                             "\n".join(x for x in (printed, "" if kernel in printed else kernel) if x))
        self.loaded = True

    def _walk(self, after: Callable[[int, int | None], int | None], part: Callable[[BpfObject, int], P]) -> list[P]:
        """The object's programs or maps, in its order: libbpf's `bpf_object__next_*` gives the one after each."""
        out, h = [], self._handle()
        x = after(h, None)
        while x:
            out.append(part(self, x))
            x = after(h, x)
        return out

    def programs(self) -> list[Program]:
        return self._walk(lib().bpf_object__next_program, Program)

    def maps(self) -> list[Map]:
        return self._walk(lib().bpf_object__next_map, Map)

    def program(self, name: str) -> Program:
        return _named("program", self.programs(), name)

    def map(self, name: str) -> Map:
        return _named("map", self.maps(), name)

    def close(self) -> None:
        if self._h is not None:
            lib().bpf_object__close(self._h)
            self._h = None
            self._keep = None


class Program(_Part):
    """A program of a `BpfObject` (valid while the object is open)."""

    def __init__(self, obj: BpfObject, handle: int) -> None:
        lb = lib()
        super().__init__(obj, handle, lb.bpf_program__name(handle))
        self.section: str = (lb.bpf_program__section_name(handle) or b"").decode()

    @property
    def fd(self) -> int:
        return int(lib().bpf_program__fd(self._handle()))

    def set_autoload(self, on: bool) -> None:
        ret = lib().bpf_program__set_autoload(self._handle(), on)
        if ret < 0:
            raise _err(LibbpfError, f"setting autoload of {self.name}", _errno_of(ret))

    def _link(self, what: str, fn: Callable[[], int | None]) -> Link:
        mark = _mark()
        ctypes.set_errno(0)
        h = fn()
        if not h:
            raise _err(AttachFailed, f"attaching {self.name} ({what})", _errno_of(), _since(mark))
        return Link(h, f"{self.name} ({what})")

    def attach(self) -> Link:
        """Attach where the program's SEC() says (raw_tp/..., tp/..., uprobe/... )."""
        return self._link(self.section, lambda: lib().bpf_program__attach(self._handle()))

    def attach_tracepoint(self, category: str, name: str) -> Link:
        return self._link(f"tracepoint {category}:{name}",
                          lambda: lib().bpf_program__attach_tracepoint(self._handle(), category.encode(),
                                                                       name.encode()))

    def attach_raw_tracepoint(self, name: str) -> Link:
        return self._link(f"raw tracepoint {name}",
                          lambda: lib().bpf_program__attach_raw_tracepoint(self._handle(), name.encode()))


class Link(_Closing):
    """A `struct bpf_link`. Closing it detaches the program unless the link is pinned."""

    def __init__(self, handle: int, what: str) -> None:
        self._h: int | None = handle
        self.what = what
        self.pinned: Path | None = None

    @classmethod
    def open_pinned(cls, path: Path) -> Link:
        mark = _mark()
        ctypes.set_errno(0)
        h = lib().bpf_link__open(_b(path))
        if not h:
            raise _err(PinFailed, f"opening pinned link {path}", _errno_of(), _since(mark))
        link = cls(h, str(path))
        link.pinned = path
        return link

    def _handle(self) -> int:
        if self._h is None:
            raise ObjectClosed(f"link {self.what} is closed")
        return self._h

    @property
    def fd(self) -> int:
        return int(lib().bpf_link__fd(self._handle()))

    def pin(self, path: Path) -> None:
        mark = _mark()
        ret = lib().bpf_link__pin(self._handle(), _b(path))
        if ret < 0:
            raise _err(PinFailed, f"pinning link {self.what} at {path}", _errno_of(ret), _since(mark))
        self.pinned = path

    def unpin(self) -> None:
        """Remove the pin; the program stays attached until the link is closed."""
        mark = _mark()
        ret = lib().bpf_link__unpin(self._handle())
        if ret < 0:
            raise _err(PinFailed, f"unpinning link {self.what}", _errno_of(ret), _since(mark))
        self.pinned = None

    def close(self) -> None:
        if self._h is not None:
            lib().bpf_link__destroy(self._h)
            self._h = None


class Map(_Part):
    """A map of a `BpfObject`; keys and values are raw bytes of the map's sizes."""

    def __init__(self, obj: BpfObject, handle: int) -> None:
        lb = lib()
        super().__init__(obj, handle, lb.bpf_map__name(handle))
        self.type: int = lb.bpf_map__type(handle)
        self.key_size: int = lb.bpf_map__key_size(handle)
        self.value_size: int = lb.bpf_map__value_size(handle)

    @property
    def fd(self) -> int:
        fd = int(lib().bpf_map__fd(self._handle()))
        if fd < 0:
            raise _err(MapOpFailed, f"map {self.name} has no fd (object not loaded)", -fd)
        return fd

    @property
    def stored_value_size(self) -> int:
        """Bytes a lookup returns: one 8-aligned slot per possible CPU for per-CPU maps."""
        if self.type in _PERCPU_TYPES:
            return ((self.value_size + 7) // 8 * 8) * int(lib().libbpf_num_possible_cpus())
        return self.value_size

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise _err(MapOpFailed, f"{self.name}: key of {len(key)} bytes, map wants {self.key_size}",
                       errno.EINVAL)
        return ctypes.create_string_buffer(key, len(key))

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.stored_value_size:
            raise _err(MapOpFailed, f"{self.name}: value of {len(value)} bytes, map wants {self.stored_value_size}",
                       errno.EINVAL)
        v = ctypes.create_string_buffer(value, len(value))
        ret = lib().bpf_map_update_elem(self.fd, self._key(key), v, flags)
        if ret < 0:
            raise _err(MapOpFailed, f"updating {self.name}", _errno_of(ret))

    def lookup(self, key: bytes) -> bytes | None:
        v = ctypes.create_string_buffer(self.stored_value_size)
        ret = lib().bpf_map_lookup_elem(self.fd, self._key(key), v)
        if ret < 0:
            err = _errno_of(ret)
            if err == errno.ENOENT:
                return None
            raise _err(MapOpFailed, f"looking up in {self.name}", err)
        return v.raw

    def delete(self, key: bytes) -> bool:
        """True when the key was there."""
        ret = lib().bpf_map_delete_elem(self.fd, self._key(key))
        if ret < 0:
            err = _errno_of(ret)
            if err == errno.ENOENT:
                return False
            raise _err(MapOpFailed, f"deleting from {self.name}", err)
        return True

    def keys(self) -> Iterator[bytes]:
        fd, prev = self.fd, None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = lib().bpf_map_get_next_key(fd, prev, nxt)
            if ret < 0:
                err = _errno_of(ret)
                if err == errno.ENOENT:
                    return
                raise _err(MapOpFailed, f"iterating {self.name}", err)
            yield nxt.raw
            prev = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def set_max_entries(self, n: int) -> None:
        """Before load: resize the map (for a ring buffer, its size in bytes: a power of 2 pages)."""
        ret = lib().bpf_map__set_max_entries(self._handle(), n)
        if ret < 0:
            raise _err(MapOpFailed, f"resizing {self.name} to {n}", _errno_of(ret))

    def set_value_size(self, n: int) -> None:
        """Before load: the size of the map's values (for a value whose size is known only at load)."""
        ret = lib().bpf_map__set_value_size(self._handle(), n)
        if ret < 0:
            raise _err(MapOpFailed, f"sizing the values of {self.name} to {n}", _errno_of(ret))
        self.value_size = n

    def reuse_fd(self, fd: int) -> None:
        """Before load: use an existing map (a pinned one, shared between objects) instead of creating it.

        libbpf keeps its own duplicate of `fd`; the caller still owns and closes `fd`."""
        mark = _mark()
        ret = lib().bpf_map__reuse_fd(self._handle(), fd)
        if ret < 0:
            raise _err(MapOpFailed, f"reusing map fd {fd} for {self.name}", _errno_of(ret), _since(mark))

    def pin(self, path: Path) -> None:
        mark = _mark()
        ret = lib().bpf_map__pin(self._handle(), _b(path))
        if ret < 0:
            raise _err(PinFailed, f"pinning map {self.name} at {path}", _errno_of(ret), _since(mark))

    def unpin(self, path: Path) -> None:
        mark = _mark()
        ret = lib().bpf_map__unpin(self._handle(), _b(path))
        if ret < 0:
            raise _err(PinFailed, f"unpinning map {self.name} from {path}", _errno_of(ret), _since(mark))


def obj_get(path: Path) -> int:
    """fd of a pinned program, map or link (the caller closes it)."""
    fd = lib().bpf_obj_get(_b(path))
    if fd < 0:
        raise _err(PinFailed, f"opening pin {path}", _errno_of(fd))
    return int(fd)


class RingBuffer(_Closing):
    """ring_buffer__new over one BPF_MAP_TYPE_RINGBUF map; `callback(record bytes)` per record.

    An exception raised by the callback stops the poll (libbpf gets a negative return)
    and is re-raised from `poll`, after the records before it were delivered.
    """

    def __init__(self, ringbuf: Map | int, callback: Callable[[bytes], None]) -> None:
        """`ringbuf`: a map of a loaded object, or the fd of a ring buffer map (a pinned one, say)."""
        self._error: BaseException | None = None
        #: Per ring: its callback, wrapped for libbpf (referenced for as long as libbpf may call it).
        self._fns: list[Any] = []
        fd, name = (ringbuf, f"fd {ringbuf}") if isinstance(ringbuf, int) else (ringbuf.fd, ringbuf.name)
        fn = self._wrap(callback)
        mark = _mark()
        ctypes.set_errno(0)
        h = lib().ring_buffer__new(fd, fn, None, None)
        if not h:
            raise _err(RingBufferFailed, f"creating a ring buffer on {name}", _errno_of(), _since(mark))
        self._h: int | None = h
        self._map = ringbuf  # keeps the object (and so the map fd) referenced

    def _wrap(self, callback: Callable[[bytes], None]) -> Any:
        def sample(ctx: int | None, data: int | None, size: int) -> int:
            try:
                callback(ctypes.string_at(data, size) if data else b"")
            except BaseException as e:
                self._error = e
                return -1
            return 0

        fn = SAMPLE_FN(sample)
        self._fns.append(fn)
        return fn

    def add(self, fd: int, callback: Callable[[bytes], None]) -> None:
        """Poll one more ring buffer map (by fd, which the caller keeps open) in the same `poll`."""
        fn = self._wrap(callback)
        mark = _mark()
        ret = lib().ring_buffer__add(self._handle(), fd, fn, None)
        if ret < 0:
            raise _err(RingBufferFailed, f"adding ring buffer fd {fd}", _errno_of(ret), _since(mark))

    def _handle(self) -> int:
        if self._h is None:
            raise ObjectClosed("ring buffer is closed")
        return self._h

    def _after(self, ret: int, action: str) -> int:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if ret < 0 and -ret != errno.EINTR:  # a signal arrived; nothing was lost
            raise _err(RingBufferFailed, action, -ret)
        return max(ret, 0)

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records, deliver them; returns how many."""
        return self._after(lib().ring_buffer__poll(self._handle(), timeout_ms), "polling the ring buffer")

    def consume(self) -> int:
        """Deliver whatever is there without waiting."""
        return self._after(lib().ring_buffer__consume(self._handle()), "consuming the ring buffer")

    def close(self) -> None:
        if self._h is not None:
            lib().ring_buffer__free(self._h)
            self._h = None

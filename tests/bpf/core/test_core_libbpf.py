"""The ctypes binding to libbpf on the real kernel: typed errors with errno, maps, pins, ring buffers."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from bpf.core import build
from bpf.core.build import BuiltObject
from bpf.core.errors import AttachFailed, LoadFailed, MapOpFailed, NotFound, ObjectClosed, OpenFailed, PinFailed
from bpf.core.libbpf import BPF_NOEXIST, BpfObject, Link, RingBuffer, obj_get

pytestmark = pytest.mark.kernel

LIBBPF_ERRNO_FORMAT = 4001  # libbpf's own errno for "not a BPF ELF object"

# dereferences a map lookup without checking it for NULL: the verifier must refuse it
UNCHECKED = b"""#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct {
    __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1); __type(key, __u32); __type(value, __u64);
} m SEC(".maps");
SEC("raw_tp/sched_process_exec")
int unchecked(void *ctx) { __u32 k = 0; __u64 *v = bpf_map_lookup_elem(&m, &k); return *v; }
"""


def test_bytes_that_are_not_an_object_are_refused_with_errno(require_core: None) -> None:
    with pytest.raises(OpenFailed) as e:
        BpfObject.open_mem(b"this is not an ELF file", "junk")
    assert e.value.errno == LIBBPF_ERRNO_FORMAT
    assert "junk" in e.value.action and "ELF" in str(e.value)


def test_a_verifier_refusal_carries_the_verifier_log(require_core: None, core_cache: Path) -> None:
    obj_file = build.compile_object(UNCHECKED, core_cache, name="unchecked.bpf.c")
    with BpfObject.open_file(obj_file.path, "unchecked") as obj, pytest.raises(LoadFailed) as e:
        obj.load()
    assert e.value.errno == errno.EACCES
    assert "map_value_or_null" in e.value.log  # the verifier's own words


def test_map_update_lookup_delete(require_core: None, sensor_object: BuiltObject) -> None:
    with BpfObject.open_mem(sensor_object.read(), "maps") as obj:
        obj.load()
        cache = obj.map("proc_cache")
        key, value = (4242).to_bytes(4, "little"), bytes(range(256)) * (cache.value_size // 256) + bytes(
            cache.value_size % 256)
        assert cache.lookup(key) is None
        cache.update(key, value)
        assert cache.lookup(key) == value
        assert key in list(cache.keys())
        with pytest.raises(MapOpFailed) as e:
            cache.update(key, value, BPF_NOEXIST)
        assert e.value.errno == errno.EEXIST
        assert cache.delete(key) is True
        assert cache.delete(key) is False
        with pytest.raises(MapOpFailed):
            cache.update(b"\0", value)  # wrong key size: refused before the kernel sees it
        scratch = obj.map("event_scratch")
        assert scratch.stored_value_size >= scratch.value_size * os.cpu_count()  # type: ignore[operator]


def test_names_that_are_not_in_the_object(require_core: None, sensor_object: BuiltObject) -> None:
    with BpfObject.open_mem(sensor_object.read(), "names") as obj:
        with pytest.raises(NotFound) as e:
            obj.program("nope")
        assert "palisade_exec" in e.value.available
        with pytest.raises(NotFound):
            obj.map("nope")


def test_attach_errors_carry_errno(require_core: None, sensor_object: BuiltObject) -> None:
    with BpfObject.open_mem(sensor_object.read(), "attach") as obj:
        obj.load()
        with pytest.raises(AttachFailed) as e:
            obj.program("palisade_exec").attach_raw_tracepoint("no_such_tracepoint_here")
        assert e.value.errno == errno.ENOENT
        assert "no_such_tracepoint_here" in e.value.action


def test_a_pinned_link_outlives_its_handle_until_unpinned(require_core: None, sensor_object: BuiltObject,
                                                          pin_dir: Path) -> None:
    pin = pin_dir / "exec"
    with BpfObject.open_mem(sensor_object.read(), "pins") as obj:
        obj.load()
        with obj.program("palisade_exec").attach() as link:
            link.pin(pin)
        # another program: before 6.2 a raw tracepoint refuses the same program twice (EEXIST at attach)
        with obj.program("palisade_exit").attach() as second, pytest.raises(PinFailed) as e:
            second.pin(pin)  # the path is taken
        assert e.value.errno == errno.EEXIST
    # the object and the loading handle are gone; the pin still holds the attached program
    with Link.open_pinned(pin) as adopted:
        assert adopted.fd >= 0
        adopted.unpin()
    assert not pin.exists()
    with pytest.raises(PinFailed) as e:
        obj_get(pin)
    assert e.value.errno == errno.ENOENT


def test_closed_objects_refuse_use(require_core: None, sensor_object: BuiltObject) -> None:
    obj = BpfObject.open_mem(sensor_object.read(), "closed")
    prog = obj.program("palisade_exit")
    obj.close()
    obj.close()  # closing twice is harmless
    with pytest.raises(ObjectClosed):
        _ = prog.fd
    with pytest.raises(ObjectClosed):
        obj.load()


def test_ring_buffer_delivers_records_and_a_callback_error_surfaces(require_core: None,
                                                                    sensor_object: BuiltObject) -> None:
    with BpfObject.open_mem(sensor_object.read(), "rb") as obj:
        obj.load()
        with obj.program("palisade_exec").attach():
            got: list[bytes] = []
            with RingBuffer(obj.map("events"), got.append) as rb:
                subprocess.run(["/usr/bin/true"], check=True)
                while not got:
                    rb.poll(100)
                assert got[0][:4] == (1).to_bytes(4, "little")  # an exec record

            class Boom(Exception):
                pass

            def explode(_: bytes) -> None:
                raise Boom

            with RingBuffer(obj.map("events"), explode) as rb:
                subprocess.run(["/usr/bin/true"], check=True)
                with pytest.raises(Boom):
                    for _ in range(50):
                        rb.poll(100)
            with pytest.raises(ObjectClosed):
                rb.poll(0)

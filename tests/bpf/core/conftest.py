"""Fixtures for the CO-RE engine: a build cache, the built sensor object, a live sensor with pins.

Kernel tests here need what `require_kernel` checks plus clang, bpftool, the system
libbpf and kernel BTF; as there, with CI=true a test that would skip fails instead.
Every pin a fixture makes is removed by its finalizer, also when the test fails.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from core_support import Events, bpffs_dir

from bpf.core import sensor as core_sensor
from bpf.core.build import BuiltObject
from bpf.core.sensor import Sensor
from support.kernel import core_problem, unavailable


@pytest.fixture(scope="session")
def require_core(require_kernel: None) -> None:
    problem = core_problem()
    if problem is not None:
        unavailable(problem)


@pytest.fixture(scope="session")
def core_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("core-cache")


@pytest.fixture(scope="session")
def sensor_object(require_core: None, core_cache: Path) -> BuiltObject:
    return core_sensor.build(core_cache)


@pytest.fixture()
def pin_dir(require_core: None) -> Iterator[Path]:
    with bpffs_dir() as d:
        yield d


@pytest.fixture(scope="module")
def events(require_core: None, core_cache: Path) -> Iterator[Events]:
    """One live sensor (links and process cache pinned) shared by a module's tests."""
    with bpffs_dir() as d, Sensor(core_sensor.build(core_cache).read(), "test-node", pin_dir=d) as s:
        yield Events(s)

"""Kernel fixtures (pin root, engine, workload cgroup; a bare bpffs directory and cgroup) for the tests in
this folder; see engine_support.

Tests marked `stock_kernel` need kprobes, which this machine's kernel lacks: they are deselected where the
probe finds none (not skipped: CI runs them in the kernel matrix's stock 6.1 guest, tests/vm). The marker's
arguments name other probe features a test needs instead (`stock_kernel("bpf_lsm", "fmod_ret")`)."""
from __future__ import annotations

import os

import pytest
from engine_support import cgroup, engine, pin_dir, pin_root, watched, workload

__all__ = ["cgroup", "engine", "pin_dir", "pin_root", "watched", "workload"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    stock = [i for i in items if i.get_closest_marker("stock_kernel")]
    if not stock or os.geteuid() != 0:
        return
    from bpf.probe import probe

    found = probe()

    def lacks(item: pytest.Item) -> bool:
        marker = item.get_closest_marker("stock_kernel")
        assert marker is not None
        return not all(getattr(found, name).available for name in marker.args or ("kprobes",))

    gone = {id(i) for i in stock if lacks(i)}
    if not gone:
        return
    config.hook.pytest_deselected(items=[i for i in stock if id(i) in gone])
    items[:] = [i for i in items if id(i) not in gone]

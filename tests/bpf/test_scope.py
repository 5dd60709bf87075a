"""bpf/scope.py's pure parts: the levels of the hierarchy a scope's cgroups are at."""
from __future__ import annotations

from pathlib import Path

from bpf import scope


def test_level_counts_directories_below_the_root(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert scope.level(str(tmp_path), tmp_path) == 0
    assert scope.level(str(tmp_path / "a"), tmp_path) == 1
    assert scope.level(str(tmp_path / "a" / "b") + "/", tmp_path) == 2


def test_level_mask_sets_one_bit_per_level_and_always_the_scoped_bit(tmp_path: Path) -> None:
    for d in ("a/b/c", "x", "y/z"):
        (tmp_path / d).mkdir(parents=True)
    cgroups = [str(tmp_path / d) for d in ("a/b/c", "x", "y/z")]
    assert scope.level_mask(cgroups, tmp_path) == scope.SCOPED | 1 << 3 | 1 << 1 | 1 << 2
    # a scope of no cgroups is still a scope: the kernel must not read it as "unscoped"
    assert scope.level_mask([], tmp_path) == scope.SCOPED != 0

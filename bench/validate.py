"""Benchmark: `palisade validate` on a generated repository of 1,000 policies and 200 rules.

Two figures, each the median and slowest of 5 runs:
- cold: the real command line in a fresh process, as a CI job runs it (interpreter
  start and imports included) — the figure the < 3 s target is about;
- warm: `validate()` again in one process, where unchanged files come from the
  parse cache (what the reconciler pays per commit).
The baseline, measured in the same run, is parsing alone (the YAML load every
validator pays). Writes bench/results/validate.json.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _genrepo import generate  # noqa: E402

from reconciler.checks.validate import validate  # noqa: E402
from reconciler.repository import source  # noqa: E402

POLICIES, RULES, RUNS = 1000, 200, 5
PALISADE = ROOT / ".venv" / "bin" / "palisade"


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cli(repo: Path) -> None:
    r = subprocess.run([str(PALISADE), "validate", "--repo", str(repo)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"palisade validate failed ({r.returncode}):\n{r.stdout[:2000]}{r.stderr[:2000]}")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        generate(repo, POLICIES, RULES, commit=False)
        parse = [_time(lambda: source.parse(source.from_worktree(repo))) for _ in range(RUNS)]
        cold = [_time(lambda: _cli(repo)) for _ in range(RUNS)]
        warm = [_time(lambda: validate(repo)) for _ in range(RUNS + 1)][1:]
    base = statistics.median(parse)
    figures = {}
    for name, runs in (("cold", cold), ("warm", warm)):
        med, worst = statistics.median(runs), max(runs)
        figures[name] = {"median_s": med, "max_s": worst, "ratio_vs_parse": med / base}
        print(f"validate {name}: {POLICIES} policies + {RULES} rules: median {med:.2f} s, slowest {worst:.2f} s, "
              f"{med / base:.2f}x parse-only")
    print(f"parse-only baseline: median {base:.2f} s; target (cold) < 3 s: "
          f"{'met' if figures['cold']['median_s'] < 3 else 'MISSED'}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate.json").write_text(json.dumps(
        {"policies": POLICIES, "rules": RULES, "parse_median_s": base, **figures, "target_s": 3.0}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

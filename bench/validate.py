"""Benchmark: `palisade validate` on a generated repository of 1,000 policies and 200 rules.

Prints the wall time (median of 5 runs, and the slowest), and the ratio against
parsing alone (the YAML load every validator pays), measured in this process.
Target: under 3 s. Writes bench/results/validate.json.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler import source  # noqa: E402
from reconciler.validate import validate  # noqa: E402

PACKS, POLICIES_PER_PACK, RULES = 50, 20, 200
TEMPLATES = ["block-execve-tmp", "kill-ptrace-attach", "block-memfd-create", "block-unshare",
             "block-chmod-suid", "block-mount-syscall", "block-pivot-root", "block-bpf-load"]

_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  tracepoints:
    - subsystem: syscalls
      event: sys_enter_{event}
      args:
        - index: 5
          type: int
      selectors:
        - matchArgs:
            - index: 5
              operator: Equal
              values: ["{value}"]
          matchBinaries:
            - operator: NotIn
              values: [/usr/bin/app{value}, /usr/sbin/daemon{value}]
          matchActions:
            - action: Sigkill
"""


def generate(root: Path) -> None:
    shutil.copytree(ROOT / "example-repo", root)
    events = ["setuid", "setgid", "unshare", "ptrace", "bpf"]
    for p in range(PACKS):
        pack = root / "packs" / f"gen-pack-{p:03d}"
        pack.mkdir(parents=True)
        (pack / "pack.yaml").write_text(
            f"apiVersion: palisade.dev/v1\nkind: Pack\nmetadata:\n  name: gen-pack-{p:03d}\nspec:\n"
            f"  description: generated\n  owners: [bench@example.com]\n  enforcementCapable: true\n")
        for i in range(POLICIES_PER_PACK):
            n = p * POLICIES_PER_PACK + i
            (pack / f"policy-{i:02d}.yaml").write_text(
                _POLICY.format(name=f"gen-policy-{n:04d}", event=events[n % len(events)], value=n))
        (root / "enforcement" / f"gen-pack-{p:03d}.yaml").write_text(
            f"apiVersion: palisade.dev/v1\nkind: Enforcement\nmetadata:\n  name: gen-pack-{p:03d}\nspec:\n"
            f"  pack: gen-pack-{p:03d}\n  assignments:\n    - scope: {{group: web}}\n      state: observe\n")
    for r in range(RULES):
        (root / "rules" / f"gen-rule-{r:03d}.yaml").write_text(
            f"apiVersion: palisade.dev/v1\nkind: Rule\nmetadata:\n  name: gen-rule-{r:03d}\nspec:\n"
            f"  template: {TEMPLATES[r % len(TEMPLATES)]}\n  scope: {{group: db}}\n  state: observe\n"
            f"  exceptions:\n    - binary: /usr/bin/tool{r}\n      reason: generated\n")


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        generate(repo)
        report = validate(repo)
        errors = [f for f in report.findings if f.severity == "error"]
        if errors:
            print("generated repository does not validate:", *[f.text() for f in errors[:5]], sep="\n")
            return 1
        runs = [_time(lambda: validate(repo)) for _ in range(5)]
        parse = [_time(lambda: source.parse(source.from_worktree(repo))) for _ in range(5)]
    med, worst, base = statistics.median(runs), max(runs), statistics.median(parse)
    policies = PACKS * POLICIES_PER_PACK
    print(f"validate: {policies} policies + {RULES} rules: median {med:.2f} s, slowest {worst:.2f} s "
          f"(target < 3 s: {'met' if med < 3 else 'MISSED'})")
    print(f"  parse-only baseline {base:.2f} s; validate / parse = {med / base:.2f}x")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate.json").write_text(json.dumps(
        {"policies": policies, "rules": RULES, "median_s": med, "max_s": worst, "parse_median_s": base,
         "ratio_vs_parse": med / base, "target_s": 3.0}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generated policy repositories for the benchmarks: example-repo/ plus N TracingPolicies and M rules."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PER_PACK = 20
_EVENTS = ["setuid", "setgid", "unshare", "ptrace", "bpf"]
_TEMPLATES = ["block-execve-tmp", "kill-ptrace-attach", "block-memfd-create", "block-unshare",
              "block-chmod-suid", "block-mount-syscall", "block-pivot-root", "block-bpf-load"]
POLICY = """apiVersion: cilium.io/v1alpha1
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
            - index: 0
              operator: Equal
              values: ["{value}"]
          matchBinaries:
            - operator: NotIn
              values: [/usr/bin/app{value}, /usr/sbin/daemon{value}]
          matchActions:
            - action: Sigkill
"""


def git(repo: Path, *args: str) -> str:
    """git isolated from the machine's configuration, as a bench user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
                "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com"})
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def generate(root: Path, policies: int, rules: int = 0, *, commit: bool = True) -> None:
    """example-repo/ plus `policies` TracingPolicies in packs of 20 (each pack at observe for group web)
    and `rules` template rules (observe, group db); committed as one commit on `main` unless told not to."""
    shutil.copytree(ROOT / "example-repo", root)
    n = 0
    for p in range(max(1, (policies + PER_PACK - 1) // PER_PACK)):
        name = f"gen-pack-{p:03d}"
        pack = root / "packs" / name
        pack.mkdir(parents=True)
        (pack / "pack.yaml").write_text(
            f"apiVersion: palisade.dev/v1\nkind: Pack\nmetadata:\n  name: {name}\nspec:\n"
            f"  description: generated\n  owners: [bench@example.com]\n  enforcementCapable: true\n")
        for i in range(min(PER_PACK, policies - n)):
            (pack / f"policy-{i:02d}.yaml").write_text(
                POLICY.format(name=f"gen-policy-{n:04d}", event=_EVENTS[n % len(_EVENTS)], value=n))
            n += 1
        (root / "enforcement" / f"{name}.yaml").write_text(
            f"apiVersion: palisade.dev/v1\nkind: Enforcement\nmetadata:\n  name: {name}\nspec:\n"
            f"  pack: {name}\n  assignments:\n    - scope: {{group: web}}\n      state: observe\n")
    for r in range(rules):
        (root / "rules" / f"gen-rule-{r:03d}.yaml").write_text(
            f"apiVersion: palisade.dev/v1\nkind: Rule\nmetadata:\n  name: gen-rule-{r:03d}\nspec:\n"
            f"  template: {_TEMPLATES[r % len(_TEMPLATES)]}\n  scope: {{group: db}}\n  state: observe\n"
            f"  exceptions:\n    - binary: /usr/bin/tool{r}\n      reason: generated\n")
    if commit:
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "generated")

"""The smallest palisade repository worth testing history on, as text builders over `gitrepo`.

One pack (`web-lockdown`, assigned to group `web`), one rule (`no-kmod`), two
groups, and a palisade.yaml listing reviewers whose keys the test holds. Line
numbers of the `state` nodes are fixed, so tests can assert where findings point.
(For the full example-repo/ with real keys, see `policyrepo.PolicyRepo`.)

    keys = {n: make_key(tmp_path / "keys", n) for n in ("alice", "bob")}
    repo = GitRepo.init(tmp_path / "policy")
    write_minimal(repo, [(ALICE, keys["alice"]), (BOB, keys["bob"])])
    repo.commit("initial policy", author=ALICE)
    repo.write(WEB_ENFORCEMENT, enforcement("enforce_ready"))
"""
from __future__ import annotations

from collections.abc import Sequence

from .gitrepo import GitRepo, Key, Person

#: Where the minimal repository keeps its pack's ladder states.
WEB_ENFORCEMENT = "enforcement/web-lockdown.yaml"

GROUPS = """\
apiVersion: palisade.dev/v1
kind: Group
metadata:
  name: web
spec:
  selector:
    matchLabels: {role: web}
---
apiVersion: palisade.dev/v1
kind: Group
metadata:
  name: canary
spec:
  sensors: [node-canary-1]
"""

PACK = """\
apiVersion: palisade.dev/v1
kind: Pack
metadata:
  name: web-lockdown
spec:
  description: Only the web server may run.
  owners: [web-team@example.com]
  enforcementCapable: true
"""

POLICY = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: web-exec
spec:
  tracepoints:
    - subsystem: sched
      event: sched_process_exec
"""


def palisade_yaml(reviewers: Sequence[tuple[Person, Key]], *, required: int = 1, window: str = "72h",
                  name: str = "test-policy", contributors: Sequence[tuple[Person, Key]] = ()) -> str:
    """A Repository document; `spec.reviewers` is on line 6."""
    lines = ["apiVersion: palisade.dev/v1", "kind: Repository", "metadata:", f"  name: {name}", "spec:",
             "  reviewers:"]
    for person, key in reviewers:
        lines += [f"    - name: {person.name}", f"      email: {person.email}", f"      key: {key.public}"]
    if contributors:
        lines.append("  contributors:")
        for person, key in contributors:
            lines += [f"    - name: {person.name}", f"      email: {person.email}", f"      key: {key.public}"]
    lines += ["  approvals:", f"    required: {required}", f"  minObservation: {window}"]
    return "\n".join(lines) + "\n"


def enforcement(state: str, *, canary: str | None = None) -> str:
    """web-lockdown's Enforcement: group web at `state` (its `state` node is line 9, column 14),
    and group canary at `canary` when given."""
    text = (
        "apiVersion: palisade.dev/v1\nkind: Enforcement\nmetadata:\n  name: web-lockdown\nspec:\n"
        "  pack: web-lockdown\n  assignments:\n"
        f"    - scope: {{group: web}}\n      state: {state}\n"
    )
    if canary is not None:
        text += f"    - scope: {{group: canary}}\n      state: {canary}\n"
    return text


def rule(name: str, state: str, *, template: str = "block-kmod-load", scope: str = "{}") -> str:
    """A Rule from a built-in template (its `state` node is line 8)."""
    return (
        f"apiVersion: palisade.dev/v1\nkind: Rule\nmetadata:\n  name: {name}\nspec:\n"
        f"  template: {template}\n  scope: {scope}\n  state: {state}\n"
    )


def write_minimal(repo: GitRepo, reviewers: Sequence[tuple[Person, Key]], *, required: int = 1,
                  window: str = "72h", contributors: Sequence[tuple[Person, Key]] = ()) -> None:
    """Stage the minimal repository: pack web-lockdown @ group web and rule no-kmod, both at observe."""
    repo.write("palisade.yaml", palisade_yaml(reviewers, required=required, window=window,
                                              contributors=contributors))
    repo.write("scopes/groups.yaml", GROUPS)
    repo.write("packs/web-lockdown/pack.yaml", PACK)
    repo.write("packs/web-lockdown/exec.yaml", POLICY)
    repo.write(WEB_ENFORCEMENT, enforcement("observe"))
    repo.write("rules/no-kmod.yaml", rule("no-kmod", "observe"))


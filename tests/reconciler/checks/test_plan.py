"""`plan.diff` and `relaxing.classify` on real revisions of the example repository, edited as people edit it."""
from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path

import pytest

from reconciler.checks import plan
from reconciler.checks.ladder import MoveKind
from reconciler.checks.relaxing import Classification, classify
from reconciler.repository import loader, render, source
from reconciler.repository.model import UnitKey
from wire.bundle import BundlePolicy, Origin
from wire.values import Scope, State

TODAY = _dt.date(2026, 6, 1)
EXAMPLE = Path(__file__).resolve().parents[3] / "example-repo"
WEB = Scope(group="web")


def revision(root: Path) -> plan.Revision:
    loaded = loader.load(source.from_worktree(root), TODAY)
    assert not [f for f in loaded.findings if f.severity == "error"], loaded.findings
    return plan.Revision(loaded.repository, render.render(loaded.repository, TODAY))


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(EXAMPLE, dst)
    return dst


def edit(root: Path, rel: str, old: str, new: str) -> None:
    p = root / rel
    text = p.read_text()
    assert old in text, (old, rel)
    p.write_text(text.replace(old, new, 1))


def diff_after(root: Path, *edits: tuple[str, str, str]) -> plan.Plan:
    base = revision(root)
    for e in edits:
        edit(root, *e)
    return plan.diff(base, revision(root))


def unit(p: plan.Plan, kind: str, name: str, scope: Scope) -> plan.UnitChange:
    return next(u for u in p.units if u.unit == UnitKey(kind, name, scope))


NEW_RULE = """---
apiVersion: palisade.dev/v1
kind: Rule
metadata:
  name: no-bpf
spec:
  template: block-bpf-load
  scope: {group: web}
  state: observe
"""


def test_no_change_is_no_plan(repo: Path) -> None:
    p = plan.diff(revision(repo), revision(repo))
    assert not p.changed and p.units == ()
    assert p.classification == Classification(True, ["no policy changes"])
    assert not p.stages.fast_tracked


def test_new_rule_at_observe_is_added_and_tightening(repo: Path) -> None:
    p = diff_after(repo, ("rules/kernel-hardening.yaml", "reason: operators ping from database hosts\n",
                          "reason: operators ping from database hosts\n" + NEW_RULE))
    u = unit(p, "rule", "no-bpf", WEB)
    assert u.move.kind is MoveKind.NEW and u.move.after is State.OBSERVE
    (pol,) = u.policies
    assert pol.change is plan.Change.ADDED and pol.after is State.OBSERVE
    assert pol.diff.startswith("--- /dev/null\n+++ b/no-bpf\n") and "+  name: no-bpf" in pol.diff
    assert not p.classification.relaxing
    assert p.classification.reasons == ["no-bpf @ group:web added (observe)"]
    assert p.stages.stages == ("canary", "web", "fleet") and not p.stages.fast_tracked


def test_removed_assignment_is_relaxing_and_fast_tracked(repo: Path) -> None:
    p = diff_after(repo, ("enforcement/egress-guard.yaml",
                          "    - scope: {sensor: db-legacy-7}\n      state: enforce_ready\n", ""))
    u = unit(p, "pack", "egress-guard", Scope(sensor="db-legacy-7"))
    assert u.move.kind is MoveKind.REMOVED
    assert [(x.name, x.change) for x in u.policies] == [("egress-allowed-networks", plan.Change.REMOVED)]
    assert p.classification.relaxing
    assert p.classification.reasons == ["egress-allowed-networks @ sensor:db-legacy-7 removed"]
    assert p.stages.fast_tracked and "fast-tracked" in p.stages.describe()


def test_changed_policy_carries_a_unified_diff_per_scope(repo: Path) -> None:
    p = diff_after(repo, ("packs/web-lockdown/allowlist.yaml", "                - /usr/bin/python3\n", ""))
    assert {u.unit.scope for u in p.units} == {Scope(group="canary"), WEB}
    for u in p.units:
        assert u.move.kind is MoveKind.UNCHANGED
        (pol,) = u.policies
        assert pol.change is plan.Change.CHANGED
        assert "\n-        - /usr/bin/python3\n" in pol.diff
        assert pol.diff.startswith("--- a/web-exec-allowlist\n+++ b/web-exec-allowlist\n@@")
    # taking a binary off an exec allowlist kills more: tightening
    assert not p.classification.relaxing
    assert "web-exec-allowlist @ group:web: policy definition changed" in p.classification.reasons


def test_allowlist_widened_is_relaxing(repo: Path) -> None:
    p = diff_after(repo, ("packs/web-lockdown/allowlist.yaml", "                - /usr/bin/python3\n",
                          "                - /usr/bin/python3\n                - /usr/bin/curl\n"))
    assert p.classification.relaxing, p.classification
    assert all("narrowed" in r for r in p.classification.reasons)


def test_ladder_forward_is_tightening(repo: Path) -> None:
    p = diff_after(repo, ("enforcement/web-lockdown.yaml", "state: enforce_ready", "state: enforced"))
    (u,) = p.units
    assert (u.move.kind, u.move.before, u.move.after) == (MoveKind.FORWARD, State.ENFORCE_READY, State.ENFORCED)
    assert [(x.change, x.diff) for x in u.policies] == [(plan.Change.STATE, "")]
    assert p.classification == Classification(False, ["web-exec-allowlist @ group:web: enforce_ready → enforced"])


def test_ladder_back_is_relaxing(repo: Path) -> None:
    p = diff_after(repo, ("rules/kernel-hardening.yaml", "state: enforced", "state: observe"))
    (u,) = p.units
    assert u.move.kind is MoveKind.BACK
    assert p.classification == Classification(True, ["no-kernel-modules @ fleet: enforced → observe"])
    assert p.stages.fast_tracked


def test_exception_added_is_relaxing(repo: Path) -> None:
    p = diff_after(repo, ("rules/kernel-hardening.yaml", '      expires: "2027-03-31"\n',
                          '      expires: "2027-03-31"\n    - binary: /usr/bin/strace\n      reason: debugging\n'))
    (u,) = p.units
    assert u.unit == UnitKey("rule", "no-ptrace-attach", WEB) and u.move.kind is MoveKind.UNCHANGED
    assert "+        - /usr/bin/strace" in u.policies[0].diff
    assert p.classification == Classification(True, ["no-ptrace-attach @ group:web: exception added"])


def test_exception_removed_is_tightening(repo: Path) -> None:
    ping = "  exceptions:\n    - binary: /usr/bin/ping\n      reason: operators ping from database hosts\n"
    p = diff_after(repo, ("rules/kernel-hardening.yaml", ping, ""))
    assert not p.classification.relaxing


def test_rule_disabled_is_relaxing(repo: Path) -> None:
    p = diff_after(repo, ("rules/kernel-hardening.yaml", "  template: block-kmod-load\n",
                          "  template: block-kmod-load\n  enabled: false\n"))
    (u,) = p.units
    assert u.disabled and u.move.kind is MoveKind.REMOVED and u.to_json()["move"] == "disabled"
    assert p.classification == Classification(True, ["no-kernel-modules @ fleet removed"])


def test_removal_that_falls_back_to_a_stricter_scope_is_tightening(repo: Path) -> None:
    # web nodes observe web-lockdown at group:web; with a fleet-wide enforced assignment, removing the
    # group assignment hands those nodes the enforced one
    edit(repo, "enforcement/web-lockdown.yaml", "  assignments:\n",
         "  assignments:\n    - scope: {}\n      state: enforced\n")
    p = diff_after(repo, ("enforcement/web-lockdown.yaml", "    - scope: {group: web}\n      state: enforce_ready\n",
                          ""))
    assert not p.classification.relaxing
    assert "fall back to web-exec-allowlist @ fleet (enforced)" in p.classification.reasons[0]


def test_group_change_is_tightening(repo: Path) -> None:
    p = diff_after(repo, ("scopes/groups.yaml", "      role: web\n", "      role: frontend\n"))
    assert p.changed and p.units == ()
    assert any("group web changed" in n for n in p.notes)
    assert not p.classification.relaxing


def test_classify_on_bundle_policies() -> None:
    doc = (EXAMPLE / "packs/web-lockdown/allowlist.yaml").read_text()
    widened = doc.replace("- /usr/bin/python3\n", "- /usr/bin/python3\n                - /usr/bin/curl\n")
    origin = Origin("pack", "web-lockdown")
    before = [BundlePolicy.of("web-exec-allowlist", origin, WEB, State.ENFORCED, doc)]
    assert classify(before, [BundlePolicy.of("web-exec-allowlist", origin, WEB, State.OBSERVE, doc)]).relaxing
    assert classify(before, [BundlePolicy.of("web-exec-allowlist", origin, WEB, State.ENFORCED, widened)]).relaxing
    assert not classify(before, [*before, BundlePolicy.of("x", origin, Scope(), State.OBSERVE, doc)]).relaxing
    assert classify(before, []).relaxing


def test_narrowing_an_earlier_selector_is_not_relaxing() -> None:
    # Tetragon applies the first matching selector: narrowing the first one sends its events to the Sigkill
    before = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: p}
spec:
  tracepoints:
    - subsystem: syscalls
      event: sys_enter_execve
      selectors:
        - matchBinaries: [{operator: In, values: [/bin/a, /bin/b]}]
          matchActions: [{action: Post}]
        - matchActions: [{action: Sigkill}]
"""
    after = before.replace("[/bin/a, /bin/b]", "[/bin/a]")
    origin = Origin("rule", "p")
    b = [BundlePolicy.of("p", origin, Scope(), State.ENFORCED, before)]
    a = [BundlePolicy.of("p", origin, Scope(), State.ENFORCED, after)]
    assert not classify(b, a).relaxing
    # the same edit in the last selector only matches less
    last = before.replace("        - matchActions: [{action: Sigkill}]\n", "")
    last = last.replace("[{action: Post}]", "[{action: Sigkill}]")
    assert classify([BundlePolicy.of("p", origin, Scope(), State.ENFORCED, last)],
                         [BundlePolicy.of("p", origin, Scope(), State.ENFORCED,
                                          last.replace("[/bin/a, /bin/b]", "[/bin/a]"))]).relaxing


def test_per_sensor_resolves_scopes_with_labels(repo: Path) -> None:
    base = revision(repo)
    edit(repo, "enforcement/web-lockdown.yaml", "state: enforce_ready", "state: enforced")
    head = revision(repo)
    sensors = [plan.Sensor("web-1", (("role", "web"),)), plan.Sensor("db-1", (("role", "db"),)),
               plan.Sensor("node-canary-1", (("role", "web"),))]
    changes = {c.sensor.id: c for c in plan.per_sensor(base, head, sensors)}
    assert set(changes) == {"web-1", "node-canary-1"}  # db-1 is not affected
    assert changes["web-1"].stage == "web"
    assert [p.describe() for p in changes["web-1"].policies] == ["web-exec-allowlist: enforce_ready → enforced"]
    # the canary node is in both groups; between groups the least enforcing state applied (enforce_ready)
    assert changes["node-canary-1"].stage == "canary"
    assert [p.describe() for p in changes["node-canary-1"].policies] == [
        "web-exec-allowlist: enforce_ready → enforced"]


def test_defining_a_group_that_policies_name_is_tightening() -> None:
    from wire.bundle import BundleGroup

    doc = (EXAMPLE / "packs/web-lockdown/allowlist.yaml").read_text()
    pols = [BundlePolicy.of("web-exec-allowlist", Origin("pack", "web-lockdown"), WEB, State.ENFORCED, doc)]
    web = BundleGroup("web", (), (("role", "web"),))
    assert classify(pols, pols, before_groups=[web], after_groups=[web]).relaxing
    c = classify(pols, pols, before_groups=[], after_groups=[web])
    assert not c.relaxing and c.reasons == ["group web defined: policies scoped to it now apply to its sensors"]

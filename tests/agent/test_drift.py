"""Drift between the loads and the selection (pure), and the heal through the agent."""
from __future__ import annotations

import asyncio
from pathlib import Path

from agent_support import Served, make_agent

from agent.apply import Loaded
from agent.drift import HEALABLE, DriftKind, compare
from agent.select import Desired
from wire.bundle import Origin
from wire.values import Scope, State


def _d(name: str, sha: str, state: State = State.OBSERVE) -> Desired:
    return Desired(name, Origin("pack", "x"), Scope(), state, "y", sha, 3, "c" * 40)


def test_compare_names_missing_extra_and_other_versions() -> None:
    loaded = [Loaded("a#1", "a", "aaaa", State.OBSERVE), Loaded("b#1", "b", "bbbb", State.OBSERVE),
              Loaded("z#1", "z", "zzzz", State.OBSERVE)]
    desired = [_d("a", "aaaa" * 16), _d("b", "cccc" * 16), _d("c", "dddd" * 16), _d("r", "eeee" * 16)]
    kinds = {(f.kind, f.policy) for f in compare(loaded, desired, frozenset({"r"}))}
    assert kinds == {("version", "b"), ("missing", "c"), ("extra", "z")}
    assert {k for k, _ in kinds} == {DriftKind.VERSION, DriftKind.MISSING, DriftKind.EXTRA}


def test_the_agent_heals_what_was_removed_or_added_behind_its_back(served: Served, tmp_path: Path) -> None:
    async def run() -> None:
        agent = make_agent(served.url, served, tmp_path / "a")
        await agent.sync_once()
        enforcer = agent.enforcer
        victim = next(x for x in enforcer.loaded() if x.name == "web-exec-allowlist")
        enforcer.unload(victim.handle)
        enforcer.load(_intruder())
        report = agent.check_drift()
        assert {(f.kind, f.policy) for f in report.found} == {("missing", "web-exec-allowlist"),
                                                              ("extra", "intruder")}
        assert report.unhealed == ()
        assert agent.applied is not None
        assert {x.name for x in enforcer.loaded()} == {d.name for d in agent.applied.desired}
        assert agent.counters.drift_detected == 2 and agent.counters.drift_healed == 2
        assert agent.check_drift().found == ()
        await agent.client.aclose()

    asyncio.run(run())


def _intruder() -> Desired:
    from wire.bundle import sha256_hex

    text = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: intruder\nspec: {}\n"
    return Desired("intruder", Origin("pack", "evil"), Scope(), State.OBSERVE, text, sha256_hex(text.encode()), 1,
                   "c" * 40)


def test_every_kind_but_a_foreign_program_is_healable() -> None:
    assert set(DriftKind) - HEALABLE == {DriftKind.FOREIGN}
    assert {str(k) for k in HEALABLE} == {"detached", "unloaded", "map_changed", "missing", "extra", "version"}

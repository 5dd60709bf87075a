"""`palisade serve --notify` end to end: a real policy repository, the real command in a subprocess, real
heartbeats, a real loopback receiver that is down, then slow, then up — and a SIGKILL in between.

What happens, in order: a tightening commit (v2) goes to the canary; the canary's one heartbeat reports
a refused policy and unhealed drift, so the controller halts the rollout and rolls it back; the agent then
stays silent past --agent-timeout; a broken policy is committed. Every one of these is queued while
the receiver is down, the server is killed with SIGKILL, started again while the receiver is slow, and
the receiver then gets each notification exactly once, in order, per target.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.keys import generate
from reconciler.notify.outbox import Outbox, Outcome
from support.policyrepo import PolicyRepo
from support.serve import Serve, heartbeat
from support.webhook import Receiver, wait_for

ROOT = Path(__file__).resolve().parents[3]
TIGHTEN = [("enforcement/web-lockdown.yaml", "state: enforce_ready", "state: enforced")]
BROKEN = [("enforcement/web-lockdown.yaml", "state: enforced", "state: enforcd")]
AGENT_TIMEOUT = "2s"
ORDER = ["drift-unhealed", "policy-refused", "rollout-halted", "rollout-rolled-back", "agent-stale",
         "commit-rejected"]
CHAT = ["rollout-halted", "rollout-rolled-back", "commit-rejected"]

pytestmark = pytest.mark.slow


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


def _status(url: str) -> dict:  # type: ignore[type-arg]
    doc: dict = httpx.get(f"{url}/v1/status", timeout=10).json()  # type: ignore[type-arg]
    return doc


def _pending(state: Path) -> dict[str, int]:
    if not (state / "notify.db").is_file():
        return {}
    with Outbox.open(state, readonly=True) as outbox:
        return outbox.pending()


def _kinds(state: Path, target: str) -> list[str]:
    """The kinds of `target`'s queued notifications, oldest first (the first attempt of each)."""
    with Outbox.open(state, readonly=True) as outbox:
        rows = sorted(outbox.deliveries(target=target), key=lambda d: d.id)
    seen: list[str] = []
    for d in rows:
        if d.event not in seen:
            seen.append(d.event)
    return [e.split(":")[0] for e in seen]


def test_every_notification_once_in_order_across_sigkill_down_slow_then_up(tmp_path: Path,
                                                                           receiver: Receiver) -> None:
    policy = PolicyRepo.create(tmp_path, min_observation="0s")
    kp = generate(tmp_path / "keys")
    state = tmp_path / "state"
    (tmp_path / "ops.url").write_text(f"{receiver.url}/ops\n")
    (tmp_path / "chat.url").write_text(f"{receiver.url}/chat\n")
    config = tmp_path / "notify.yaml"
    config.write_text(f"""\
apiVersion: palisade.dev/v1
kind: Notifications
spec:
  backoff: {{initial: 0.2s, max: 1s}}
  commitUrl: "https://git.example.com/policy/commit/{{commit}}"
  targets:
  - {{name: ops, kind: generic, urlFile: ops.url, timeout: 0.5s}}
  - {{name: chat, kind: slack, urlFile: chat.url, timeout: 0.5s, events: [{", ".join(CHAT)}]}}
""")
    args = ("--notify", str(config), "--agent-timeout", AGENT_TIMEOUT)
    serve = Serve(policy.path, state, kp.signing_key_path, *args)
    try:
        wait_for(lambda: (_status(serve.url).get("lastAccepted") or {}).get("version") == 1, 60, "v1 published")

        # v2 tightens: pinned to the canary only; the canary's heartbeat fails its gates.
        policy.change("enforce web-lockdown", TIGHTEN, signer="alice", wait_days=4)
        wait_for(lambda: (_status(serve.url).get("lastAccepted") or {}).get("version") == 2, 30, "v2 published")
        wait_for(lambda: _status(serve.url)["rollout"].get("target") == 2, 10, "the rollout of v2 started")
        heartbeat(serve.url, "node-canary-1", version=2, stage="canary",
                  policies=[{"name": "web-lockdown-exec", "status": "refused", "reason": "kprobes unavailable"}],
                  drift={"detected": 1, "healed": 0, "unhealed": 1,
                         "findings": [{"kind": "detached", "policy": "web-lockdown-exec", "detail": "link gone"}]})
        wait_for(lambda: _pending(state).get("chat", 0) >= 2, 15, "the halt and the rollback queued")
        wait_for(lambda: _pending(state).get("ops", 0) >= 5, 15, "the agent going stale queued")
        policy.change("typo", BROKEN, signer="alice")
        wait_for(lambda: _pending(state) == {"ops": 6, "chat": 3}, 15, "the rejected commit queued")
        wait_for(lambda: sum(1 for _ in _kinds(state, "ops")) >= 1, 10, "an attempt on the closed port")
        assert receiver.received == []

        serve.kill()  # SIGKILL with all of it queued
        assert receiver.url not in serve.log  # the URL is a secret: never logged
        assert _pending(state) == {"ops": 6, "chat": 3}
        with Outbox.open(state, readonly=True) as outbox:
            assert {d.outcome for d in outbox.deliveries()} == {Outcome.UNREACHABLE}

        receiver.slow(3.0)
        serve = Serve(policy.path, state, kp.signing_key_path, *args)
        receiver.wait_count(2, 15, which="late")
        receiver.up()
        got = receiver.wait_count(9, 30)
        time.sleep(1.0)  # room for a duplicate to show up, if one were sent
        assert len(receiver.received) == 9

        ops = [r for r in got if r.path == "/hook/ops"]
        chat = [r for r in got if r.path == "/hook/chat"]
        assert [r.json["kind"] for r in ops] == ORDER  # each exactly once, in the order it happened
        assert [r.event_id.split(":")[0] for r in chat] == CHAT
        assert len({r.event_id for r in ops}) == 6 and len({r.event_id for r in chat}) == 3
        assert {r.event_id for r in receiver.late} <= {r.event_id for r in got}  # the timed-out ones came again

        by_kind = {r.json["kind"]: r.json for r in ops}
        rejected = by_kind["commit-rejected"]
        assert any(f["file"] == "enforcement/web-lockdown.yaml" and f["line"] > 0
                   for f in rejected["details"]["findings"]), rejected
        assert rejected["details"]["commit"] == policy.git.head()
        assert rejected["links"] == [{"title": "commit",
                                      "url": f"https://git.example.com/policy/commit/{policy.git.head()}"}]
        assert by_kind["rollout-halted"]["details"]["stage"] == "canary"
        assert by_kind["rollout-halted"]["details"]["version"] == "v2"
        assert by_kind["rollout-rolled-back"]["details"]["to"] == 1
        refused = by_kind["policy-refused"]["details"]
        assert (refused["sensor"], refused["policy"], refused["reason"]) == (
            "node-canary-1", "web-lockdown-exec", "kprobes unavailable")
        assert by_kind["drift-unhealed"]["details"]["unhealed"] == 1
        assert by_kind["agent-stale"]["details"]["sensor"] == "node-canary-1"
        assert set(chat[0].json) == {"text", "blocks"}
        assert f"<https://git.example.com/policy/commit/{policy.git.head()}|commit>" in json.dumps(chat[2].json)
        wait_for(lambda: _pending(state) == {}, 10, "the outbox drained")

        # Each attempt is in the record `palisade ledger --notifications` shows.
        out = subprocess.run([sys.executable, "-m", "reconciler.cli", "ledger", "--state", str(state),
                              "--notifications", "-o", "json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        delivered = [d for d in doc["deliveries"] if d["outcome"] == "delivered"]
        assert len(delivered) == 9 and {d["status"] for d in delivered} == {200}
        assert {d["outcome"] for d in doc["deliveries"]} >= {"delivered", "unreachable", "timeout"}
        text = subprocess.run([sys.executable, "-m", "reconciler.cli", "ledger", "--state", str(state),
                               "--notifications"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert text.returncode == 0 and "delivered" in text.stdout and receiver.url not in text.stdout

        metrics = httpx.get(f"{serve.url}/metrics", timeout=10).text
        assert 'palisade_notifications_total{outcome="delivered",target="ops"} 6.0' in metrics
        assert 'palisade_notifications_total{outcome="delivered",target="chat"} 3.0' in metrics
        assert 'palisade_notification_queue{target="ops"} 0.0' in metrics
        assert receiver.url not in serve.log
    finally:
        code = serve.stop()
    assert code == 0, serve.log
    assert "Traceback" not in serve.log, serve.log


def test_a_standby_notifies_nothing_until_it_leads_then_delivers_what_the_dead_leader_queued(
        tmp_path: Path, receiver: Receiver) -> None:
    policy = PolicyRepo.create(tmp_path, min_observation="0s")
    kp = generate(tmp_path / "keys")
    state = tmp_path / "state"
    (tmp_path / "ops.url").write_text(f"{receiver.url}/ops\n")
    config = tmp_path / "notify.yaml"
    config.write_text("apiVersion: palisade.dev/v1\nkind: Notifications\nspec:\n"
                      "  backoff: {initial: 0.2s, max: 1s}\n"
                      "  targets: [{name: ops, kind: generic, urlFile: ops.url, timeout: 0.5s}]\n")
    args = ("--notify", str(config), "--agent-timeout", AGENT_TIMEOUT, "--leader-elect")
    receiver.up()
    leader = Serve(policy.path, state, kp.signing_key_path, *args)
    standby = Serve(policy.path, state, kp.signing_key_path, *args)
    try:
        wait_for(lambda: _status(standby.url).get("role") == "standby", 30, "the second server stands by")
        wait_for(lambda: (_status(leader.url).get("lastAccepted") or {}).get("version") == 1, 60, "v1 published")
        bad = policy.change("typo", [("enforcement/web-lockdown.yaml", "state: enforce_ready", "state: enforce_redy")])
        (first,) = receiver.wait_count(1, 15)
        assert first.json["kind"] == "commit-rejected" and first.json["details"]["commit"] == bad

        receiver.down()
        heartbeat(standby.url, "node-1")  # a standby stores heartbeats too; the leader notices the silence
        wait_for(lambda: _pending(state) == {"ops": 1}, 15, "the stale agent queued by the leader")
        leader.kill()
        receiver.up()
        got = receiver.wait_count(2, 30)  # the standby took the lock, then the queue
        time.sleep(1.0)
        assert [r.json["kind"] for r in receiver.received] == ["commit-rejected", "agent-stale"]
        assert got[1].json["details"]["sensor"] == "node-1"
        assert _status(standby.url)["role"] == "leader"
    finally:
        if leader.proc.poll() is None:
            leader.stop()
        code = standby.stop()
    assert code == 0, standby.log
    assert "Traceback" not in standby.log + leader.log, standby.log + leader.log

"""Post's `rateLimit` and `rateLimitScope`, as Tetragon's: the same hook and selector, by the same thread
(or process, or anyone), with the same arguments, is posted once per window; actions are not limited."""
from __future__ import annotations

import signal
import sys
from typing import Any

import pytest
from engine_support import Workload, policy, wait_events

from bpf.engine import Engine
from bpf.policy import TracingPolicy

pytestmark = pytest.mark.kernel

PY = sys.executable
#: getpriority(PRIO_PROCESS, who): an integer argument to tell calls apart.
CALLS = """
import ctypes, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def calls(who, n):
    for _ in range(n):
        libc.getpriority(0, who)
for who in sys.argv[1].split(','):
    calls(int(who), 20)
if len(sys.argv) > 2:  # threads of this process, each making the same calls
    ts = [threading.Thread(target=calls, args=(0, 20)) for _ in range(int(sys.argv[2]))]
    [t.start() for t in ts]
    [t.join() for t in ts]
print('ran')
"""


def _limited(limit: str, scope: str | None = None, action: dict[str, Any] | None = None) -> TracingPolicy:
    post: dict[str, Any] = {"action": "Post", "rateLimit": limit}
    if scope:
        post["rateLimitScope"] = scope
    return policy("rate-limited", {"kprobes": [{
        "call": "sys_getpriority", "syscall": True,
        "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "int"}],
        "selectors": [{"matchActions": [post, *([action] if action else [])]}]}]})


def _events(engine: Engine, expect: int) -> list[dict[str, Any]]:
    """The getpriority events: polled until `expect` came, then half a second more, to see any extra one
    (unlimited, these runs would post 20 to 80)."""
    seen: list[dict[str, Any]] = []

    def enough(ev: dict[str, Any]) -> bool:
        if "process_kprobe" in ev:
            seen.append(ev["process_kprobe"])
        return len(seen) >= expect

    wait_events(engine, enough, timeout=5)
    seen += [ev["process_kprobe"] for ev in wait_events(engine, lambda ev: False, timeout=0.5)
             if "process_kprobe" in ev]
    return seen


def _run(workload: Workload, *args: str) -> None:
    done = workload.run([PY, "-c", CALLS, *args])
    assert done.stdout == b"ran\n", done.stderr


def test_one_event_per_thread_and_arguments_in_the_window(engine: Engine, workload: Workload) -> None:
    assert engine.load(_limited("1m"), "observe", cgroups=[workload.path]).loaded
    _run(workload, "0,1")  # 20 calls with who=0, 20 with who=1: two argument sets
    _run(workload, "0")  # another process (another thread): its own event
    events = _events(engine, 3)
    assert sorted((e["process"]["pid"], e["args"][1]["int_arg"]) for e in events) == sorted(
        {(e["process"]["pid"], e["args"][1]["int_arg"]) for e in events})  # no repeats
    assert len(events) == 3
    assert len({e["process"]["pid"] for e in events}) == 2


@pytest.mark.parametrize(("scope", "expect"), [("thread", 4), ("process", 1)])
def test_the_scope_is_the_thread_or_the_process(engine: Engine, workload: Workload, scope: str,
                                                expect: int) -> None:
    assert engine.load(_limited("60", scope), "observe", cgroups=[workload.path]).loaded
    _run(workload, "0", "3")  # the main thread and three more, the same calls
    assert len(_events(engine, expect)) == expect


def test_global_scope_limits_every_process_together(engine: Engine, workload: Workload) -> None:
    assert engine.load(_limited("1h", "global"), "observe", cgroups=[workload.path]).loaded
    _run(workload, "0")
    _run(workload, "0")
    assert len(_events(engine, 1)) == 1


def test_the_same_call_is_posted_again_after_the_window(engine: Engine, workload: Workload) -> None:
    assert engine.load(_limited("1s", "global"), "observe", cgroups=[workload.path]).loaded
    _run(workload, "0")
    assert len(_events(engine, 1)) == 1
    # the window is a second, the smallest rateLimit says; wait it out on the kernel's clock
    done = workload.run([PY, "-c", "import time; time.sleep(1.1)\n" + CALLS, "0"])
    assert done.stdout == b"ran\n"
    assert len(_events(engine, 1)) == 1


def test_an_action_is_not_limited_only_its_event(engine: Engine, workload: Workload) -> None:
    assert engine.load(_limited("1h", "global", {"action": "Sigkill"}), "enforced", cgroups=[workload.path]).loaded
    for _ in range(2):
        done = workload.run([PY, "-c", CALLS, "0"])
        assert done.returncode == -signal.SIGKILL
    assert len(_events(engine, 1)) == 1


@pytest.mark.parametrize(("post", "reason"), [
    ({"action": "Post", "rateLimit": "5x"}, "rateLimit '5x': expected a time, in seconds or with s, m or h"),
    ({"action": "Post", "rateLimit": "5m", "rateLimitScope": "pod"},
     "rateLimitScope 'pod': expected thread, process or global"),
    ({"action": "Sigkill", "rateLimit": "5m"}, "rateLimit goes with a Post action"),
])
def test_a_malformed_rate_limit_is_refused(engine: Engine, workload: Workload, post: dict[str, Any],
                                           reason: str) -> None:
    doc = policy("rate-limited", {"kprobes": [{"call": "sys_getpriority", "syscall": True,
                                               "selectors": [{"matchActions": [post]}]}]})
    res = engine.load(doc, "observe", cgroups=[workload.path])
    assert not res.loaded
    assert any(reason in r for r in res.reasons), res.reasons

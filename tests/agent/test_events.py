"""The event log: JSON lines rotated by size, read back oldest first, and the compact form."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent.events import EventLog, compact, read_all

ROOT = Path(__file__).resolve().parents[2]

KILL = {"process_tracepoint": {"process": {"binary": "/bin/sh", "pod": {"namespace": "shop", "name": "web"}},
                               "subsys": "sched", "event": "sched_process_exec",
                               "policy_name": "web-exec-allowlist", "action": "KPROBE_ACTION_SIGKILL"},
        "node_name": "n1", "time": "2026-11-21T12:00:00Z", "palisade": {"mode": "enforced", "acted": True}}


def test_rotation_keeps_the_newest_files_and_reads_in_order(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=4096, keep=2)
    for i in range(200):
        log.write({"n": i, "pad": "x" * 50})
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    seen = [e["n"] for e in read_all(tmp_path)]
    assert seen == sorted(seen) and seen[-1] == 199  # oldest first, nothing out of order
    assert len(seen) < 200  # the oldest rotated away


def test_compact_lines() -> None:
    assert compact(KILL) == "💀 tracepoint shop/web /bin/sh sched:sched_process_exec sigkill [web-exec-allowlist]"
    dry = json.loads(json.dumps(KILL))
    dry["palisade"] = {"mode": "enforce_ready", "acted": False}
    assert "would sigkill" in compact(dry) and compact(dry).startswith("🔍")
    assert compact({"drift_healed": {"detail": "x detached"}, "node_name": "n1"}).startswith("🩹 drift_healed")


def test_events_command(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.write(KILL)
    log.write({"verification_refused": {"reason": "expired", "detail": "index expired"}, "node_name": "n1"})
    log.close()
    main = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", main, "events", "--state", str(tmp_path), "-o", "compact"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("💀")
    assert "⛔" in out.stdout.splitlines()[1]
    js = subprocess.run([sys.executable, "-c", main, "events", "--state", str(tmp_path), "-o", "json"],
                        capture_output=True, text=True, cwd=ROOT)
    assert json.loads(js.stdout.splitlines()[0])["process_tracepoint"]["action"] == "KPROBE_ACTION_SIGKILL"
    bad = subprocess.run([sys.executable, "-c", main, "events", "--state", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "not a directory" in bad.stderr and "Traceback" not in bad.stderr

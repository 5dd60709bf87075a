"""The event log: JSON lines rotated by size, read back oldest first, and the compact form."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
    # Tetragon's line, then what the policy did (Palisade's note)
    assert compact(KILL) == "⁉️ tracepoint shop/web /bin/sh sched sched_process_exec 💀 sigkill [web-exec-allowlist]"
    dry = json.loads(json.dumps(KILL))
    dry["palisade"] = {"mode": "enforce_ready", "acted": False}
    assert compact(dry).endswith("sched_process_exec would sigkill [web-exec-allowlist]")
    assert compact({"drift_healed": {"detail": "x detached"}, "node_name": "n1"}).startswith("🩹 drift_healed")


# --- `tetra getevents -o compact`, line for line ------------------------------------------------

CORPUS = ROOT.parent / "shared" / "tetragon-corpus" / "events"


def _sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((CORPUS / name).read_text())
    return doc


def _printed() -> list[str]:
    """The lines Tetragon's docs show `tetra getevents -o compact` printing."""
    return [line for line in (CORPUS / "compact_output_samples.txt").read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]


def _kprobe(fn: str, *args: dict[str, Any], proc: dict[str, Any] | None = None) -> dict[str, Any]:
    base = _sample("sample_process_exec.json")["process_exec"]["process"]
    return {"process_kprobe": {"process": proc or base, "function_name": fn, "args": list(args),
                               "action": "KPROBE_ACTION_POST"}, "node_name": "n1"}


def test_corpus_samples_print_as_tetragon_prints_them(corpus: Path) -> None:
    printed = _printed()
    curl = _sample("sample_process_exec.json")
    assert compact(curl) in printed  # 🚀 process default/xwing /usr/bin/curl https://ebpf.io/...
    killed = {"process_exit": {"process": curl["process_exec"]["process"], "signal": "SIGKILL"},
              "node_name": curl["node_name"]}
    assert compact(killed) in printed  # 💥 exit    default/xwing /usr/bin/curl ... SIGKILL
    status = {"process_exit": {"process": curl["process_exec"]["process"], "status": 60}}
    assert compact(status) in printed  # ... 60 (the status when no signal)
    assert compact(_sample("sample_process_kprobe.json")) in printed  # 📝 write   default/file-access /bin/vi ...
    sock = {"sock_arg": {"family": "AF_INET", "saddr": "10.32.0.28", "sport": 45200, "daddr": "104.198.14.52",
                         "dport": 443}}
    proc = curl["process_exec"]["process"]
    assert compact(_kprobe("tcp_connect", sock, proc=proc)) in printed  # 🔌 connect ... tcp a:p -> b:q
    cat = {**proc, "binary": "/bin/cat", "arguments": "/etc/shadow"}
    assert compact(_kprobe("__x64_sys_read", {"file_arg": {"path": "/etc/shadow"}}, proc=cat)) in printed
    lsm = {"process_lsm": {"process": {"binary": "/usr/bin/zsh"}, "function_name": "bprm_check_security"},
           "node_name": "user-nix"}
    assert compact(lsm) in printed  # 🔒 LSM     user-nix /usr/bin/zsh bprm_check_security


def test_loader_and_usdt_lines() -> None:
    # tetra's encoder: the build ID in hex before the path; a usdt's path, provider and name
    proc = {"binary": "/usr/bin/true", "arguments": ""}
    bid = base64.b64encode(bytes.fromhex("15dfff3239aa")).decode()
    loader = {"process_loader": {"process": proc, "path": "/usr/lib/libc.so.6", "buildid": bid}, "node_name": "n1"}
    assert compact(loader) == "🧬 loader  n1 /usr/bin/true 15dfff3239aa /usr/lib/libc.so.6"
    no_id = {"process_loader": {"process": proc, "path": "/tmp/blob.bin"}, "node_name": "n1"}
    assert compact(no_id) == "🧬 loader  n1 /usr/bin/true /tmp/blob.bin"
    usdt = {"process_usdt": {"process": proc, "path": "/usr/bin/app", "provider": "test", "name": "usdt3",
                             "args": [], "action": "KPROBE_ACTION_POST", "policy_name": "usdts"}, "node_name": "n1"}
    assert compact(usdt) == "🕵️ usdt    n1 /usr/bin/true /usr/bin/app test usdt3"


def test_exec_and_exit_lines(corpus: Path) -> None:
    exit_ok = _sample("sample_process_exit.json")
    assert compact(exit_ok) == "💥 exit    default/xwing /usr/bin/whoami --version 0"  # no signal: the status
    host = {"process_exec": {"process": {"binary": "/usr/bin/id", "arguments": "-u"}}, "node_name": "web-1"}
    assert compact(host) == "🚀 process web-1 /usr/bin/id -u"  # no pod: the node
    bare = {"process_exit": {"process": {"binary": "/usr/bin/sleep"}, "signal": "SIGKILL"}, "node_name": "web-1"}
    assert compact(bare) == "💥 exit    web-1 /usr/bin/sleep  SIGKILL"  # Tetragon's blank for no arguments


@pytest.mark.parametrize(("fn", "args", "tail"), [
    ("__x64_sys_setuid", [{"int_arg": 0}], "🔑 setuid  default/xwing /usr/bin/curl 0"),
    ("fd_install", [{"int_arg": 3}, {"file_arg": {"path": "/etc/passwd"}}], "📬 open    default/xwing /usr/bin/curl "
                                                                                  "/etc/passwd"),
    ("__x64_sys_openat", [{"int_arg": -100}, {"string_arg": "/etc/hosts"}], "📬️ openat  default/xwing "
                                                                               "/usr/bin/curl /etc/hosts"),
    ("__x64_sys_write", [{"file_arg": {"path": "/tmp/x"}}, {"bytes_arg": ""}, {"size_arg": "12"}],
     "📝 write   default/xwing /usr/bin/curl /tmp/x 12 bytes"),
    ("__x64_sys_mount", [{"string_arg": "none"}, {"string_arg": "/mnt"}], "💾 mount   default/xwing /usr/bin/curl "
                                                                              "none /mnt"),
    ("__x64_sys_setns", [{"int_arg": 3}, {"int_arg": 0x40000000}], "🔧 setns   default/xwing /usr/bin/curl net"),
    ("tcp_sendmsg", [{"sock_arg": {"saddr": "1.2.3.4", "sport": 5, "daddr": "6.7.8.9", "dport": 80}},
                     {"int_arg": 42}], "📤 sendmsg default/xwing /usr/bin/curl tcp 1.2.3.4:5 -> 6.7.8.9:80 bytes 42"),
    ("security_file_permission", [{"file_arg": {"path": "/etc/shadow"}}, {"int_arg": 4}],
     "📚 read    default/xwing /usr/bin/curl /etc/shadow"),
    ("security_mmap_file", [{"file_arg": {"path": "/lib/x.so"}}, {"uint_arg": 5}, {"uint_arg": 2}],
     "📝 mmap-rx default/xwing /usr/bin/curl /lib/x.so"),
    ("security_path_truncate", [{"path_arg": {"path": "/etc/passwd"}}],
     "📝 truncate default/xwing /usr/bin/curl /etc/passwd"),
    ("bpf_check", [{"bpf_attr_arg": {"prog_type": "BPF_PROG_TYPE_KPROBE", "prog_name": "p", "insn_cnt": 9}}],
     "🐝 bpf_load default/xwing /usr/bin/curl BPF_PROG_TYPE_KPROBE p instruction count 9"),
    ("commit_creds", [], "❓ syscall default/xwing /usr/bin/curl commit_creds"),
])
def test_kprobe_lines(corpus: Path, fn: str, args: list[dict[str, Any]], tail: str) -> None:
    assert compact(_kprobe(fn, *args)) == tail


def test_tracepoint_lines(corpus: Path) -> None:
    proc = {"binary": "/usr/bin/curl", "pod": {"namespace": "default", "name": "xwing"}}
    raw = {"process_tracepoint": {"process": proc, "subsys": "raw_syscalls", "event": "sys_enter",
                                  "args": [{"long_arg": "59"}]}}
    assert compact(raw) == "☎  syscall default/xwing /usr/bin/curl sys_execve"
    other = {"process_tracepoint": {"process": proc, "subsys": "sched", "event": "sched_switch", "args": []}}
    assert compact(other) == "⁉️ tracepoint default/xwing /usr/bin/curl sched sched_switch"


def test_cap_sys_admin_is_noted_at_the_capability_column() -> None:
    ev = {"process_exec": {"process": {"binary": "/bin/sh", "cap": {"effective": ["CAP_SYS_ADMIN"]}}},
          "node_name": "n"}
    head = "🚀 process n /bin/sh "
    caps = "🛑 CAP_SYS_ADMIN"
    # Go's "%s %*s": the pad is 120 less the line's bytes, counted in runes
    assert compact(ev) == f"{head} {' ' * (120 - len(head.encode()) - len(caps))}{caps}"


def test_events_command(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.write(KILL)
    log.write({"verification_refused": {"reason": "expired", "detail": "index expired"}, "node_name": "n1"})
    log.close()
    main = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", main, "events", "--state", str(tmp_path), "-o", "compact"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("⁉️ tracepoint shop/web /bin/sh")
    assert "⛔" in out.stdout.splitlines()[1]
    js = subprocess.run([sys.executable, "-c", main, "events", "--state", str(tmp_path), "-o", "json"],
                        capture_output=True, text=True, cwd=ROOT)
    assert json.loads(js.stdout.splitlines()[0])["process_tracepoint"]["action"] == "KPROBE_ACTION_SIGKILL"
    bad = subprocess.run([sys.executable, "-c", main, "events", "--state", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "not a directory" in bad.stderr and "Traceback" not in bad.stderr


def test_the_log_takes_a_burst_in_one_write_and_any_json_value(tmp_path: Path) -> None:
    from agent.events import EventLog, read_all

    log = EventLog(tmp_path)
    burst = [{"process_kprobe": {"n": i, "big": 2**70 if i == 3 else i}} for i in range(5)]
    log.write_many(burst)  # 2**70 is past what orjson encodes: that line goes through the standard encoder
    log.close()
    assert list(read_all(tmp_path)) == burst

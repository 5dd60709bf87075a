"""`make demo`: the whole Palisade story on this machine, with real components.

A temporary copy of example-repo/ becomes a git repository with two reviewers
whose SSH keys are made here; `palisade serve` reconciles it on loopback; one
`palisade-agent` with the real eBPF engine enforces it for a workload in its own
cgroup. The demo observes the workload, generates an exec allowlist from what it
ran, advances it observe → enforce_ready → enforced with signed approvals, shows
a forbidden exec killed while an allowed one runs, then starts podman (its own
storage here) and two containers after the fact: the allowlist's podSelector
(app=web) follows the one labelled app=web, whose forbidden exec is killed while
the same exec runs in the app=db one. It reverts and prints the audit trail.
Everything it starts is stopped and removed at the end, also on failure.

Needs root and a BPF-capable kernel (run through `make demo`, which installs the
rest). Exit 0 when every step did what it says.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from podman_runtime import Podman, PodmanUnavailable
from podman_runtime import problem as podman_problem

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "example-repo"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
WINDOW = 8  # seconds: the demo repository's minObservation (72h in example-repo)
SENSOR = "node-web-1"
IMAGE = "localhost/palisade-demo/busybox:1"

_BOLD, _DIM, _RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


class DemoFailed(Exception):
    pass


def step(text: str) -> None:
    print(f"\n{_BOLD}▶ {text}{_RESET}", flush=True)


def say(text: str) -> None:
    print(f"  {text}", flush=True)


def show(output: str, limit: int = 40) -> None:
    lines = output.rstrip("\n").splitlines()
    for line in lines[:limit]:
        print(f"  {_DIM}│{_RESET} {line}", flush=True)
    if len(lines) > limit:
        print(f"  {_DIM}│ … {len(lines) - limit} more lines{_RESET}", flush=True)


class Demo:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="palisade-demo-"))
        self.repo = self.tmp / "policy-repo"
        self.cgroup = CGROUP_ROOT / f"palisade-demo-{os.getpid()}"
        self.pin_root = Path(f"/sys/fs/bpf/palisade-demo-{os.getpid()}")
        self.procs: list[subprocess.Popen[str]] = []
        self.url = ""
        self.version = 0
        # podman of the demo's own (storage, runroot, API socket under tmp), started for the container step
        self.podman = Podman(self.tmp / "podman", CGROUP_ROOT, image=IMAGE, run_label="palisade.demo")
        self.podman_used = False

    # -- running things -------------------------------------------------------------------

    def run(self, *args: str, check: bool = True, echo: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        shown = " ".join(a if a.startswith("-") or "/" not in a else _short(a, self.tmp) for a in args)
        if echo:
            print(f"  $ {shown}", flush=True)
        r = subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
        if check and r.returncode != 0:
            raise DemoFailed(f"{shown} exited {r.returncode}:\n{r.stdout}{r.stderr}")
        return r

    def palisade(self, *args: str, check: bool = True, echo: bool = True) -> subprocess.CompletedProcess[str]:
        # commands that commit (generate, advance, revert) do so as the team member Dana
        return self.run(str(BIN / "palisade"), *args, check=check, echo=echo,
                        env=_git_env(DANA, signing_key=self.keys / "dana"))

    def git(self, *args: str, who: tuple[str, str] = ("Dana Developer", "dana@example.com"),
            echo: bool = False) -> str:
        return self.run("git", "-C", str(self.repo), *args, env=_git_env(who), echo=echo).stdout.strip()

    def in_workload(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command as a process of the workload: moved into its cgroup before exec."""
        procs = self.cgroup / "cgroup.procs"

        def enter() -> None:
            procs.write_text(str(os.getpid()))

        return subprocess.run(list(argv), capture_output=True, text=True, preexec_fn=enter, timeout=30)

    def wait_for(self, what: str, test: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if test():
                return
            time.sleep(0.2)
        raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())

    # -- the story --------------------------------------------------------------------------

    def setup(self) -> None:
        step("A policy repository with two reviewers")
        keys = self.keys = self.tmp / "keys"
        keys.mkdir()
        public = {}
        for name in ("alice", "bob", "dana"):
            self.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@example.com",
                     "-f", str(keys / name), echo=False)
            public[name] = (keys / f"{name}.pub").read_text().strip()
        say("made SSH keys for the reviewers alice and bob and the contributor dana (ssh-keygen -t ed25519)")
        shutil.copytree(EXAMPLE, self.repo)
        # The demo builds its own allowlist for the web workload, with one node and no staged rollout.
        shutil.rmtree(self.repo / "packs" / "web-lockdown")
        (self.repo / "enforcement" / "web-lockdown.yaml").unlink()
        shutil.rmtree(self.repo / "staging")
        cfg = self.repo / "palisade.yaml"
        text = cfg.read_text()
        for name in ("alice", "bob", "dana"):
            text = re.sub(rf"key: ssh-ed25519 \S+ {name}@example.com", f"key: {public[name]}", text)
        text = re.sub(r"minObservation: \S+", f"minObservation: {WINDOW}s", text)
        cfg.write_text(text)
        say(f"copied example-repo/ with the reviewers' real keys and minObservation {WINDOW}s (72h there)")
        self.git("init", "-q", "-b", "main")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "Import the policy repository", who=("Alice Reviewer", "alice@example.com"))
        self.palisade("validate", "--repo", str(self.repo))
        say("the repository validates; what it enforces where:")
        show(self.palisade("units", "--repo", str(self.repo)).stdout)

    def start_server(self) -> None:
        step("The reconciler: every commit → a validated, signed, versioned bundle")
        self.palisade("keygen", "--out", str(self.tmp / "signing"))
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = (self.tmp / "serve.log").open("w")
        print(f"  $ palisade serve --repo policy-repo --state state --key signing/palisade.key "
              f"--listen 127.0.0.1:{port} &", flush=True)
        self.procs.append(subprocess.Popen(
            [str(BIN / "palisade"), "serve", "--repo", str(self.repo), "--state", str(self.tmp / "state"),
             "--key", str(self.tmp / "signing" / "palisade.key"), "--listen", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, text=True))
        self.wait_for("the server to publish v1", lambda: self._served_version() >= 1)
        self.version = 1
        say(f"serving on {self.url}: bundle v1 published for the first commit")
        say(f"console (read-only, live): open {self.url}/ui/ in a browser on this machine")
        with urllib.request.urlopen(self.url + "/ui/", timeout=10) as r:
            say(f"the console answers HTTP {r.status} ({r.headers.get('Content-Type', '?')})")

    def start_agent(self) -> None:
        step("A node agent with the real eBPF engine, and a workload in its own cgroup")
        self.cgroup.mkdir()
        say(f"workload 'web' (labels app=web) is cgroup {self.cgroup}")
        config = self.tmp / "agent.yaml"
        config.write_text(
            f"pinRoot: {self.pin_root}\n"
            f"workloads:\n  - {{name: web, namespace: shop, labels: {{app: web}}, cgroup: {self.cgroup}}}\n"
            f"containers: {{socket: {self.podman.socket}}}\n"
            "intervals: {wait: 20, heartbeat: 1, drift: 2}\n")
        say("containers from podman's API at podman/api.sock (containers.socket; podman starts later on)")
        log = (self.tmp / "agent.log").open("w")
        print(f"  $ palisade-agent run --server {self.url} --pubkey signing/palisade.pub --sensor-id {SENSOR} "
              "--labels role=web --state agent --config agent.yaml &", flush=True)
        self.procs.append(subprocess.Popen(
            [str(BIN / "palisade-agent"), "run", "--server", self.url,
             "--pubkey", str(self.tmp / "signing" / "palisade.pub"), "--sensor-id", SENSOR,
             "--labels", "role=web", "--state", str(self.tmp / "agent"), "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, text=True))
        self.wait_for_node(1)
        show(self.run(str(BIN / "palisade-agent"), "status", "--state", str(self.tmp / "agent"),
                      check=False).stdout)

    def observe(self) -> None:
        step("Observe: the workload runs its usual programs while the agent watches")
        for argv in (["/usr/bin/python3", "-c", "print('web: serving')"], ["/usr/bin/date"], ["/bin/ls", "/"]):
            r = self.in_workload(*argv)
            say(f"workload ran {argv[0]} → exit {r.returncode}")
        self.wait_for("the execs to reach the reconciler", lambda: self._observed("/usr/bin/date"))
        show(self.palisade("events", "--server", self.url, "--workload", "web", "--since", "1h").stdout, 12)

    def generate(self) -> None:
        step("Generate an exec allowlist from what the workload was observed to run")
        r = self.palisade("generate", "--workload", "web", "--server", self.url, "--since", "1h",
                          "--repo", str(self.repo), "--name", "web-allowlist", "--scope", "group:web",
                          "--selector", "app=web", "--branch", "web-allowlist")
        show(r.stdout + r.stderr, 20)
        show(self.palisade("plan", "--repo", str(self.repo), "--base", "main", "--head", "web-allowlist",
                           check=False).stdout, 30)
        self.merge("web-allowlist", signer=None, what="the new pack at observe")
        r = self.in_workload("/usr/bin/id", "-u")
        say(f"at observe, a program the workload never ran (/usr/bin/id) still runs: exit {r.returncode}")
        if r.returncode != 0:
            raise DemoFailed(f"/usr/bin/id should run at observe, exited {r.returncode}")
        self.wait_for("the would-be kill to reach the reconciler",
                      lambda: self._observed("/usr/bin/id", policy="web-exec-allowlist"))
        show(self.palisade("impact", "pack/web-allowlist", "--scope", "group:web", "--server", self.url,
                           "--repo", str(self.repo), "--days", "1").stdout, 16)

    def advance(self, to: str, signer: str) -> None:
        step(f"Advance web-allowlist to {to}: a branch, then a reviewer's signed merge")
        show(self.palisade("readiness", "pack/web-allowlist", "--scope", "group:web", "--server", self.url,
                           "--repo", str(self.repo), check=False).stdout, 14)
        say(f"waiting out the {WINDOW}s observation window")
        time.sleep(WINDOW + 1)
        branch = self.palisade("advance", "pack/web-allowlist", "--scope", "group:web",
                               "--repo", str(self.repo)).stdout.strip()
        say(f"branch {branch}")
        self.merge(branch, signer=signer, what=to)

    def enforce(self) -> None:
        step("Enforced: the forbidden exec is killed in the kernel, the allowed one runs")
        bad = self.in_workload("/usr/bin/id", "-u")
        say(f"workload runs /usr/bin/id  → {_status(bad.returncode)}")
        good = self.in_workload("/usr/bin/date")
        say(f"workload runs /usr/bin/date → {_status(good.returncode)}")
        outside = subprocess.run(["/usr/bin/id", "-u"], capture_output=True, text=True)
        say(f"outside the workload, /usr/bin/id → {_status(outside.returncode)}")
        if bad.returncode != -signal.SIGKILL or good.returncode != 0 or outside.returncode != 0:
            raise DemoFailed("enforcement did not behave as the policy says")
        events = self.run(str(BIN / "palisade-agent"), "events", "--state", str(self.tmp / "agent"),
                          "-o", "compact").stdout.splitlines()
        show("\n".join(e for e in events if "web-exec-allowlist" in e and "/usr/bin/id" in e))

    def containers(self) -> None:
        step("A container labelled app=web, started after the allowlist is enforced, is under it too")
        print("  $ podman system service unix://podman/api.sock &   (storage and runroot under podman/)", flush=True)
        t0 = time.monotonic()
        self.podman_used = True  # from here on, cleanup removes what podman made even if start fails
        self.podman.start()
        say(f"podman's API answers ({time.monotonic() - t0:.1f}s; image {IMAGE} imported from busybox-static)")
        started = {}
        for app in ("web", "db"):
            print(f"  $ podman run -d --label app={app} --name {app} {IMAGE} sleep 600", flush=True)
            started[app] = self.podman.run("sleep", "600", labels={"app": app}, name=app)
        web, db = started["web"], started["db"]
        say(f"container web is {web.id[:12]}, cgroup libpod_parent/libpod-{web.id[:12]}…")
        t0, probes = time.monotonic(), []

        def scoped() -> bool:
            probes.append(self.podman.exec(web.id, "/bin/true").returncode)
            return probes[-1] == 128 + signal.SIGKILL

        # the agent follows the runtime: the container joins the allowlist's scope, nothing is reloaded
        self.wait_for("the agent to take container web into web-exec-allowlist's scope", scoped, timeout=15)
        say(f"the agent took container web into the allowlist's scope (probe exec /bin/true killed after "
            f"{time.monotonic() - t0:.2f}s, {len(probes) - 1} probe(s) ran before)")
        bad = self.podman.exec(web.id, "/bin/id", "-u")
        say(f"container web (app=web) runs /bin/id → exit {bad.returncode}"
            + (" (killed by SIGKILL)" if bad.returncode == 128 + signal.SIGKILL else ""))
        good = self.podman.exec(db.id, "/bin/id", "-u")
        say(f"container db (app=db) runs /bin/id → exit {good.returncode}")
        if bad.returncode != 128 + signal.SIGKILL or good.returncode != 0:
            raise DemoFailed(f"in the containers: web /bin/id exited {bad.returncode} ({bad.stderr.strip()}), "
                             f"db /bin/id exited {good.returncode} ({good.stderr.strip()})")
        kills: list[dict[str, Any]] = []

        def logged() -> bool:
            kills[:] = self._container_kills(web.id)
            return bool(kills)

        self.wait_for("the kill event naming container web", logged)
        body = kills[-1]
        pod = body["process"]["pod"]
        container = pod["container"]
        say("the agent's event (palisade-agent events -o json: process.pod):")
        say(f"  {body.get('policy_name')} {body.get('action')} {body['process'].get('binary')} "
            f"in container {container['name']} ({container['id'][:21]}…), "
            f"image {container['image']['name']} ({container['image']['id'][:19]}…), "
            f"pod {pod['namespace']}/{pod['name']}")

    def _container_kills(self, cid: str) -> list[dict[str, Any]]:
        """The agent's kill events in container `cid` (Tetragon's JSON: process.pod.container)."""
        r = self.run(str(BIN / "palisade-agent"), "events", "--state", str(self.tmp / "agent"), "-o", "json",
                     echo=False)
        out = []
        for line in r.stdout.splitlines():
            ev = json.loads(line)
            body = ev.get("process_tracepoint") or ev.get("process_kprobe") or {}
            pod = (body.get("process") or {}).get("pod") or {}
            if (body.get("policy_name") == "web-exec-allowlist" and "SIGKILL" in str(body.get("action", "")).upper()
                    and pod.get("container", {}).get("id") == f"docker://{cid}"):
                out.append(body)
        return out

    def revert(self) -> None:
        step("Revert to observe: no approval needed, fast")
        branch = self.palisade("revert", "pack/web-allowlist", "--scope", "group:web",
                               "--repo", str(self.repo)).stdout.strip()
        self.merge(branch, signer=None, what="back to observe")
        r = self.in_workload("/usr/bin/id", "-u")
        say(f"workload runs /usr/bin/id → {_status(r.returncode)}")
        if r.returncode != 0:
            raise DemoFailed("after the revert /usr/bin/id should run")

    def audit(self) -> None:
        step("Audit: who allowed what, who approved it, when the node enforced it")
        # the rollout controller records the sensor's switch to v5 at its next tick (every second)
        self.wait_for("the ledger to record the node's switch back to observe",
                      lambda: f"(v{self.version})" in self.palisade("audit", "web-allowlist", "--state",
                                                                    str(self.tmp / "state"), echo=False).stdout)
        show(self.palisade("audit", "web-allowlist", "--state", str(self.tmp / "state")).stdout, 60)
        show(self.palisade("ledger", "--state", str(self.tmp / "state")).stdout, 12)

    # -- helpers ----------------------------------------------------------------------------

    def merge(self, branch: str, *, signer: str | None, what: str) -> None:
        who = {"alice": ("Alice Reviewer", "alice@example.com"), "bob": ("Bob Reviewer", "bob@example.com")}
        args = ["merge", "-q", "--no-ff", "-m", f"Merge {branch}"]
        if signer is not None:
            args = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.keys / signer}", *args, "-S"]
        self.git(*args, branch, who=who.get(signer or "", ("Dana Developer", "dana@example.com")))
        say(f"merged {branch} into main" + (f", signed by {signer}" if signer else " (unsigned)"))
        self.version += 1
        self.wait_for(f"bundle v{self.version}", lambda: self._served_version() >= self.version)
        status = self.get("/v1/status")
        rejected = status.get("lastRejected")
        if status.get("version") != self.version:
            raise DemoFailed(f"v{self.version} was not published: {json.dumps(rejected, indent=2)}")
        say(f"the reconciler published v{self.version} ({what})")
        self.wait_for_node(self.version)

    def wait_for_node(self, version: int) -> None:
        def applied() -> bool:
            try:
                doc = json.loads((self.tmp / "agent" / "status.json").read_text())
            except (OSError, ValueError):
                return False
            return bool(doc.get("version") == version)

        def reported() -> bool:
            try:
                agents = self.get("/v1/agents")
            except (OSError, ValueError):
                return False
            rows = agents.get("agents", agents) if isinstance(agents, dict) else agents
            return any(a.get("id") == SENSOR and a.get("version") == version for a in rows)

        t0 = time.monotonic()
        self.wait_for(f"{SENSOR} to enforce v{version}", applied)
        say(f"{SENSOR} enforces v{version} ({time.monotonic() - t0:.1f}s after publish was seen)")
        self.wait_for(f"{SENSOR} to report v{version}", reported)

    def _served_version(self) -> int:
        try:
            return int(self.get("/v1/status").get("version") or 0)
        except (OSError, ValueError):
            return 0

    def _observed(self, binary: str, policy: str | None = None) -> bool:
        r = self.palisade("events", "--server", self.url, "--workload", "web", "--binary", binary, "--since", "1h",
                          *(("--policy", policy) if policy else ()), "-o", "json", check=False, echo=False)
        try:
            doc = json.loads(r.stdout or "{}")
        except ValueError:
            return False
        return bool(doc.get("observations") if isinstance(doc, dict) else doc)

    def cleanup(self) -> None:
        step("Clean up")
        if self.podman_used:
            try:
                self.podman.close()
                say("removed the containers, stopped podman's API service, removed its image and storage")
            except (OSError, subprocess.SubprocessError) as e:
                say(f"podman cleanup failed: {e}")
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        r = subprocess.run([str(BIN / "palisade-agent"), "reset", "--pin-root", str(self.pin_root)],
                           capture_output=True, text=True)
        if self.pin_root.exists():
            shutil.rmtree(self.pin_root, ignore_errors=True)
        if self.cgroup.exists():
            for pid in (self.cgroup / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.2)
            self.cgroup.rmdir()
        shutil.rmtree(self.tmp, ignore_errors=True)
        say("stopped the server and the agent, unloaded every program, removed the cgroup and temp files"
            + ("" if r.returncode == 0 else f" ({r.stderr.strip()})"))


DANA = ("Dana Developer", "dana@example.com")


def _git_env(who: tuple[str, str], signing_key: Path | None = None) -> dict[str, str]:
    """git as `who`, isolated from this machine's git configuration; signing commits with `signing_key`."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": who[0], "GIT_AUTHOR_EMAIL": who[1],
           "GIT_COMMITTER_NAME": who[0], "GIT_COMMITTER_EMAIL": who[1]}
    if signing_key is not None:
        config = {"gpg.format": "ssh", "user.signingkey": str(signing_key), "commit.gpgSign": "true"}
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for i, (k, v) in enumerate(config.items()):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = k, v
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _short(arg: str, tmp: Path) -> str:
    return arg.replace(str(tmp) + "/", "").replace(str(BIN) + "/", "")


def _status(code: int) -> str:
    return "killed by SIGKILL" if code == -signal.SIGKILL else f"exit {code}"


def main(argv: Sequence[str] = ()) -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it loads eBPF programs and makes a cgroup)", file=sys.stderr)
        return 2
    why = podman_problem()
    if why is not None:
        print(f"make demo runs a container: {why}", file=sys.stderr)
        return 2
    demo = Demo()
    t0 = time.monotonic()
    try:
        demo.setup()
        demo.start_server()
        demo.start_agent()
        demo.observe()
        demo.generate()
        demo.advance("enforce_ready", "alice")
        demo.advance("enforced", "bob")
        demo.enforce()
        demo.containers()
        demo.revert()
        demo.audit()
    except (DemoFailed, PodmanUnavailable, subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        if isinstance(e, subprocess.CalledProcessError):
            print(f"{e.stdout or ''}{e.stderr or ''}", file=sys.stderr)
        for name in ("serve.log", "agent.log", "podman/service.log"):
            log = demo.tmp / name
            if log.exists():
                print(f"--- last lines of {name}", file=sys.stderr)
                print("\n".join(log.read_text().splitlines()[-15:]), file=sys.stderr)
        return 1
    finally:
        demo.cleanup()
    print(f"\n{_BOLD}Done in {time.monotonic() - t0:.0f}s.{_RESET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

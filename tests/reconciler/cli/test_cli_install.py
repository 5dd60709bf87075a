"""`palisade install --export`: the real console script's manifests, checked against the Kubernetes schemas
offline (kubernetes-validate, strict: no field Kubernetes would not know), and the outcomes operators rely on.
No cluster runs here: the probes' command is run against a real agent's status file instead."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.kernel import unavailable

VENV_BIN = Path(__file__).resolve().parents[3] / ".venv" / "bin"
PALISADE = str(VENV_BIN / "palisade")
REPO_URL = "https://git.example.com/platform/policy.git"
#: The oldest Kubernetes with the container field appArmorProfile (1.30), and 1.33; the newest bundled is added.
VERSIONS = ("1.30.0", "1.33.0")
AGENT_CAPS = {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "KILL", "DAC_OVERRIDE"}


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PALISADE, "install", *args], capture_output=True, text=True, timeout=60)


def _export(*args: str) -> list[dict[str, Any]]:
    r = _install("--export", "--repo-url", REPO_URL, *args)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d is not None]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(c)


def _volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (v,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return dict(v)


def _mount(container: dict[str, Any], path: str) -> dict[str, Any]:
    (m,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    return dict(m)


def test_yaml_and_json_validate_against_the_kubernetes_schemas() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (make venv: the dev extra)")
    docs = _export()
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "ServiceAccount",
                                        "PersistentVolumeClaim", "Deployment", "Service"]
    r = _install("--export", "--repo-url", REPO_URL, "-o", "json")
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    assert (listing["apiVersion"], listing["kind"]) == ("v1", "List")
    assert listing["items"] == docs  # the two formats print the same objects
    versions = (*VERSIONS, kubernetes_validate.latest_version())
    for version in versions:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any schema violation
    # the validator is not a rubber stamp: a misspelt field and a wrong type are refused
    ds = _one(docs, "DaemonSet")
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, versions[-1], strict=True)
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = "false"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, versions[-1], strict=True)


def test_the_agent_daemonset_has_host_pids_bpffs_and_exactly_the_capabilities_it_needs() -> None:
    r = _install("--export", "--components", "agent")
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    ds = _one(docs, "DaemonSet", "palisade-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and not pod.get("hostNetwork")
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every node, tainted ones too
    c = _container(ds)
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(AGENT_CAPS)
    # each added capability says why on its own line of the YAML
    for cap in AGENT_CAPS:
        (line,) = [ln for ln in r.stdout.splitlines() if ln.strip().startswith(f"- {cap} ")]
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 20, line
    bpffs = _mount(c, "/sys/fs/bpf")
    assert bpffs["readOnly"] is False  # the engine pins there
    assert _volume(ds, bpffs["name"])["hostPath"]["path"] == "/sys/fs/bpf"
    for path in ("/sys/fs/cgroup", "/sys/kernel/tracing", "/sys/kernel/debug"):
        assert _volume(ds, _mount(c, path)["name"])["hostPath"]["path"] == path
    state = _mount(c, "/var/lib/palisade-agent")  # last-known-good survives the pod
    assert _volume(ds, state["name"])["hostPath"]["path"] == "/var/lib/palisade-agent"
    key = _mount(c, "/etc/palisade/trust")
    assert key["readOnly"] is True
    assert _volume(ds, key["name"])["configMap"]["name"] == "palisade-pubkey"
    # the sensor id is the node's name, from the downward API
    (env,) = [e for e in c["env"] if e["name"] == "NODE_NAME"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["args"][c["args"].index("--sensor-id") + 1] == "$(NODE_NAME)"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert [d["kind"] for d in docs if d["kind"] in ("Deployment", "PersistentVolumeClaim")] == []


def test_the_agent_yaml_of_the_configmap_loads_with_the_agents_own_loader(tmp_path: Path) -> None:
    from agent import config

    docs = _export("--namespace", "sec")
    cm = _one(docs, "ConfigMap", "palisade-agent-config")
    c = _container(_one(docs, "DaemonSet"))
    path = c["args"][c["args"].index("--config") + 1]
    assert _mount(c, path)["readOnly"] is True and _mount(c, path)["subPath"] == "agent.yaml"
    file = tmp_path / "agent.yaml"
    file.write_text(cm["data"]["agent.yaml"])
    cfg = config.load(file, {"sensorId": "node-a", "labels": "kubernetes.io/hostname=node-a"})
    assert cfg.server == "http://palisade-reconciler.sec.svc:8740"  # the Service, through cluster DNS
    service = _one(docs, "Service")
    assert (service["metadata"]["name"], service["metadata"]["namespace"]) == ("palisade-reconciler", "sec")
    assert [p["port"] for p in service["spec"]["ports"]] == [8740]
    (pubkey,) = cfg.pubkeys
    assert pubkey.parent == Path(_mount(c, str(pubkey.parent))["mountPath"])  # the mounted key is the pinned one
    assert cfg.state == Path("/var/lib/palisade-agent") and cfg.label_map == {"kubernetes.io/hostname": "node-a"}
    assert all(d["metadata"].get("namespace", "sec") == "sec" for d in docs)
    assert _one(docs, "Namespace")["metadata"]["name"] == "sec"


def test_the_agent_probes_run_the_real_status_command_on_a_real_agents_status(tmp_path: Path) -> None:
    from agent.apply import NullEnforcer
    from agent.client import Client
    from agent.config import AgentConfig
    from agent.health import ProblemKind
    from agent.runner import Agent
    from reconciler.keys import generate
    from wire.keys import load_public_key

    c = _container(_one(_export(), "DaemonSet"))
    readiness, liveness = c["readinessProbe"]["exec"]["command"], c["livenessProbe"]["exec"]["command"]
    state = tmp_path / "agent-state"
    manifest_state = "/var/lib/palisade-agent"
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "PALISADE_RUNTIME_DIR": str(tmp_path / "run")}

    def probe(command: list[str]) -> int:
        assert any(manifest_state in part for part in command)  # the probe looks where the agent writes
        argv = [part.replace(manifest_state, str(state)) for part in command]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60).returncode

    # the DaemonSet's PATH finds `palisade-agent` as the console script; so does the probe here
    assert readiness[0] == "palisade-agent" and (VENV_BIN / "palisade-agent").is_file()
    state.mkdir()
    assert (probe(readiness), probe(liveness)) == (2, 1)  # no status yet: neither ready nor alive

    pair = generate(tmp_path / "keys")
    cfg = AgentConfig(server="http://127.0.0.1:9", pubkeys=(pair.public_key_path,), sensor_id="node-a",
                      state=state, engine=False)
    agent = Agent(cfg, enforcer=NullEnforcer(), client=Client(cfg.server),
                  pubkeys=[load_public_key(pair.public_key_path)])
    agent.write_status()  # what `palisade-agent run` writes once it enforces its last-known-good
    assert (probe(readiness), probe(liveness)) == (0, 0)

    import datetime as _dt

    agent.health.report("transfer:index", ProblemKind.TRANSFER, "unreachable", "connection refused",
                        _dt.datetime.now(_dt.UTC))
    agent.write_status()  # degraded: not ready, but alive (it keeps enforcing; a restart would not help)
    assert (probe(readiness), probe(liveness)) == (1, 0)


def test_the_reconciler_keeps_its_state_on_the_claim_and_its_key_in_a_secret() -> None:
    docs = _export("--image", "registry.example/palisade:1.2", "--branch", "release")
    dep = _one(docs, "Deployment", "palisade-reconciler")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    c = _container(dep)
    assert c["image"] == "registry.example/palisade:1.2"
    args = c["args"]
    assert args[0] == "serve" and args[args.index("--repo") + 1] == REPO_URL
    assert args[args.index("--branch") + 1] == "release"
    state = args[args.index("--state") + 1]
    claim = _volume(dep, _mount(c, state)["name"])["persistentVolumeClaim"]["claimName"]
    assert _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    key = Path(args[args.index("--key") + 1])
    mount = _mount(c, str(key.parent))
    assert mount["readOnly"] is True
    secret = _volume(dep, mount["name"])["secret"]
    assert secret["items"] == [{"key": "palisade.key", "path": key.name}]
    assert secret["defaultMode"] & 0o077 == 0  # reconciler.keys refuses a key others may read
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # the API listens beyond loopback in the pod, on the port the Service and the ServiceMonitor name
    assert args[args.index("--listen") + 1] == "0.0.0.0:8740"
    (port,) = c["ports"]
    service = _one(docs, "Service")
    (sport,) = service["spec"]["ports"]
    assert sport["name"] == "http" and sport["targetPort"] == port["name"] == "http"
    assert service["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert c["livenessProbe"]["httpGet"] == c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # beyond loopback the server needs its token (serve/auth.py): from a Secret, read-only, 0400
    token = Path(args[args.index("--token-file") + 1])
    tmount = _mount(c, str(token.parent))
    assert tmount["readOnly"] is True
    tsecret = _volume(dep, tmount["name"])["secret"]
    assert tsecret["items"] == [{"key": "token", "path": token.name}] and tsecret["defaultMode"] & 0o077 == 0


def test_the_reconcilers_exported_flags_start_a_server_its_probes_pass_and_its_read_api_guarded(
        tmp_path: Path) -> None:
    """The Deployment's own flags (its paths moved under a temporary directory): the server starts on a
    non-loopback address, /healthz — the probes' path — answers without the token, /v1/status only with it."""
    import httpx

    from reconciler.keys import generate
    from support.policyrepo import PolicyRepo
    from support.serve import Serve

    c = _container(_one(_export(), "Deployment", "palisade-reconciler"))
    args = c["args"]
    repo = PolicyRepo.create(tmp_path / "repo")
    key = generate(tmp_path / "keys").signing_key_path
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o400)
    listen = args[args.index("--listen") + 1]
    host = listen.rpartition(":")[0]
    server = Serve(repo.path, tmp_path / "state", key, "--branch", args[args.index("--branch") + 1],
                   "--listen", f"{host}:0", "--token-file", str(token))
    try:
        port = server.url.rpartition(":")[2]
        probe = c["readinessProbe"]["httpGet"]["path"]
        assert httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=10).status_code == 401
        auth = {"Authorization": "Bearer 0123456789abcdef0123456789abcdef"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/status", headers=auth, timeout=10).status_code == 200
    finally:
        assert server.stop() == 0, server.log


def test_no_rbac_and_no_service_account_tokens() -> None:
    docs = _export()
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")]
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert set(accounts) == {"palisade-agent", "palisade-reconciler"}
    assert all(a["automountServiceAccountToken"] is False for a in accounts.values())
    for kind in ("DaemonSet", "Deployment"):
        pod = _one(docs, kind)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] in accounts and pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("args", "message"), [
    (["--repo-url", REPO_URL], "--export"),
    (["--export", "--components", "agent,db"], "--components"),
    (["--export", "--components", ","], "--components"),
    (["--export"], "--repo-url is required"),
    (["--export", "--repo-url", "/srv/policy"], "not a local path"),
    (["--export", "--components", "agent", "--namespace", "Bad_NS"], "namespace"),
    (["--export", "--components", "agent", "--image", "a b"], "image"),
    (["--export", "--components", "agent", "-o", "xml"], "-o/--output"),
])
def test_bad_flags_exit_2_with_a_message(args: list[str], message: str) -> None:
    r = _install(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert message in r.stderr and "Traceback" not in r.stderr


def _with_caps(caps: set[str], *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` as root holding only `caps` (the bounding set caps what an exec by uid 0 gets, like the runtime)."""
    keep = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(caps))])
    return subprocess.run(["setpriv", "--inh-caps=-all", f"--bounding-set={keep}", "--", *argv],
                          capture_output=True, text=True, timeout=120)


def _features(r: subprocess.CompletedProcess[str]) -> dict[str, bool]:
    assert r.returncode == 0, r.stderr
    return {name: f["available"] for name, f in json.loads(r.stdout)["features"].items()}


@pytest.mark.kernel
def test_the_daemonsets_capabilities_are_enough_here_and_the_measured_ones_needed(require_kernel: None) -> None:
    """On this kernel, as the container would run: the probe with exactly the DaemonSet's capabilities finds
    what full root finds; without SYS_ADMIN or DAC_OVERRIDE it finds less; SYS_PTRACE reads the binary of a
    process holding every capability, KILL signals another uid's process."""
    c = _container(_one(_export("--components", "agent"), "DaemonSet"))
    caps = set(c["securityContext"]["capabilities"]["add"])
    agent = str(VENV_BIN / "palisade-agent")
    full = _features(subprocess.run([agent, "probe", "-o", "json"], capture_output=True, text=True, timeout=120))
    assert _features(_with_caps(caps, agent, "probe", "-o", "json")) == full
    for needed in ("SYS_ADMIN", "DAC_OVERRIDE"):
        lost = {k for k, v in _features(_with_caps(caps - {needed}, agent, "probe", "-o", "json")).items()
                if full[k] and not v}
        assert lost, f"{needed} made no difference to the probe"
    root_sleeper = subprocess.Popen(["sleep", "60"])
    other_uid = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "60"])
    try:
        exe = ["readlink", f"/proc/{root_sleeper.pid}/exe"]
        assert _with_caps(caps, *exe).returncode == 0
        assert _with_caps(caps - {"SYS_PTRACE"}, *exe).returncode != 0
        signal0 = ["kill", "-0", str(other_uid.pid)]
        assert _with_caps(caps, *signal0).returncode == 0
        assert _with_caps(caps - {"KILL"}, *signal0).returncode != 0
    finally:
        for p in (root_sleeper, other_uid):
            p.kill()
            p.wait()

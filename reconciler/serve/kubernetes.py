"""The Kubernetes manifests that run Palisade: the agent as a DaemonSet, `palisade serve` as a Deployment.

Built from typed values (what the agent mounts and why, which capabilities and why) so that
`palisade install --export` prints them with every privilege justified next to it, and tests can
assert on the values rather than on text. Neither component talks to the API server today (the
agent learns workloads from agent.yaml, the reconciler reads git): the ServiceAccounts carry no
token and no Role or ClusterRole is emitted.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AGENT_CAPABILITIES", "AGENT_MOUNTS", "AGENT_STATE", "API_PORT", "Capability", "Component", "HostMount",
    "InstallOptions", "Manifest", "manifests",
]

API_PORT = 8740
AGENT_STATE = "/var/lib/palisade-agent"
AGENT_CONFIG_DIR = "/etc/palisade"
AGENT_PUBKEY_DIR = "/etc/palisade/trust"
AGENT_METRICS = "127.0.0.1:9740"  # the agent's schema keeps /metrics on loopback (agent-config.schema.json)
RECONCILER_STATE = "/var/lib/palisade"
RECONCILER_KEY_DIR = "/etc/palisade/key"
PUBKEY_CONFIGMAP = "palisade-pubkey"
SIGNING_KEY_SECRET = "palisade-signing-key"
RECONCILER_TOKEN_DIR = "/etc/palisade/token"
TOKEN_SECRET = "palisade-api-token"  # the console and read API beyond loopback need it (serve/auth.py)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class Component(enum.StrEnum):
    AGENT = "agent"
    RECONCILER = "reconciler"


@dataclass(frozen=True)
class Capability:
    """A Linux capability the agent's container adds (everything else is dropped), and what needs it."""

    name: str  # as Kubernetes spells it: no CAP_ prefix
    why: str


#: What the agent does that the kernel checks a capability for (kernel/bpf/syscall.c, kernel/events/core.c).
#: Measured on 6.18 (tests/reconciler/cli/test_cli_install.py): with exactly these, `palisade-agent probe` finds
#: what it finds as full root; without SYS_ADMIN or DAC_OVERRIDE it finds less. SYS_ADMIN also passes the BPF,
#: PERFMON and NET_ADMIN checks there; those three stay listed as the checks the kernel makes first.
AGENT_CAPABILITIES: tuple[Capability, ...] = (
    Capability("BPF", "bpf(2): load programs, create maps and BTF, pin them in bpffs"),
    Capability("PERFMON", "tracepoint and uprobe programs are perfmon program types; perf_event_open of "
                          "tracepoints/uprobes; the verifier's kernel-pointer reads (process cache)"),
    Capability("NET_ADMIN", "cgroup socket programs (sock_create, connect4/6) are net-admin program types; "
                            "attaching them to cgroups and BPF_PROG_QUERY of cgroup hooks"),
    Capability("SYS_ADMIN", "uprobes/uretprobes (EACCES without it) and the ia32 syscall tracepoints (EPERM), "
                            "measured; drift inventory: BPF_{PROG,MAP,LINK}_GET_NEXT_ID and GET_FD_BY_ID list "
                            "every program in the kernel, foreign ones included"),
    Capability("SYS_PTRACE", "seeding the process cache reads /proc/<pid>/exe, cwd and ns/* of every process "
                             "(ptrace read access: denied for a process holding capabilities the agent lacks)"),
    Capability("KILL", "a process that moves out of a policy's scope cgroup while doomed is SIGKILLed from user "
                       "space (bpf/engine.py), whatever its uid"),
    Capability("DAC_OVERRIDE", "the start-up probe proves the cgroup socket hooks on a throwaway cgroup made under "
                               "the cgroup2 root, a directory of mode 0555 (kernfs): without it those hooks "
                               "probe as missing and socket policies are refused"),
)
# Not added: SYS_RESOURCE (RLIMIT_MEMLOCK only matters before 5.11; BPF memory is charged to the memory
# cgroup since), SYSLOG (kallsyms addresses: stack symbols only).


@dataclass(frozen=True)
class HostMount:
    """A host directory the agent's container sees at the same path."""

    name: str
    path: str
    read_only: bool
    why: str
    host_type: str = "Directory"  # the hostPath check; "" = none (the path may be absent on some kernels)
    propagation: str | None = None  # HostToContainer: a file system the host mounts later shows up


AGENT_MOUNTS: tuple[HostMount, ...] = (
    HostMount("bpffs", "/sys/fs/bpf", False,
              "the engine pins programs, maps and links under /sys/fs/bpf/palisade: enforcement outlives the "
              "pod, and the next agent adopts the pins (the host must mount bpffs; the agent cannot)",
              propagation="HostToContainer"),
    HostMount("cgroup", "/sys/fs/cgroup", False,
              "the whole cgroup2 hierarchy (the container's own view holds only its cgroup): cgroup ids for "
              "workload scoping, cgroup fds for socket hooks; writable because the start-up probe proves the "
              "socket hooks on a throwaway cgroup it creates and removes", propagation="HostToContainer"),
    HostMount("tracefs", "/sys/kernel/tracing", True,
              "tracepoint ids and format files (the argument layout of each syscall)", host_type="",
              propagation="HostToContainer"),
    HostMount("debugfs", "/sys/kernel/debug", True,
              "tracefs under debugfs on hosts that mount it only there", host_type="",
              propagation="HostToContainer"),
    HostMount("state", AGENT_STATE, False,
              "trust floor, last-known-good bundle, objects, events, status: a restarted pod keeps enforcing "
              "and refuses rollbacks", host_type="DirectoryOrCreate"),
)
# /proc is not mounted from the host: with hostPID the container's own /proc lists the host's processes.


@dataclass(frozen=True)
class InstallOptions:
    namespace: str = "palisade"
    image: str = "palisade:0.1.0"
    repo_url: str | None = None
    branch: str = "main"
    components: frozenset[Component] = field(default_factory=lambda: frozenset(Component))
    state_size: str = "2Gi"

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r}: a DNS label (a-z, 0-9, -; at most 63)")
        if not self.image or any(c.isspace() for c in self.image):
            raise ValueError(f"image {self.image!r}: an image reference without spaces")
        if not self.components:
            raise ValueError("no component chosen")
        if Component.RECONCILER in self.components and not self.repo_url:
            raise ValueError("the reconciler needs the policy repository's URL")

    @property
    def server_url(self) -> str:
        """Where agents reach the reconciler: its Service, through the cluster's DNS."""
        return f"http://{RECONCILER}.{self.namespace}.svc:{API_PORT}"


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object, with comments: `why` above it, `notes` at the end of lines (path → text)."""

    body: dict[str, Any]
    why: str = ""
    notes: tuple[tuple[tuple[str | int, ...], str], ...] = ()

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


AGENT = "palisade-agent"
RECONCILER = "palisade-reconciler"


def manifests(opts: InstallOptions) -> tuple[Manifest, ...]:
    """The objects to apply, in the order `kubectl apply -f` needs them (namespace first)."""
    out = [_namespace(opts)]
    if Component.AGENT in opts.components:
        out += [_service_account(opts, AGENT, "the agent"), _agent_config(opts), _agent_daemonset(opts)]
    if Component.RECONCILER in opts.components:
        out += [_service_account(opts, RECONCILER, "the reconciler"), _reconciler_pvc(opts),
                _reconciler_deployment(opts), _reconciler_service(opts)]
    return tuple(out)


def _meta(opts: InstallOptions, name: str, component: str | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "palisade", "app.kubernetes.io/part-of": "palisade"}
    if component:
        labels["app.kubernetes.io/component"] = component
    return {"name": name, "namespace": opts.namespace, "labels": labels}


def _selector(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "palisade", "app.kubernetes.io/component": component}


def _namespace(opts: InstallOptions) -> Manifest:
    meta = _meta(opts, opts.namespace)
    del meta["namespace"]
    # hostPID, hostPath and added capabilities are beyond the baseline Pod Security level
    meta["labels"]["pod-security.kubernetes.io/enforce"] = "privileged"
    return Manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": meta},
                    why="The agent needs hostPID, host paths and capabilities: the namespace admits "
                        "privileged-level pods (no container here is `privileged: true`).")


def _service_account(opts: InstallOptions, name: str, who: str) -> Manifest:
    body = {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(opts, name, name.removeprefix("palisade-")),
            "automountServiceAccountToken": False}
    return Manifest(body, why=f"The identity of {who}. No Role or binding: it reads nothing from the API server "
                              "today (workloads come from agent.yaml, policy from git), so it gets no token.")


def _agent_config(opts: InstallOptions) -> Manifest:
    agent_yaml = (
        f"# sensorId and labels come from the command line (the node's name, from the downward API)\n"
        f"server: {opts.server_url}\n"
        f"pubkeys: [{AGENT_PUBKEY_DIR}/palisade.pub]\n"
        f"state: {AGENT_STATE}\n"
        f"metrics: {AGENT_METRICS}\n"
        "intervals: {wait: 30, heartbeat: 15, drift: 2}\n"
        "workloads: []\n"
    )
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(opts, f"{AGENT}-config", "agent"),
            "data": {"agent.yaml": agent_yaml}}
    return Manifest(body, why="agent.yaml (schemas/agent-config.schema.json), mounted read-only.")


def _probe_command(state: str) -> list[str]:
    return ["palisade-agent", "status", "--state", state]


def agent_readiness(state: str = AGENT_STATE) -> list[str]:
    """Ready: every selected policy loaded and not degraded (`palisade-agent status` exit 0)."""
    return _probe_command(state)


def agent_liveness(state: str = AGENT_STATE) -> list[str]:
    """Alive: the agent has written its status (exit 0 or 1); exit 2 is no status at all. A degraded agent
    (server unreachable, disk full) is not restarted: it keeps enforcing what it verified last."""
    return ["sh", "-c", " ".join([*_probe_command(state), ">/dev/null"]) + "; test $? -le 1"]


def _agent_daemonset(opts: InstallOptions) -> Manifest:
    mounts = [{"name": m.name, "mountPath": m.path, "readOnly": m.read_only,
               **({"mountPropagation": m.propagation} if m.propagation else {})} for m in AGENT_MOUNTS]
    mounts += [
        {"name": "config", "mountPath": AGENT_CONFIG_DIR + "/agent.yaml", "subPath": "agent.yaml",
         "readOnly": True},
        {"name": "pubkey", "mountPath": AGENT_PUBKEY_DIR, "readOnly": True},
        {"name": "runtime", "mountPath": "/run/palisade-agent"},
        {"name": "cache", "mountPath": "/var/cache/palisade"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": m.name, "hostPath": {"path": m.path, **({"type": m.host_type} if m.host_type else {})}}
        for m in AGENT_MOUNTS]
    volumes += [
        {"name": "config", "configMap": {"name": f"{AGENT}-config"}},
        {"name": "pubkey", "configMap": {"name": PUBKEY_CONFIGMAP, "defaultMode": 0o444,
                                         "items": [{"key": "palisade.pub", "path": "palisade.pub"}]}},
        {"name": "runtime", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "cache", "emptyDir": {"sizeLimit": "512Mi"}},
    ]
    container = {
        "name": "agent",
        "image": opts.image,
        "command": ["palisade-agent"],
        "args": ["run", "--config", f"{AGENT_CONFIG_DIR}/agent.yaml", "--sensor-id", "$(NODE_NAME)",
                 "--labels", "kubernetes.io/hostname=$(NODE_NAME)"],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "PALISADE_CORE_CACHE", "value": "/var/cache/palisade"}],
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsUser": 0,
            "capabilities": {"drop": ["ALL"], "add": [c.name for c in AGENT_CAPABILITIES]},
            "seccompProfile": {"type": "RuntimeDefault"},
            "appArmorProfile": {"type": "Unconfined"},
        },
        "readinessProbe": {"exec": {"command": agent_readiness()}, "initialDelaySeconds": 5,
                           "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"exec": {"command": agent_liveness()}, "initialDelaySeconds": 60,
                          "periodSeconds": 30, "timeoutSeconds": 10, "failureThreshold": 5},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "volumeMounts": mounts,
    }
    pod = {
        "serviceAccountName": AGENT,
        "automountServiceAccountToken": False,
        "hostPID": True,
        "priorityClassName": "system-node-critical",
        "terminationGracePeriodSeconds": 30,
        "tolerations": [{"operator": "Exists"}],
        "containers": [container],
        "volumes": volumes,
    }
    body = {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(opts, AGENT, "agent"),
        "spec": {
            "selector": {"matchLabels": _selector("agent")},
            # enforcement outlives the agent process (pins in bpffs): a node being updated opens no gap
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": {**_meta(opts, AGENT, "agent")["labels"]}}, "spec": pod},
        },
    }
    c = ("spec", "template", "spec", "containers", 0)
    sc = (*c, "securityContext")
    notes: list[tuple[tuple[str | int, ...], str]] = [
        ((*sc, "capabilities", "add", i), cap.why) for i, cap in enumerate(AGENT_CAPABILITIES)]
    notes += [(("spec", "template", "spec", "volumes", i), m.why) for i, m in enumerate(AGENT_MOUNTS)]
    notes += [
        (("spec", "template", "spec", "hostPID"), "process events and the process cache name host pids; "
                                                  "/proc lists every process"),
        (("spec", "template", "spec", "tolerations"), "every node, tainted ones included"),
        (("spec", "template", "spec", "automountServiceAccountToken"), "the agent does not use the API server"),
        ((*sc, "privileged"), "only the capabilities below, no device access"),
        ((*sc, "runAsUser"), "added capabilities are effective for uid 0 only (no ambient set in Kubernetes)"),
        ((*sc, "seccompProfile"), "runtime profiles allow bpf/perf_event_open to CAP_BPF/CAP_PERFMON "
                                  "(containerd >= 1.6, Docker >= 20.10)"),
        ((*sc, "appArmorProfile"), "the default profile denies writes under /sys/fs/*: pins in bpffs"),
        ((*c, "args", 6), "node labels are not in the downward API; the agent does not read the API server"),
        ((*c, "readinessProbe"), "exit 0: every selected policy loaded, not degraded (agent serves no HTTP "
                                 "health; /metrics is loopback-only)"),
        ((*c, "livenessProbe"), "exit 0/1: the agent wrote its status; a degraded agent keeps enforcing"),
        (("spec", "template", "spec", "volumes", len(AGENT_MOUNTS) + 1),
         "the pinned public key, read-only; whoever may write it chooses whom agents trust: "
         f"kubectl -n {opts.namespace} create configmap {PUBKEY_CONFIGMAP} --from-file=palisade.pub"),
    ]
    return Manifest(body, why="The node agent on every node: pulls signed bundles and enforces them in the kernel.",
                    notes=tuple(notes))


def _reconciler_pvc(opts: InstallOptions) -> Manifest:
    body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(opts, f"{RECONCILER}-state", "reconciler"),
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": opts.state_size}}}}
    return Manifest(body, why="The reconciler's state directory: ledger, bundle store, repository mirror, rollout. "
                              "Losing it loses the version floor agents hold: back it up.")


def _reconciler_deployment(opts: InstallOptions) -> Manifest:
    assert opts.repo_url is not None  # InstallOptions checks it
    http = {"name": "http", "containerPort": API_PORT, "protocol": "TCP"}
    container = {
        "name": "reconciler",
        "image": opts.image,
        "command": ["palisade"],
        "args": ["serve", "--repo", opts.repo_url, "--branch", opts.branch, "--state", RECONCILER_STATE,
                 "--key", f"{RECONCILER_KEY_DIR}/palisade.key", "--listen", f"0.0.0.0:{API_PORT}",
                 "--token-file", f"{RECONCILER_TOKEN_DIR}/token"],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"}],
        "ports": [http],
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsUser": 0,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 30,
                          "periodSeconds": 30, "failureThreshold": 5},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        "volumeMounts": [
            {"name": "state", "mountPath": RECONCILER_STATE},
            {"name": "signing-key", "mountPath": RECONCILER_KEY_DIR, "readOnly": True},
            {"name": "api-token", "mountPath": RECONCILER_TOKEN_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod = {
        "serviceAccountName": RECONCILER,
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [
            {"name": "state", "persistentVolumeClaim": {"claimName": f"{RECONCILER}-state"}},
            {"name": "signing-key", "secret": {"secretName": SIGNING_KEY_SECRET, "defaultMode": 0o400,
                                               "items": [{"key": "palisade.key", "path": "palisade.key"}]}},
            {"name": "api-token", "secret": {"secretName": TOKEN_SECRET, "defaultMode": 0o400,
                                             "items": [{"key": "token", "path": "token"}]}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    body = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(opts, RECONCILER, "reconciler"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": _selector("reconciler")},
            "template": {"metadata": {"labels": {**_meta(opts, RECONCILER, "reconciler")["labels"]}}, "spec": pod},
        },
    }
    c = ("spec", "template", "spec", "containers", 0)
    notes: tuple[tuple[tuple[str | int, ...], str], ...] = (
        (("spec", "strategy"), "the reconciler locks its state directory: the old pod goes before the new starts"),
        ((*c, "securityContext", "runAsUser"), "the signing key must be 0600-like and owned by its reader; a "
                                               "Secret's files are root's: uid 0 with no capability at all"),
        ((*c, "ports", 0), "API and /metrics; a ServiceMonitor scrapes `port: http, path: /metrics`"),
        (("spec", "template", "spec", "volumes", 1),
         f"kubectl -n {opts.namespace} create secret generic {SIGNING_KEY_SECRET} --from-file=palisade.key"),
        (("spec", "template", "spec", "volumes", 2),
         "the console and the read API beyond loopback need a token; agents do not: "
         f"kubectl -n {opts.namespace} create secret generic {TOKEN_SECRET} --from-literal=token=$(openssl rand "
         "-hex 32)"),
        ((*c, "readinessProbe"), "/healthz needs no token and says nothing else"),
    )
    return Manifest(body, why="`palisade serve`: reconciles the repository into signed bundles and serves them.",
                    notes=notes)


def _reconciler_service(opts: InstallOptions) -> Manifest:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(opts, RECONCILER, "reconciler"),
            "spec": {"selector": _selector("reconciler"),
                     "ports": [{"name": "http", "port": API_PORT, "targetPort": "http", "protocol": "TCP"}]}}
    return Manifest(body, why="Agents reach the API here (index, bundles, heartbeats); Prometheus scrapes /metrics "
                              "through the port named http.")


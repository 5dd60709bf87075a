"""TracingPolicies limited to pods by `podSelector`, shared by the container tests and benchmarks."""
from __future__ import annotations

#: An exec allowlist as Tetragon's enforcement docs write one: a process whose binary is not listed dies
#: when it calls execve. Limited to the pods labelled app=web.
EXEC_ALLOWLIST = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: web-exec-allowlist
spec:
  podSelector:
    matchLabels: {app: web}
  kprobes:
    - call: sys_execve
      syscall: true
      args:
        - index: 0
          type: string
      selectors:
        - matchBinaries:
            - operator: NotIn
              values: ["/usr/bin/bash"]
          matchActions:
            - action: Sigkill
"""


def https_only(name: str) -> str:
    """A policy on the cgroup connect hook: a connect to any port but 443 fails with EPERM in app=web."""
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  podSelector:
    matchLabels: {{app: web}}
  kprobes:
    - call: tcp_connect
      syscall: false
      args:
        - index: 0
          type: sock
      selectors:
        - matchArgs:
            - index: 0
              operator: NotDPort
              values: ["443"]
          matchActions:
            - action: Override
              argError: -1
"""

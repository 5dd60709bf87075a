"""The base sensor: `process_exec` and `process_exit` events, as Tetragon emits for every process.

It is an ordinary TracingPolicy on the sched tracepoints (so it loads, pins,
adopts and unloads like any other) under a reserved name; `bpf.events` renders
its records as `process_exec` / `process_exit` instead of `process_tracepoint`.
The agent loads it once per node, in observe mode, unscoped (or scoped to the
workloads it watches).
"""
from __future__ import annotations

from typing import Any

from .policy import TracingPolicy, parse

#: Reserved by convention (with the annotation below, so a user policy of that name stays ordinary).
NAME = "palisade-process-events"

_DOCUMENT: dict[str, Any] = {
    "apiVersion": "cilium.io/v1alpha1",
    "kind": "TracingPolicy",
    "metadata": {"name": NAME, "annotations": {"palisade.dev/base-sensor": "true"}},
    "spec": {"tracepoints": [
        {"subsystem": "sched", "event": "sched_process_exec"},
        # one exit event per process, not per thread: group_dead (format field 7) is set by the last thread
        {"subsystem": "sched", "event": "sched_process_exit", "args": [{"index": 7, "type": "uint8"}],
         "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["1"]}]}]},
    ]},
}


def policy() -> TracingPolicy:
    return parse(_DOCUMENT)


def is_base(p: TracingPolicy) -> bool:
    return p.name == NAME and p.document.get("metadata", {}).get("annotations", {}).get(
        "palisade.dev/base-sensor") == "true"

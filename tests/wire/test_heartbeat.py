"""The typed heartbeat: the agent's encoder, the reconciler's strict parser, and the schema that documents it.

wire/heartbeat.py's parser is the one definition of a valid heartbeat; schemas/heartbeat.schema.json must agree
with it on what agents send (accepted by both) and on what is wrong (refused by both)."""
from __future__ import annotations

import copy
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent import heartbeat as agent_heartbeat
from wire import errors
from wire.heartbeat import (
    MAX_HEARTBEAT_BYTES,
    Counters,
    HealthState,
    LoadStatus,
    Observation,
    encode,
    loads,
    parse,
)
from wire.values import State

SCHEMA = jsonschema.Draft202012Validator(
    json.loads((Path(__file__).resolve().parents[2] / "schemas" / "heartbeat.schema.json").read_text()),
    format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
NOW = _dt.datetime(2026, 11, 21, 12, 0, tzinfo=_dt.UTC)


def _agent_doc() -> dict[str, Any]:
    """What agent.heartbeat builds from an agent's status (Agent.status()) with every member present."""
    status = {
        "sensor": "web-1", "labels": {"role": "web", "zone": ""}, "version": 7, "stage": "canary",
        "commit": "ab" * 20,
        "policies": [
            {"name": "web-exec-allowlist", "status": "loaded", "mode": "enforced", "reason": None,
             "origin": {"kind": "pack", "name": "web-lockdown"}, "version": 7, "loadedDigest": "cd" * 32},
            {"name": "no-raw-sockets", "status": "refused", "mode": "observe", "reason": "kprobes are not available",
             "origin": {"kind": "rule", "name": "no-raw-sockets"}, "version": 7, "loadedDigest": None},
            {"name": "db-only", "status": "inactive", "mode": "observe", "reason": "no workload matches",
             "origin": {"kind": "pack", "name": "db"}, "version": 7, "loadedDigest": None},
        ],
    }
    return agent_heartbeat.document(
        status,
        drift={"detected": 3, "healed": 2, "unhealed": 1,
               "findings": [{"kind": "foreign", "policy": "", "detail": "a program on the cgroup hook"}]},
        counters={"events": 12, "enforced": 2, "wouldHaveEnforced": 5, "refusals": 1, "applies": 4},
        observations=(Observation("web-exec-allowlist", "/usr/bin/curl", 2, "web", "/bin/sh",
                                  "KPROBE_ACTION_SIGKILL", True), Observation("web-exec-allowlist", "/bin/id", 1)),
        now=NOW,
        health={"state": "degraded", "problems": [
            {"kind": "transfer", "key": "transfer:index", "reason": "stalled", "detail": "x" * 3000,
             "since": "2026-11-21T11:58:00Z", "last": "2026-11-21T11:59:00Z", "count": 3}]},
    )


#: What older agents send: no health, no observation details, no mode/origin/version of a policy.
OLD_AGENT = {
    "sensor": "web-1", "labels": {"role": "web"}, "version": 3, "stage": "canary", "commit": "ab" * 20,
    "policies": [{"name": "web-exec-allowlist", "status": "loaded", "mode": "enforced"},
                 {"name": "no-raw-sockets", "status": "refused", "mode": "observe", "reason": "no hook"}],
    "drift": {"detected": 1, "healed": 1, "unhealed": 0, "findings": []},
    "counters": {"events": 12, "enforced": 2, "wouldHaveEnforced": 5},
    "observations": [{"policy": "web-exec-allowlist", "binary": "/usr/bin/curl", "count": 2}],
}


def test_the_agents_heartbeat_is_the_typed_value_the_reconciler_parses() -> None:
    doc = _agent_doc()
    beat = parse(doc, "web-1")
    assert [(p.name, p.status, p.mode) for p in beat.policies] == [
        ("web-exec-allowlist", LoadStatus.LOADED, State.ENFORCED), ("no-raw-sockets", LoadStatus.REFUSED,
                                                                    State.OBSERVE),
        ("db-only", LoadStatus.INACTIVE, State.OBSERVE)]
    assert beat.refused == 1 and beat.policies[1].reason == "kprobes are not available"
    assert beat.policies[0].origin is not None and beat.policies[0].origin.name == "web-lockdown"
    assert (beat.drift.unhealed, beat.drift.findings[0].kind) == (1, "foreign")
    assert (beat.counters.actions, beat.counters.errors, beat.counters.get("events")) == (7, 1, 12)
    assert beat.observations[0] == Observation("web-exec-allowlist", "/usr/bin/curl", 2, "web", "/bin/sh",
                                               "KPROBE_ACTION_SIGKILL", True)
    assert beat.health is not None and beat.health.state is HealthState.DEGRADED
    assert len(beat.health.problems[0].detail) == 2000  # the agent cuts it
    assert beat.time == NOW
    # one encoder: what the agent sends is the encoding of what the reconciler reads
    assert encode(beat) == doc
    assert parse(json.loads(json.dumps(encode(beat))), "web-1") == beat


def test_an_older_agents_heartbeat_is_accepted_and_read_the_same_way() -> None:
    beat = parse(copy.deepcopy(OLD_AGENT), "web-1")
    assert beat.health is None and beat.policies[0].origin is None and beat.policies[0].version is None
    assert beat.observations[0].workload is None and beat.counters == Counters(
        (("events", 12), ("enforced", 2), ("wouldHaveEnforced", 5))) == Counters.of(
        {"wouldHaveEnforced": 5, "enforced": 2, "events": 12})
    assert parse(encode(beat), "web-1") == beat
    # a sensor that has applied nothing yet sends (almost) nothing
    empty = parse({}, "web-1")
    assert (empty.sensor, empty.version, empty.policies, empty.drift.unhealed) == ("web-1", None, (), 0)


@pytest.mark.parametrize("doc", [pytest.param("agent", id="agent"), pytest.param("old", id="old agent"),
                                 pytest.param("minimal", id="minimal")])
def test_the_schema_accepts_what_the_parser_accepts(doc: str) -> None:
    d = {"agent": _agent_doc, "old": lambda: copy.deepcopy(OLD_AGENT), "minimal": lambda: {"sensor": "web-1"}}[doc]()
    parse(d, "web-1")
    SCHEMA.validate(d)
    SCHEMA.validate(encode(parse(d, "web-1")))


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    d = _agent_doc()
    at: Any = d
    for k in path[:-1]:
        at = at[k]
    at[path[-1]] = value
    return d


BAD = [
    ("unknown member", _with(("surprise",), 1), errors.MalformedHeartbeat, "heartbeat: unknown member surprise"),
    ("version as text", _with(("version",), "3"), errors.MalformedHeartbeat, "version: expected an integer"),
    ("version 0", _with(("version",), 0), errors.HeartbeatOutOfRange, "version: 0 is lower than 1"),
    ("version past int64", _with(("version",), 2**63), errors.HeartbeatOutOfRange, "9223372036854775807"),
    ("negative counter", _with(("counters", "events"), -1), errors.HeartbeatOutOfRange, "counters.events"),
    ("counter as text", _with(("counters", "events"), "1"), errors.MalformedHeartbeat, "counters.events"),
    ("label not text", _with(("labels", "role"), 1), errors.MalformedHeartbeat, "labels.role"),
    ("status", _with(("policies", 0, "status"), "weird"), errors.MalformedHeartbeat, r"policies\[0\].status"),
    ("mode", _with(("policies", 0, "mode"), "enforcing"), errors.MalformedHeartbeat, r"policies\[0\].mode"),
    ("policy member", _with(("policies", 0, "loadedDigest"), "x"), errors.MalformedHeartbeat, r"policies\[0\]"),
    ("origin kind", _with(("policies", 0, "origin", "kind"), "repo"), errors.MalformedHeartbeat,
     r"policies\[0\].origin.kind"),
    ("drift kind", _with(("drift", "findings", 0, "kind"), "odd"), errors.MalformedHeartbeat,
     r"drift.findings\[0\].kind"),
    ("drift count", _with(("drift", "unhealed"), -1), errors.HeartbeatOutOfRange, "drift.unhealed"),
    ("observation count", _with(("observations", 0, "count"), 2**63), errors.HeartbeatOutOfRange,
     r"observations\[0\].count"),
    ("observation acted", _with(("observations", 0, "acted"), "yes"), errors.MalformedHeartbeat,
     r"observations\[0\].acted"),
    ("health state", _with(("health", "state"), "bad"), errors.MalformedHeartbeat, "health.state"),
    ("problem kind", _with(("health", "problems", 0, "kind"), "cpu"), errors.MalformedHeartbeat,
     r"health.problems\[0\].kind"),
    ("too many problems", _with(("health", "problems"), [_agent_doc()["health"]["problems"][0]] * 101),
     errors.MalformedHeartbeat, "at most 100"),
    ("time", _with(("time",), "yesterday"), errors.MalformedHeartbeat, "time"),
]


@pytest.mark.parametrize(("doc", "kind", "message"), [pytest.param(d, k, m, id=i) for i, d, k, m in BAD])
def test_a_bad_heartbeat_is_refused_by_the_parser_and_the_schema(doc: dict[str, Any], kind: type[Exception],
                                                                 message: str) -> None:
    with pytest.raises(kind, match=message) as e:
        parse(doc, "web-1")
    assert type(e.value) is kind and isinstance(e.value, ValueError)
    assert not SCHEMA.is_valid(doc)


def test_each_failure_kind_has_its_class_and_code() -> None:
    cases = [
        (lambda: parse(_agent_doc(), "bad id"), errors.BadSensorId, "sensor_id"),
        (lambda: parse(_agent_doc(), "web-2"), errors.SensorMismatch, "sensor_mismatch"),
        (lambda: loads(b" " * (MAX_HEARTBEAT_BYTES + 1), "web-1"), errors.HeartbeatTooLarge, "size"),
        (lambda: loads(b"{not json", "web-1"), errors.MalformedHeartbeat, "malformed"),
        (lambda: loads(b'{"sensor": "\xff"}', "web-1"), errors.MalformedHeartbeat, "malformed"),
        (lambda: loads(b'{"version": 1.5}', "web-1"), errors.MalformedHeartbeat, "malformed"),
        (lambda: loads(b'{"version": 1, "version": 2}', "web-1"), errors.MalformedHeartbeat, "malformed"),
        (lambda: loads(b'{"version": ' + b"9" * 5000 + b"}", "web-1"), errors.HeartbeatOutOfRange, "out_of_range"),
        (lambda: parse([], "web-1"), errors.MalformedHeartbeat, "malformed"),
    ]
    for call, kind, code in cases:
        with pytest.raises(errors.HeartbeatError) as e:
            call()
        assert (type(e.value), e.value.code) == (kind, code), e.value
    assert loads(json.dumps(_agent_doc()).encode(), "web-1") == parse(_agent_doc(), "web-1")

"""Failures are classes: every label the agent shows (metrics, status, heartbeat, events) comes from the
failure's class (`code`), never from its message, and a policy the engine refuses reaches the status as
the one value the engine made.

The rewording tests run each hostile case twice against a real reconciler behind a real proxy, once
with the messages as written and once with every verification and transfer failure saying something
else entirely, and compare everything the agent labels.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import Proxy, Served, make_agent
from nacl.signing import SigningKey

from agent import errors as agent_errors
from agent.apply import NullEnforcer, Refused, apply, plan
from agent.errors import FetchError, HttpStatus
from agent.runner import Agent
from agent.select import Desired
from bpf.errors import PolicyRefusal, RefusalKind
from wire import bundle as B
from wire.bundle import WireError

# ---------------------------------------------------------------------------------------------- the classes

WIRE_CODES: dict[type[WireError], str] = {
    B.Malformed: "malformed", B.OutOfRange: "out_of_range", B.TooLarge: "size", B.DigestMismatch: "digest",
    B.BadSignature: "signature", B.Unsigned: "signature", B.UnknownKey: "signature", B.Expired: "expired",
    B.Replay: "replay", B.Rollback: "rollback", agent_errors.WrongBundle: "mismatch",
    agent_errors.Unreadable: "unreadable",
}

#: class → (code, retried by the client, refused like a failed verification once the retries are over)
FETCH_CODES: dict[type[FetchError], tuple[str, bool, bool]] = {
    agent_errors.Unreachable: ("unreachable", True, False), agent_errors.TimedOut: ("timeout", True, False),
    agent_errors.Stalled: ("stalled", True, False), agent_errors.ServerError: ("http_5xx", True, False),
    agent_errors.NoIndex: ("no_index", True, False), agent_errors.Truncated: ("truncated", True, True),
    agent_errors.ResponseTooLarge: ("too_large", False, True),
    agent_errors.UnexpectedNotModified: ("unexpected_304", False, False),
}


@pytest.mark.parametrize("cls", sorted(WIRE_CODES, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_verification_failure_kind_is_a_class_carrying_its_code(cls: type[WireError]) -> None:
    assert cls("any words at all").code == cls("other words").code == WIRE_CODES[cls]
    assert issubclass(cls, B.VerificationError)


@pytest.mark.parametrize("cls", sorted(FETCH_CODES, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_transfer_failure_kind_is_a_class_carrying_its_code(cls: type[FetchError]) -> None:
    code, retryable, refused = FETCH_CODES[cls]
    err = cls("any words at all")
    assert (err.code, err.retryable, err.refused) == (code, retryable, refused)
    assert err.reason == code  # the older name reads the same label


def test_an_http_status_is_labelled_by_its_number_not_its_text() -> None:
    assert HttpStatus(404, "GET /v1/bundles/9: HTTP 404 (not found)").code == "http_404"
    assert HttpStatus(403, "http_500 in the words").code == "http_403"


def _signed_index(key: SigningKey, **change: Any) -> bytes:
    t0 = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    index = B.Index(serial=5, version=3, issued=t0, expires=t0 + _dt.timedelta(hours=1),
                    bundles=(B.IndexEntry(3, "a" * 64, 100),), stages={})
    return B.sign_index(dataclasses.replace(index, **change), key)


def test_the_codec_raises_the_class_of_each_kind() -> None:
    """The real verify functions on real signed bytes: each refusal is its own class."""
    key, other = SigningKey.generate(), SigningKey.generate()
    good = _signed_index(key)
    now = _dt.datetime.now(_dt.UTC)
    cases: list[tuple[Callable[[], object], type[WireError]]] = [
        (lambda: B.verify_index(b"{", [key.verify_key]), B.Malformed),
        (lambda: B.verify_index(b" " * (B.MAX_INDEX_BYTES + 1), [key.verify_key]), B.TooLarge),
        (lambda: B.verify_index(good, []), B.Unsigned),
        (lambda: B.verify_index(good, [other.verify_key]), B.UnknownKey),
        (lambda: B.verify_index(good, [key.verify_key], now=now + _dt.timedelta(hours=2)), B.Expired),
        (lambda: B.verify_index(good, [key.verify_key], min_serial=6), B.Replay),
        (lambda: B.verify_index(good, [key.verify_key], min_version=4), B.Rollback),
        (lambda: B.verify_index(good.replace(b'"serial":5', b'"serial":' + b"9" * 30), [key.verify_key]),
         B.OutOfRange),
        (lambda: B.verify_object(b"x" * 10, B.BundleObject("a" * 64, "b" * 64, 10, "c" * 64, "generic", False)),
         B.DigestMismatch),
    ]
    for call, cls in cases:
        with pytest.raises(WireError) as err:
            call()
        assert type(err.value) is cls, (cls, err.value)
        assert err.value.code == WIRE_CODES[cls]


# ----------------------------------------------------------------------------- rewording changes no label


@pytest.fixture()
def reworded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Call it to make every verification and transfer failure say something else from then on."""
    def on() -> None:
        words = itertools.count()
        for cls in (WireError, FetchError):
            monkeypatch.setattr(cls, "__str__", lambda self: f"reworded #{next(words)}: {type(self).__name__}")
    yield on


def _expired(served: Served) -> bytes:
    cur = served.store.index()
    assert cur is not None
    past = _dt.datetime.now(_dt.UTC).replace(microsecond=0) - _dt.timedelta(hours=2)
    return B.sign_index(dataclasses.replace(cur, serial=cur.serial + 5, issued=past,
                                            expires=past + _dt.timedelta(hours=1)), served.key)


def _other_key(served: Served) -> bytes:
    cur = served.store.index()
    assert cur is not None
    return B.sign_index(dataclasses.replace(cur, serial=cur.serial + 5), SigningKey.generate())


def _spoiled_bundle(served: Served, proxy: Proxy) -> None:
    """The next bundle with one byte changed in transit: same size, another digest."""
    v = served.relax(next(_EDITS))
    data = served.store.bundle_bytes(v)
    assert data is not None
    at = data.index(b'"commit":"') + len(b'"commit":"')
    proxy.serve(f"/v1/bundles/{v}", data[:at] + (b"0" if data[at:at + 1] != b"0" else b"1") + data[at + 1:])


def _truncated_bundle(served: Served, proxy: Proxy) -> None:
    v = served.relax(next(_EDITS))
    data = served.store.bundle_bytes(v)
    assert data is not None
    proxy.truncate(f"/v1/bundles/{v}", data)


_EDITS = itertools.count(100)

#: case → (make the proxy hostile; whether the agent forgets its ETag first)
CASES: dict[str, tuple[Callable[[Served, Proxy, bytes], object], bool]] = {
    "index signed by another key": (lambda s, p, old: p.serve("/v1/index", _other_key(s)), False),
    "expired index": (lambda s, p, old: p.serve("/v1/index", _expired(s)), False),
    "older index replayed": (lambda s, p, old: p.serve("/v1/index", old), False),
    "bundle spoiled in transit": (lambda s, p, old: _spoiled_bundle(s, p), False),
    "truncated bundle": (lambda s, p, old: _truncated_bundle(s, p), False),
    "50 MB index": (lambda s, p, old: p.flood("/v1/index", 50 * 1024 * 1024, announce=True), False),
    "304 to a request without an ETag": (lambda s, p, old: p.not_modified_forever(), True),
}

#: what each case must be labelled, in every wording
EXPECTED = {
    "index signed by another key": "signature", "expired index": "expired", "older index replayed": "replay",
    "bundle spoiled in transit": "digest", "truncated bundle": "truncated", "50 MB index": "too_large",
    "304 to a request without an ETag": "unexpected_304",
}


def _labels(agent: Agent) -> tuple[dict[str, Any], list[str]]:
    """Everything the agent labels a failure with, and the free text it shows beside the labels."""
    from prometheus_client.parser import text_string_to_metric_families

    assert agent.metrics is not None and agent.events is not None
    samples = sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                     for fam in text_string_to_metric_families(agent.metrics.render().decode())
                     for s in fam.samples
                     if s.name.startswith(("palisade_agent_verification_failures", "palisade_agent_fetch_failures",
                                           "palisade_agent_transfer_stalls")) and not s.name.endswith("_created"))
    status = agent.status()
    beat = agent.heartbeat_document()
    last = status["health"]["lastRefusal"]
    events = [json.loads(line) for line in agent.events.path.read_text().splitlines()]
    refused_events = [e["verification_refused"] for e in events if "verification_refused" in e]
    labels = {
        "metrics": samples,
        "refusals": status["refusals"],
        "lastRefusal": None if last is None else (last["what"], last["reason"]),
        "problems": [(p["kind"], p["reason"]) for p in status["health"]["problems"]],
        "heartbeat": [(p["kind"], p["reason"]) for p in beat["health"]["problems"]],
        "events": [(e["what"], e["reason"]) for e in refused_events],
    }
    texts = [last["detail"]] if last else []
    texts += [p["detail"] for p in status["health"]["problems"]] + [e["detail"] for e in refused_events]
    return labels, texts


async def _run_case(case: str, served: Served, proxy: Proxy, state: Path) -> tuple[dict[str, Any], list[str]]:
    hostile, forget_etag = CASES[case]
    agent = make_agent(proxy.url, served, state, metrics=True, events=True)
    old_index = served.store.index_bytes()
    assert old_index is not None
    served.relax(next(_EDITS))
    assert (await agent.sync_once()).outcome == "applied"
    hostile(served, proxy, old_index)
    if forget_etag:
        agent.etag = None
    try:
        result = await agent.sync_once()
        assert result.outcome == "refused"
    except FetchError:
        pass  # not a refusal: a transfer problem, retried by the pull loop
    finally:
        proxy.tamper = None
        await agent.client.aclose()
    assert agent.events is not None
    agent.events.close()
    return _labels(agent)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rewording_a_failure_changes_no_metric_status_or_heartbeat_label(
        case: str, served: Served, proxy: Proxy, tmp_path: Path, reworded: Callable[[], None]) -> None:
    as_written, texts = asyncio.run(_run_case(case, served, proxy, tmp_path / "as-written"))
    reworded()
    other, other_texts = asyncio.run(_run_case(case, served, proxy, tmp_path / "reworded"))

    assert other == as_written
    code = EXPECTED[case]
    assert any(dict(labels).get("reason") == code for _, labels, _ in as_written["metrics"]), as_written
    assert code in {r for _, r in as_written["problems"]} | set(as_written["refusals"])
    # the rewording took effect: the free text changed, the labels did not
    assert texts and not any(t.startswith("reworded #") for t in texts)
    assert other_texts and all("reworded #" in t for t in other_texts), other_texts


# -------------------------------------------------------------------------- one refusal value, engine to status


class _RefusingEnforcer(NullEnforcer):
    """Holds policies in memory like NullEnforcer, and refuses one by name with the engine's value."""

    def __init__(self, name: str, refusal: PolicyRefusal) -> None:
        super().__init__()
        self.name, self.refusal = name, refusal

    def load(self, policy: Desired) -> Any:
        if policy.name == self.name:
            raise Refused(self.refusal)
        return super().load(policy)


def test_a_refused_policy_reaches_status_and_heartbeat_as_the_value_the_engine_made(served: Served,
                                                                                   tmp_path: Path) -> None:
    refusal = PolicyRefusal(RefusalKind.UNSUPPORTED, ("unsupported: kprobe on x needs kprobes", "unsupported: y"))

    async def run() -> Agent:
        agent = make_agent(served.url, served, tmp_path / "agent", metrics=True)
        agent.enforcer = _RefusingEnforcer("web-exec-allowlist", refusal)
        assert (await agent.sync_once()).outcome == "applied"
        await agent.client.aclose()
        return agent

    agent = asyncio.run(run())
    assert agent.applied is not None
    held = next(p for p in agent.applied.statuses if p.name == "web-exec-allowlist")
    assert held.refusal is refusal and held.status == "refused"
    # the JSON shows the text it always showed: the reasons joined by "; "
    shown = next(p for p in agent.status()["policies"] if p["name"] == "web-exec-allowlist")
    assert (shown["status"], shown["reason"]) == ("refused", "unsupported: kprobe on x needs kprobes; unsupported: y")
    beat = next(p for p in agent.heartbeat_document()["policies"] if p["name"] == "web-exec-allowlist")
    assert (beat["status"], beat["reason"]) == ("refused", shown["reason"])
    others = [p for p in agent.status()["policies"] if p["name"] != "web-exec-allowlist"]
    assert others and all(p["status"] == "loaded" and p["reason"] is None for p in others)


NO_SUCH_FUNCTION = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: no-such-function
spec:
  kprobes:
    - call: palisade_no_such_function
      syscall: false
      args:
        - index: 0
          type: int
"""


@pytest.mark.kernel
def test_the_engine_refusal_is_the_status_reason_on_the_kernel(require_kernel: None) -> None:
    """On the real kernel: what `Engine.load` refuses is the PolicyStatus's refusal, with the engine's words."""
    import yaml
    from agent_support import engine_enforcer

    from bpf.policy import parse
    from wire.values import Scope, State

    desired = Desired("no-such-function", B.Origin("rule", "no-such-function"), Scope(), State.OBSERVE,
                      NO_SUCH_FUNCTION, B.sha256_hex(NO_SUCH_FUNCTION.encode()), 1, "c" * 40)
    with engine_enforcer([], "palisade-codes") as enforcer:
        direct = enforcer.engine.load(parse(yaml.safe_load(NO_SUCH_FUNCTION)))
        assert not direct.loaded and direct.refusal is not None
        report = apply(enforcer, plan(enforcer.loaded(), [desired]))
    (status,) = report.policies
    assert status.status == "refused" and status.refusal is not None
    assert status.refusal.kind == direct.refusal.kind
    assert status.refusal.reasons[:len(direct.refusal.reasons)] == direct.refusal.reasons
    assert status.to_json()["reason"] == status.refusal.text
    assert "palisade_no_such_function" in status.to_json()["reason"]


def test_no_agent_module_classifies_a_failure_by_its_message() -> None:
    """The guard of the rule above: no substring test, prefix test or pattern on an error's text."""
    import re

    root = Path(__file__).resolve().parents[2]
    looks = re.compile(r"in str\((e|err|exc|error)\)|str\((e|err|exc|error)\)\.(startswith|endswith|find|split)"
                       r"|\.args\[0\]|re\.\w+\([^)]*str\((e|err|exc|error)\)")
    files = [*sorted((root / "agent").rglob("*.py")), root / "wire" / "bundle.py"]
    found = [f"{f.relative_to(root)}:{n}" for f in files
             for n, line in enumerate(f.read_text().splitlines(), 1) if looks.search(line)]
    assert found == []

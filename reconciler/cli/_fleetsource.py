"""Where the operator commands read the fleet: a running server (`--server URL`, GET /v1/agents and
/v1/observations) or the reconciler's state directory (`--state DIR`, its SQLite directly).

Both give the same typed values (reconciler.state.fleet.AgentRecord, ObservationRow); a server that
is down, or answers something that is not a palisade fleet view, is a clear error (exit 2).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import PalisadeError, StateError, UsageError
from reconciler.state.fleet import FLEET_DB, AgentRecord, Fleet, ObservationRow
from reconciler.state.statedir import StateView

_TIME = "%Y-%m-%dT%H:%M:%SZ"
_MAX_BYTES = 64 * 1024 * 1024


def add_arguments(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--server", metavar="URL", help="read the fleet from a running `palisade serve`")
    g.add_argument("--state", metavar="DIR", type=Path,
                   help="read the fleet from the reconciler's state directory (its fleet.db)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for --server (default: 10)")


@dataclass(frozen=True)
class Query:
    policies: tuple[str, ...] | None = None
    sensor: str | None = None
    binary: str | None = None
    workload: str | None = None
    since: _dt.datetime | None = None
    until: _dt.datetime | None = None
    limit: int = 100_000


class FleetSource:
    """Agents and observations from `--server` or `--state`."""

    def __init__(self, server: str | None, state: Path | None, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/") if server else None
        self.state = state
        self.timeout = timeout
        self._fleet: Fleet | None = None
        if self.server is not None and not re.match(r"^https?://", self.server):
            raise UsageError(f"--server {server!r}: expected a URL such as http://127.0.0.1:8740")
        if self.state is not None:
            view = StateView(self.state)
            if not view.has_fleet():
                raise StateError(f"--state {self.state}: no {FLEET_DB} there (is it the reconciler's state "
                                 "directory, and has any agent reported?)")
            self._fleet = Fleet.open(view)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FleetSource | None:
        if getattr(args, "server", None) is None and getattr(args, "state", None) is None:
            return None
        return cls(args.server, args.state, getattr(args, "timeout", 10.0))

    @property
    def where(self) -> str:
        return self.server or str(self.state)

    def close(self) -> None:
        if self._fleet is not None:
            self._fleet.close()

    def agents(self) -> list[AgentRecord]:
        if self._fleet is not None:
            return self._fleet.agents()
        doc = self._get("/v1/agents", [])
        items = doc.get("agents") if isinstance(doc, Mapping) else None
        if not isinstance(items, list):
            raise PalisadeError(f"{self.server}/v1/agents: not a fleet listing")
        return [_agent(a, self.where) for a in items]

    def observations(self, q: Query) -> list[ObservationRow]:
        if self._fleet is not None:
            return self._fleet.query(policies=q.policies, sensor=q.sensor, binary=q.binary, workload=q.workload,
                                     since=q.since, until=q.until, limit=q.limit)
        if q.policies == ():
            return []
        params: list[tuple[str, str]] = [("policy", p) for p in q.policies or ()]
        params += [(k, v) for k, v in (("sensor", q.sensor), ("binary", q.binary), ("workload", q.workload))
                   if v is not None]
        params += [(k, t.strftime(_TIME)) for k, t in (("since", q.since), ("until", q.until)) if t is not None]
        params.append(("limit", str(q.limit)))
        doc = self._get("/v1/observations", params)
        items = doc.get("observations") if isinstance(doc, Mapping) else None
        if not isinstance(items, list):
            raise PalisadeError(f"{self.server}/v1/observations: not an observations listing")
        return [_row(o, self.where) for o in items]

    def _get(self, path: str, params: list[tuple[str, str]]) -> Any:
        import httpx

        from ._token import HINT, auth_headers

        url = f"{self.server}{path}"
        try:
            r = httpx.get(url, params=tuple(params), timeout=self.timeout, headers=auth_headers())
        except httpx.HTTPError as e:
            raise PalisadeError(f"cannot reach {url}: {e or type(e).__name__}") from None
        if r.status_code == 401:
            raise PalisadeError(f"{url}: 401: {HINT}")
        if r.status_code == 404:
            raise PalisadeError(f"{url}: 404 — the server has no fleet view (an older `palisade serve`?)")
        if r.status_code != 200:
            detail = r.text[:300].strip()
            raise PalisadeError(f"{url}: HTTP {r.status_code}: {detail}")
        if len(r.content) > _MAX_BYTES:
            raise PalisadeError(f"{url}: answer larger than {_MAX_BYTES} bytes")
        try:
            return r.json()
        except ValueError:
            raise PalisadeError(f"{url}: the answer is not JSON") from None


def parse_when(text: str | None, now: _dt.datetime, flag: str) -> _dt.datetime | None:
    """`24h` / `7d` (that long before now) or an RFC 3339 time; UsageError otherwise."""
    from reconciler.repository.model import parse_duration

    if text is None:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: use a duration before now (24h, 7d) or a time "
                         "(2026-01-31T12:00:00Z)") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=_dt.UTC)


def _agent(a: Any, where: str) -> AgentRecord:
    try:
        return AgentRecord.from_json(a)
    except ValueError as e:
        raise PalisadeError(f"{where}: a malformed agent in the fleet listing ({e})") from None


def _row(o: Any, where: str) -> ObservationRow:
    try:
        acted = o.get("acted")
        return ObservationRow(str(o["sensor"]), str(o["policy"]), str(o["binary"]), o.get("workload"),
                              o.get("parent"), o.get("action"), None if acted is None else bool(acted),
                              int(o["count"]), _time(o["first"]), _time(o["last"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PalisadeError(f"{where}: a malformed observation ({e})") from None


def _time(text: str) -> _dt.datetime:
    return _dt.datetime.strptime(text, _TIME).replace(tzinfo=_dt.UTC)

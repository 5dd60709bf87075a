"""HTTP to the reconciler: the index (long-poll), bundles by version, objects by digest, heartbeats.

Index, bundles and objects come from the bundle source (`source`, default the reconciler): a static
server, object store or CDN serving a `palisade publish` mirror is one too, at the same paths below its
base URL. Such a source cannot hold a request, so with `long_poll=False` no `wait` is ever sent (a
static server may answer a query string with 404 or ignore it) and the caller polls (`Pacer.jitter`);
its ETag or, lacking one, its Last-Modified makes an unchanged index a 304. Heartbeats always go to
`server`.

The transport is not trusted: everything fetched here is verified by the
caller with `wire.bundle`. This module only makes sure that what it hands
over is a complete response no larger than allowed — a body is read as a stream
and refused as soon as it passes the limit, so a hostile or broken server cannot
make the agent buffer 50 MB to learn that an index is too large — and retries
transient failures (network errors, timeouts, 5xx, truncated bodies, stalls) with
exponential backoff and jitter.

Every request has a *total* deadline, not only a timeout per read, so a server
that trickles one byte every few seconds cannot hold the agent: the index gets
the long-poll wait plus `DEADLINE_MARGIN`, a bundle `BUNDLE_DEADLINE` plus the
time to receive its announced size at `MIN_RATE` bytes/s, a heartbeat
`HEARTBEAT_DEADLINE`. A request past its deadline fails as `stalled` and is
retried with backoff; every attempt's outcome goes to the observers
(`observe`), which is how a stall shows in status, metrics and the heartbeat
while the retries go on.
"""
from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_never, wait_exponential_jitter

from wire.bundle import MAX_BUNDLE_BYTES, MAX_INDEX_BYTES, MAX_OBJECT_BYTES

from .errors import (
    FetchError,
    HttpStatus,
    NoIndex,
    ResponseTooLarge,
    ServerError,
    Stalled,
    TimedOut,
    Truncated,
    UnexpectedNotModified,
    Unreachable,
)

__all__ = ["BUNDLE_DEADLINE", "DEADLINE_MARGIN", "HEARTBEAT_DEADLINE", "MIN_POLL", "MIN_RATE",
           "Client", "IndexReply", "Observer", "Pacer"]

MAX_HEARTBEAT_REPLY = 64 * 1024
#: Seconds an index response may take beyond the long-poll wait (the per-read timeout it replaces was 15).
DEADLINE_MARGIN = 15.0
#: Seconds a bundle response may take beyond its transfer at MIN_RATE (a loaded server, a fleet fetching at once).
BUNDLE_DEADLINE = 30.0
#: Bytes per second below which a bundle transfer is a stall (32 MB, the limit, in about 2 min 20 s).
MIN_RATE = 256 * 1024
HEARTBEAT_DEADLINE = 10.0
_MAX_LENGTH_DIGITS = 19
#: Seconds between the starts of two index requests, at least, whatever the server answers.
MIN_POLL = 1.0

#: `observer(what, error)` after every attempt: what is "index", "bundle", "object" or "heartbeat"; error None
#: on success.
Observer = Callable[[str, FetchError | None], None]


@dataclass(frozen=True)
class IndexReply:
    """The index bytes (None when the server says our copy is current) and the validators to send next:
    the ETag, and the Last-Modified (used only when the source gives no ETag)."""

    data: bytes | None
    etag: str | None
    last_modified: str | None = None


@dataclass(frozen=True)
class Pacer:
    """How long to leave between the starts of two index requests, whatever the server does.

    A server that holds the long-poll sets the pace itself; one that answers
    "nothing new" at once (a static file server, a broken proxy, a hostile
    server answering 304 to everything) would otherwise be asked again and
    again in a hot loop. So: never less than `minimum` between two starts, and
    while replies come back early with nothing new, the gap doubles up to
    `ceiling` (the long-poll wait), back to `minimum` once the server held the
    request. Right after a reply that brought a new verified bundle the next
    request goes at once: only the reconciler's key can make one, so this cannot
    turn into a loop, and a publish that follows closely is not held back a second.

    `jitter` (a fraction) lengthens every gap by up to that share of it, at random: a fleet polling a
    static source (`polling`) spreads out instead of asking all in the same second.
    """

    minimum: float = MIN_POLL
    ceiling: float = 30.0
    gap: float = MIN_POLL
    jitter: float = 0.0

    @classmethod
    def polling(cls, every: float, jitter: float = 0.2) -> Pacer:
        """A source without long-poll: one index request every `every` seconds (at least MIN_POLL), jittered."""
        every = max(MIN_POLL, every)
        return cls(every, every, every, jitter)

    def after(self, outcome: str, elapsed: float, asked: float | None) -> Pacer:
        """The pacer for the next request, after one that ended with `outcome` in `elapsed` seconds."""
        early = asked is None or elapsed < asked / 2
        if outcome == "applied":
            gap = 0.0
        elif outcome in ("unchanged", "current") and early:
            gap = min(max(self.ceiling, self.minimum), max(self.minimum, self.gap * 2))
        else:
            gap = self.minimum
        if gap > 0 and self.jitter > 0:
            base = min(gap, max(self.ceiling, self.minimum))  # jitter is added to the capped gap, never compounded
            gap = base * (1 + random.uniform(0, self.jitter))
        return Pacer(self.minimum, self.ceiling, gap, self.jitter)


class Client:
    """One reconciler API endpoint (heartbeats) and the bundle source (`source`, default the same).

    `long_poll=False`: the source cannot hold requests, `index` never sends `wait`.
    `attempts` bounds the tries of one call (None: retry transient failures
    until cancelled, which is what a node agent wants); `retry_max` caps the
    backoff in seconds. `on_retry(err)` is called before each backoff sleep.
    `deadline_margin`, `bundle_deadline`, `min_rate` and `heartbeat_deadline`
    set the total deadlines (module docstring).
    """

    def __init__(self, server: str, *, http: httpx.AsyncClient | None = None, attempts: int | None = None,
                 retry_initial: float = 0.2, retry_max: float = 30.0, connect_timeout: float = 5.0,
                 on_retry: Callable[[FetchError], None] | None = None, deadline_margin: float = DEADLINE_MARGIN,
                 bundle_deadline: float = BUNDLE_DEADLINE, min_rate: float = MIN_RATE,
                 heartbeat_deadline: float = HEARTBEAT_DEADLINE, source: str | None = None,
                 long_poll: bool = True) -> None:
        self.server = server.rstrip("/")
        self.source = (source or server).rstrip("/")
        self.long_poll = long_poll
        self._own = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=connect_timeout))
        self._connect_timeout = connect_timeout
        self._attempts = attempts
        self._initial, self._max = retry_initial, retry_max
        self._on_retry = on_retry
        self.deadline_margin, self.bundle_deadline = deadline_margin, bundle_deadline
        self.min_rate, self.heartbeat_deadline = min_rate, heartbeat_deadline
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> None:
        """Call `observer(what, error_or_None)` after every attempt of every call."""
        self._observers.append(observer)

    def _notify(self, what: str, err: FetchError | None) -> None:
        for fn in self._observers:
            fn(what, err)

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- calls -------------------------------------------------------------

    async def index(self, etag: str | None = None, wait: float | None = None,
                    last_modified: str | None = None) -> IndexReply:
        """The index; with `etag` and `wait`, held by the server until it changes (or 304 after `wait`).

        Without long-poll `wait` is ignored; `last_modified` is sent as If-Modified-Since when there is
        no `etag` (a source that gives no ETag)."""
        if not self.long_poll:
            wait = None
        params = {"wait": _fmt_wait(wait)} if wait else None
        headers = {"If-None-Match": etag} if etag else {"If-Modified-Since": last_modified} if last_modified else {}
        deadline = (wait or 0) + self.deadline_margin
        status, body, resp_headers = await self._retrying(
            "GET", "/v1/index", params=params, headers=headers, limit=MAX_INDEX_BYTES, read_timeout=deadline,
            deadline=deadline, what="index", base=self.source)
        new_etag = resp_headers.get("etag") or etag
        new_modified = resp_headers.get("last-modified") or last_modified
        if status == 304:
            if not headers:
                # "not modified" compared with nothing: the server will not give us an index at all
                err = UnexpectedNotModified("GET /v1/index: 304 Not Modified to a request without If-None-Match")
                self._notify("index", err)
                raise err
            return IndexReply(None, new_etag, new_modified)
        return IndexReply(body, resp_headers.get("etag"), resp_headers.get("last-modified"))

    async def bundle(self, version: int, size: int) -> bytes:
        """Bundle `version`; `size` (from the verified index) is the most that will be read."""
        limit = min(size, MAX_BUNDLE_BYTES)
        deadline = self.bundle_deadline + limit / self.min_rate
        _, body, _ = await self._retrying("GET", f"/v1/bundles/{int(version)}", limit=limit,
                                          read_timeout=min(30.0, deadline), deadline=deadline, what="bundle",
                                          base=self.source)
        return body

    async def object(self, sha256: str, size: int) -> bytes:
        """The CO-RE object named `sha256` (from a verified bundle); `size` (also signed) is the most read."""
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
        limit = min(size, MAX_OBJECT_BYTES)
        deadline = self.bundle_deadline + limit / self.min_rate
        _, body, _ = await self._retrying("GET", f"/v1/objects/{sha256}", limit=limit,
                                          read_timeout=min(30.0, deadline), deadline=deadline, what="object",
                                          base=self.source)
        return body

    async def heartbeat(self, sensor_id: str, doc: Mapping[str, Any], timeout: float | None = None) -> None:
        """POST a heartbeat once (the next interval sends a fresh one, so no retry here)."""
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        deadline = self.heartbeat_deadline if timeout is None else timeout
        await self._once("POST", f"/v1/agents/{sensor_id}/heartbeat", content=body,
                         headers={"Content-Type": "application/json"}, limit=MAX_HEARTBEAT_REPLY,
                         read_timeout=deadline, deadline=deadline, what="heartbeat")

    # -- internals ---------------------------------------------------------

    async def _retrying(self, method: str, path: str, **kw: Any) -> tuple[int, bytes, httpx.Headers]:
        def before_sleep(state: Any) -> None:
            err = state.outcome.exception() if state.outcome else None
            if self._on_retry is not None and isinstance(err, FetchError):
                self._on_retry(err)

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, FetchError) and e.retryable),
            wait=wait_exponential_jitter(multiplier=self._initial, max=self._max, jitter=self._initial),
            stop=stop_never if self._attempts is None else stop_after_attempt(self._attempts),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, path, **kw)
        raise AssertionError("unreachable")  # pragma: no cover - tenacity either returns or raises

    async def _once(self, method: str, path: str, *, limit: int, read_timeout: float, deadline: float, what: str,
                    params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
                    content: bytes | None = None, base: str | None = None) -> tuple[int, bytes, httpx.Headers]:
        try:
            async with asyncio.timeout(deadline):
                out = await self._attempt(method, path, limit=limit, read_timeout=read_timeout, params=params,
                                          headers=headers, content=content, base=base or self.server)
        except TimeoutError:
            err = Stalled(f"{method} {path}: no complete response within the deadline of {deadline:g}s "
                          f"(a slow or stalled server)")
            self._notify(what, err)
            raise err from None
        except FetchError as e:
            self._notify(what, e)
            raise
        self._notify(what, None)
        return out

    async def _attempt(self, method: str, path: str, *, limit: int, read_timeout: float,
                       params: Mapping[str, str] | None, headers: Mapping[str, str] | None,
                       content: bytes | None, base: str) -> tuple[int, bytes, httpx.Headers]:
        url = base + path
        timeout = httpx.Timeout(read_timeout, connect=self._connect_timeout)
        try:
            async with self._http.stream(method, url, params=params, headers=headers, content=content,
                                         timeout=timeout) as r:
                if r.status_code == 304:
                    return 304, b"", r.headers
                declared = _content_length(r.headers)
                if declared is not None and declared > limit and r.status_code < 300:
                    raise ResponseTooLarge(f"{method} {path}: the server announces {declared} bytes, "
                                           f"more than the limit of {limit}")
                body = await _read_limited(r, min(limit, MAX_HEARTBEAT_REPLY) if r.status_code >= 300 else limit,
                                           f"{method} {path}")
                if declared is not None and len(body) != declared:
                    raise Truncated(f"{method} {path}: got {len(body)} of {declared} bytes")
                if r.status_code >= 500:
                    raise ServerError(f"{method} {path}: HTTP {r.status_code} {_detail(body)}")
                if r.status_code == 404 and path == "/v1/index":
                    raise NoIndex(f"{method} {path}: nothing is published yet")
                if r.status_code >= 300:
                    raise HttpStatus(r.status_code, f"{method} {path}: HTTP {r.status_code} {_detail(body)}")
                return r.status_code, body, r.headers
        except FetchError:
            raise
        except httpx.TimeoutException as e:
            raise TimedOut(f"{method} {url}: timed out ({type(e).__name__})") from None
        except httpx.RemoteProtocolError as e:
            # h11 raises this when the peer closes before the announced body is complete.
            raise Truncated(f"{method} {url}: incomplete response ({e})") from None
        except (httpx.TransportError, OSError) as e:
            raise Unreachable(f"{method} {url}: {e or type(e).__name__}") from None


async def _read_limited(r: httpx.Response, limit: int, what: str) -> bytes:
    buf = bytearray()
    async for chunk in r.aiter_bytes():
        buf += chunk
        if len(buf) > limit:
            raise ResponseTooLarge(f"{what}: response passed the limit of {limit} bytes; refused")
    return bytes(buf)


def _content_length(headers: httpx.Headers) -> int | None:
    raw = headers.get("content-length")
    if raw is None or not raw.strip().isascii() or not raw.strip().isdigit():
        return None
    if len(raw.strip()) > _MAX_LENGTH_DIGITS:
        return MAX_BUNDLE_BYTES + 1  # more than any limit: refused as too large, without building the number
    return int(raw)


def _detail(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return f"({doc.get('error')}: {doc.get('detail')})" if isinstance(doc, dict) else ""
    except ValueError:
        return ""


def _fmt_wait(wait: float) -> str:
    # the server accepts at most 3 decimals; a little jitter spreads a fleet's re-polls
    return f"{max(0.001, min(300.0, wait * random.uniform(0.9, 1.0))):.3f}"

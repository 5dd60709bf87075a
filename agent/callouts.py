"""GetUrl and DnsLookup: requests the agent sends when a policy's selector with those actions matches.

Tetragon's agent sends them from user space as each such event arrives (an HTTP GET of `argUrl`, a
DNS question for `argFqdn`), typically to set off a canary token, whose owner is alerted when it is
requested. The engine names them in the event (`palisade.callouts`, bpf.compile.Callout); here:

- only in enforced mode: at observe and enforce_ready nothing is sent, and the event says what would
  have been (`status: would_have_sent`);
- never on the event reader's thread: `submit` queues the request and returns, worker threads send it,
  each with a timeout;
- rate-limited per target (a token bucket for each URL or name): a burst of matches sends a few
  requests, not one per event; the bounded queue drops what does not fit;
- every callout of an event gets a `status`: `queued`, `would_have_sent`, `rate_limited` or `dropped`.
  What became of a queued one is logged and counted (`stats`, and the agent's metrics).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import dnsquery

__all__ = ["CalloutSettings", "CalloutStats", "Callouts"]

log = logging.getLogger("palisade.agent.callouts")

#: How many distinct targets keep a token bucket (more are forgotten, oldest first).
_MAX_TARGETS = 4096
#: Bytes of an answer read before the connection is dropped (the request is what counts).
_READ_LIMIT = 64 * 1024


@dataclass(frozen=True)
class CalloutSettings:
    """agent.yaml `callouts`: where DnsLookup asks, how long a request may take, how often a target is hit."""

    dns_resolver: tuple[str, int] = ("1.1.1.1", 53)  # Tetragon's resolver
    timeout: float = 5.0
    #: Requests per second to one target, on average, and how many may go at once after a quiet time.
    rate: float = 1.0
    burst: int = 5
    queue: int = 256
    workers: int = 2


@dataclass
class CalloutStats:
    sent: int = 0  # answered (any HTTP status, any DNS rcode)
    failed: int = 0  # no answer: refused, timed out, unreachable
    would_have_sent: int = 0
    rate_limited: int = 0
    dropped: int = 0  # the queue was full

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True)
class _Request:
    action: str
    arg: str
    policy: str


class Callouts:
    """The agent's sender of GetUrl/DnsLookup requests. `on_outcome(action, outcome)` is told each callout's
    fate (`outcome`: a CalloutStats field name)."""

    def __init__(self, settings: CalloutSettings | None = None,
                 on_outcome: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings or CalloutSettings()
        self.on_outcome = on_outcome
        self.stats = CalloutStats()
        self._queue: queue.Queue[_Request | None] = queue.Queue(self.settings.queue)
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()
        # a default opener: proxies from the environment, redirects followed, as Tetragon's Go http.Get does
        self._opener = urllib.request.build_opener()
        self._opener.addheaders = [("User-Agent", "palisade-agent")]
        self._workers = [threading.Thread(target=self._work, name=f"palisade-callout-{k}", daemon=True)
                         for k in range(self.settings.workers)]
        for t in self._workers:
            t.start()

    def submit(self, event: Mapping[str, Any]) -> None:
        """Queue the requests `event` names (and mark each in the event). Returns at once."""
        pal = event.get("palisade")
        if not isinstance(pal, dict) or not isinstance(pal.get("callouts"), list):
            return
        enforced = pal.get("mode") == "enforced"
        policy = str(pal.get("policy_key", ""))
        for c in pal["callouts"]:
            if not isinstance(c, dict):
                continue
            action = str(c.get("action"))
            arg = c.get("argUrl") if action == "GetUrl" else c.get("argFqdn") if action == "DnsLookup" else None
            if not isinstance(arg, str):
                continue
            if not enforced:
                c["status"] = self._count(action, "would_have_sent")
            elif not self._take(action, arg):
                c["status"] = self._count(action, "rate_limited")
            else:
                try:
                    self._queue.put_nowait(_Request(action, arg, policy))
                    c["status"] = "queued"
                except queue.Full:
                    c["status"] = self._count(action, "dropped")

    def close(self, timeout: float = 2.0) -> None:
        """Stop the workers once they finish what they are sending (waiting at most `timeout` seconds each);
        what is still queued is not sent."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._workers:
            self._queue.put(None)
        for t in self._workers:
            t.join(timeout)

    def idle(self) -> bool:
        """Nothing queued or being sent (for callers that wait for the requests to go)."""
        return self._queue.unfinished_tasks == 0

    # ------------------------------------------------------------------ internals

    def _take(self, action: str, arg: str) -> bool:
        now = time.monotonic()
        s = self.settings
        with self._lock:
            b = self._buckets.get((action, arg))
            if b is None:
                if len(self._buckets) >= _MAX_TARGETS:
                    self._buckets.pop(next(iter(self._buckets)))
                b = self._buckets[(action, arg)] = _Bucket(float(s.burst), now)
            b.tokens = min(float(s.burst), b.tokens + (now - b.at) * s.rate)
            b.at = now
            if b.tokens < 1:
                return False
            b.tokens -= 1
            return True

    def _count(self, action: str, outcome: str) -> str:
        with self._lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        if self.on_outcome is not None:
            self.on_outcome(action, outcome)
        return outcome

    def _work(self) -> None:
        while True:
            req = self._queue.get()
            try:
                if req is None:
                    return
                self._send(req)
            finally:
                self._queue.task_done()

    def _send(self, req: _Request) -> None:
        timeout = self.settings.timeout
        try:
            if req.action == "GetUrl":
                try:
                    with self._opener.open(req.arg, timeout=timeout) as r:
                        r.read(_READ_LIMIT)
                        status = r.status
                except urllib.error.HTTPError as e:  # answered, with an error status: it reached the server
                    status = e.code
                log.info("GetUrl %s (policy %s): HTTP %s", req.arg, req.policy, status)
            else:
                ans = dnsquery.query(req.arg, self.settings.dns_resolver, timeout)
                log.info("DnsLookup %s (policy %s): rcode %d, %d answers", req.arg, req.policy, ans.rcode,
                         ans.answers)
        except (OSError, ValueError) as e:  # URLError, timeouts, DnsNoAnswer, DnsBadName
            log.warning("%s %s (policy %s) failed: %s", req.action, req.arg, req.policy, e)
            self._count(req.action, "failed")
            return
        self._count(req.action, "sent")

"""The token of `palisade serve --token-file`: what people read (the console, status, fleet, observations,
metrics, the API description) needs it; what agents use (the index, bundles, objects, heartbeats) does not,
as before: bundles are signed and agents verify them, and a heartbeat is only ever stored. Push webhooks
(POST /v1/hooks/NAME) carry their own HMAC signature instead.

A server listening beyond loopback must have a token (`require_token`): the console and the read API show
everything the fleet reports. Clients send `Authorization: Bearer <token>`. A browser cannot send a header
on a plain link, so the console also takes the token once as `?token=<token>` on any /ui URL: the answer is
a redirect to the same URL without it, setting the token as an HttpOnly, SameSite=Strict cookie
(`palisade_token`, path /), which later requests carry. Tokens are compared in constant time.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from reconciler.errors import UsageError

__all__ = ["COOKIE", "MIN_TOKEN_LENGTH", "TokenGuard", "is_loopback", "load_token", "needs_token", "require_token"]

COOKIE = "palisade_token"
MIN_TOKEN_LENGTH = 16
# Characters a cookie value and a URL query carry as they are.
_TOKEN = re.compile(rf"^[A-Za-z0-9._~+/=-]{{{MIN_TOKEN_LENGTH},4096}}$")
#: What agents call: open without a token (the heartbeat is `POST /v1/agents/{id}/heartbeat`).
_AGENT_PREFIXES = ("/v1/index", "/v1/bundles/", "/v1/objects/")


def is_loopback(host: str) -> bool:
    """Whether listening on `host` reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, assume it is reachable


def load_token(path: Path) -> str:
    """The token in file `path` (surrounding whitespace dropped); UsageError if unreadable or too short."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--token-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not _TOKEN.match(text):
        raise UsageError(f"--token-file {path}: the token must be at least {MIN_TOKEN_LENGTH} characters of "
                         "letters, digits and ._~+/=- (e.g. `openssl rand -hex 32 > FILE`)")
    return text


def require_token(host: str, token_file: Path | None) -> str | None:
    """The token to require, read from `token_file`; UsageError when listening beyond loopback without one."""
    if token_file is None:
        if not is_loopback(host):
            raise UsageError(f"--listen {host}: listening beyond loopback needs --token-file FILE (the console and "
                             "the read API show the whole fleet); create one with `openssl rand -hex 32 > FILE`")
        return None
    return load_token(token_file)


def needs_token(method: str, path: str) -> bool:
    """Everything but the agents' endpoints, the webhooks and the probes' /healthz."""
    if path.startswith(_AGENT_PREFIXES) or path == "/healthz":  # healthz: probes, which say nothing else
        return False
    if method == "POST" and path.startswith("/v1/hooks/"):
        return False  # webhooks prove themselves with their HMAC signature (hooks.py)
    return not (method == "POST" and path.startswith("/v1/agents/") and path.endswith("/heartbeat"))


@dataclass(frozen=True)
class _Asked:
    bearer: str | None
    cookie: str | None
    query: str | None


def _asked(scope: Scope) -> _Asked:
    bearer = cookie = None
    for k, v in scope["headers"]:
        if k == b"authorization":
            scheme, _, value = v.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                bearer = value.strip()
        elif k == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(v.decode("latin-1"))
            except Exception:  # a malformed cookie header is no token
                continue
            if COOKIE in jar:
                cookie = jar[COOKIE].value
    query = next((v for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k == "token"), None)
    return _Asked(bearer, cookie, query)


class TokenGuard:
    """ASGI middleware: 401 unless the request carries the token (see the module's docstring)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    def _ok(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode("utf-8", "replace"), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_token(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        asked = _asked(scope)
        console = scope["path"] == "/ui" or scope["path"].startswith("/ui/")
        if console and asked.query is not None and self._ok(asked.query):
            await self._set_cookie(scope, send)
            return
        if self._ok(asked.bearer) or self._ok(asked.cookie):
            await self.app(scope, receive, send)
            return
        await self._refuse(console, send)

    async def _set_cookie(self, scope: Scope, send: Send) -> None:
        rest = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
                if k != "token"]
        location = scope["path"] + ("?" + urlencode(rest) if rest else "")
        cookie = f"{COOKIE}={self._token.decode()}; Path=/; HttpOnly; SameSite=Strict"
        if os.environ.get("PALISADE_COOKIE_SECURE") == "1":  # behind a TLS-terminating proxy
            cookie += "; Secure"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode()),
                                (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"),
                                (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, console: bool, send: Send) -> None:
        if console:
            body = (b"<!doctype html><title>Palisade: token required</title><h1>Token required</h1>"
                    b"<p>This console needs the server's token. Open it once as <code>/ui/?token=TOKEN</code> "
                    b"(the token in the file given to <code>palisade serve --token-file</code>); the browser then "
                    b"keeps it in a cookie.</p>")
            kind = b"text/html; charset=utf-8"
        else:
            body = json.dumps({"error": "unauthorized",
                               "detail": "this endpoint needs Authorization: Bearer <token> "
                                         "(the token of palisade serve --token-file)"}).encode()
            kind = b"application/json"
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="palisade"'), (b"cache-control", b"no-store"),
                                (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
                                (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]})
        await send({"type": "http.response.body", "body": body})

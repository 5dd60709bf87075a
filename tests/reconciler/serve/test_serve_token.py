"""`palisade serve --token-file`: which endpoints need the token, how a browser hands it over, and the
refusal to listen beyond loopback without one (in-process; the browser test runs the real thing)."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from reconciler.errors import UsageError
from reconciler.serve.auth import is_loopback, load_token, needs_token, require_token
from reconciler.serve.listen import BackgroundServer
from reconciler.serve.server import create_app

TOKEN = "0123456789abcdef-token"


def test_loopback_and_the_token_file(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.com")
    assert require_token("127.0.0.1", None) is None
    with pytest.raises(UsageError, match="beyond loopback needs --token-file"):
        require_token("0.0.0.0", None)
    f = tmp_path / "t"
    f.write_text(TOKEN + "\n")
    assert require_token("0.0.0.0", f) == TOKEN
    for bad in ("short", "has a space in it 0123456789", "semi;colon-0123456789"):
        f.write_text(bad)
        with pytest.raises(UsageError, match="at least 16"):
            load_token(f)
    with pytest.raises(UsageError, match="cannot read"):
        load_token(tmp_path / "missing")


def test_which_endpoints_need_it() -> None:
    for method, path in (("GET", "/v1/index"), ("GET", "/v1/bundles/3"), ("GET", "/v1/objects/ab"),
                         ("POST", "/v1/agents/web-1/heartbeat"), ("POST", "/v1/hooks/github"), ("GET", "/healthz")):
        assert not needs_token(method, path), path
    for method, path in (("GET", "/ui/"), ("GET", "/ui/live"), ("GET", "/v1/status"), ("GET", "/v1/agents"),
                         ("GET", "/v1/observations"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                         ("GET", "/v1/agents/web-1/heartbeat"), ("GET", "/")):
        assert needs_token(method, path), path


def test_bearer_cookie_and_the_one_time_query(tmp_path: Path) -> None:
    store = tmp_path / "state" / "store"
    store.mkdir(parents=True)
    with BackgroundServer(create_app(store, token=TOKEN)) as srv, \
            httpx.Client(base_url=srv.url, timeout=10, follow_redirects=False) as c:
        r = c.get("/v1/status")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/healthz").json() == {"status": "ok"}  # what Kubernetes probes ask, without the token
        assert c.get("/ui/").status_code == 401 and "token" in c.get("/ui/").text
        assert c.get("/ui/?token=wrong-wrong-wrong-wrong").status_code == 401
        r = c.get(f"/ui/events?policy=a&token={TOKEN}")
        assert r.status_code == 303 and r.headers["location"] == "/ui/events?policy=a"
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
        assert c.get("/ui/events").status_code == 200  # the client kept the cookie
        assert c.get("/v1/agents").status_code == 200  # the cookie is the token wherever it goes
        assert c.get("/v1/index").status_code == 404  # open (nothing published here)
        assert c.post("/v1/agents/web-1/heartbeat", json={}).status_code == 204

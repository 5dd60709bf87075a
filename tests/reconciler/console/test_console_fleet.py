"""The console's Fleet and Events pages in a real browser, against a real `palisade serve` with real agents
(`palisade-agent run --no-engine`) reporting to it: the numbers `palisade status -o json` gives, filters,
live updates after a publish and after a heartbeat, the XSS probe rendered inert, the security headers,
and the console being read-only."""
from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.console.app import CSP
from reconciler.state.fleet import Fleet
from support.browser import Browser, browser  # noqa: F401  (the module-scoped fixture)
from support.consolefleet import ConsoleFleet
from support.serve import heartbeat
from wire.heartbeat import Heartbeat

pytestmark = pytest.mark.slow

PROBE = "<img src=x onerror=alert(1)>"
AGENTS = [("web-1", {"role": "web", "zone": "a"}), ("db-1", {"role": "db"}),
          ("probe-1", {"role": "web", "note": PROBE})]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFleet]:
    with ConsoleFleet.start(tmp_path_factory.mktemp("console"), AGENTS) as f:
        f.wait_reporting(3, version=1)
        # a sensor that stopped reporting three minutes ago (written with the fleet table's own API), and one
        # that reports a refused policy and what it saw, as an agent with the engine on would
        db = Fleet.open(f.state)
        try:
            db.record_heartbeat(Heartbeat("old-1", {"role": "db"}, 1, "fleet"),
                                now=_dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=3))
        finally:
            db.close()
        heartbeat(f.url, "edge-1", labels={"role": "edge"}, version=1, stage="fleet",
                  policies=[{"name": "web-exec-allowlist", "status": "refused", "reason": f"verifier: {PROBE}"}],
                  observations=[
                      {"policy": "web-exec-allowlist", "binary": PROBE, "count": 3, "workload": "shop/web",
                       "parent": "/bin/sh", "action": "KPROBE_ACTION_SIGKILL", "acted": True},
                      {"policy": "web-exec-allowlist", "binary": "/usr/bin/curl", "count": 5, "workload": "shop/web",
                       "action": "KPROBE_ACTION_SIGKILL", "acted": False},
                      {"policy": "sensitive-files", "binary": "/usr/bin/cat", "count": 2, "workload": "shop/db",
                       "action": "KPROBE_ACTION_POST"}])
        yield f


_ROWS_JS = """
var out = {};
document.querySelectorAll('#fleet tbody tr').forEach(function (tr) {
  var cells = {'data-health': tr.getAttribute('data-health'),
               'refused-count': tr.querySelector('td.refused').getAttribute('data-count')};
  tr.querySelectorAll('td').forEach(function (td) { cells[td.className] = td.innerText.trim(); });
  out[tr.getAttribute('data-sensor')] = cells;
});
return out;
"""


def _rows(b: Browser) -> dict[str, dict[str, str]]:
    """The fleet table's rows in one read (the page swaps its content live, every heartbeat)."""
    rows: dict[str, dict[str, str]] = b.driver.execute_script(_ROWS_JS)
    return rows


def test_fleet_page_shows_what_palisade_status_shows(fleet: ConsoleFleet, browser: Browser) -> None:  # noqa: F811
    status = fleet.status_json()["fleet"]
    browser.load(fleet.url + "/ui/", ready="#fleet")
    rows = _rows(browser)
    assert set(rows) == {a["id"] for a in status} == {"web-1", "db-1", "probe-1", "old-1", "edge-1"}
    for a in status:
        row = rows[a["id"]]
        assert row["data-health"] == a["health"], (a, row)
        assert row["health"] == a["health"]
        assert row["version"].split()[0] == (f"v{a['version']}" if a["version"] else "-")
        assert row["stage"] == (a["stage"] or "-")
        assert int(row["refused-count"]) == a["refused"]
    healths = {h: sum(1 for a in status if a["health"] == h) for h in ("ok", "degraded", "drift", "stale")}
    assert healths["stale"] == 1 and healths["degraded"] == 1  # the state covers more than "ok"
    for h, n in healths.items():
        assert browser.text(f"#count-{h}") == str(n)
    assert browser.text("#count-sensors") == str(len(status))
    assert browser.text("#served-version") == "v1"
    assert "verifier:" in rows["edge-1"]["refused"] and "web-exec-allowlist" in rows["edge-1"]["refused"]
    assert rows["web-1"]["groups"] == "web"  # the bundle's group selecting role=web
    browser.screenshot("fleet")


def test_fleet_filters_by_health_group_and_label(fleet: ConsoleFleet, browser: Browser) -> None:  # noqa: F811
    browser.load(fleet.url + "/ui/?health=stale", ready="#fleet")
    assert set(_rows(browser)) == {"old-1"}
    browser.load(fleet.url + "/ui/?group=web", ready="#fleet")
    assert set(_rows(browser)) == {"web-1", "probe-1"}
    browser.load(fleet.url + "/ui/?label=role%3Ddb", ready="#fleet")
    assert set(_rows(browser)) == {"db-1", "old-1"}
    # the filter form navigates (the CSP forbids submitting forms): sensor id part
    browser.load(fleet.url + "/ui/", ready="#fleet")
    box = browser.driver.find_element("css selector", "form.filter input[name=sensor]")
    box.send_keys("edge")
    box.submit()
    browser.wait(lambda: "sensor=edge" in browser.driver.current_url, 10, "the filter navigation")
    browser.wait(lambda: set(_rows(browser)) == {"edge-1"}, 10, "only edge-1")
    browser.assert_no_errors("the filtered fleet page")


def test_xss_probe_renders_as_text(fleet: ConsoleFleet, browser: Browser) -> None:  # noqa: F811
    browser.load(fleet.url + "/ui/", ready="#fleet")
    assert f"note={PROBE}" in browser.text("tr[data-sensor=probe-1] td.labels")
    assert PROBE in browser.text("tr[data-sensor=edge-1] td.refused")
    assert browser.count("img") == 0
    browser.load(fleet.url + "/ui/events", ready="#events")
    assert PROBE in browser.text("#events")
    assert browser.count("img") == 0
    time.sleep(0.5)  # an onerror would fire as soon as the (absent) image failed to load
    assert browser.alerts() == []
    browser.screenshot("events-probe")


def test_events_page_highlights_kills_and_filters(fleet: ConsoleFleet, browser: Browser) -> None:  # noqa: F811
    browser.load(fleet.url + "/ui/events", ready="#events")
    assert browser.texts("#events tr.event.kill td.action") == ["sigkill"]
    assert browser.count("#events tr.event.would") == 1
    assert browser.text("#event-kills") == "3" and browser.text("#event-would") == "5"
    api = fleet.get("/v1/observations").json()["observations"]
    assert browser.text("#event-total") == str(sum(o["count"] for o in api))
    browser.load(fleet.url + "/ui/events?workload=shop%2Fdb", ready="#events")
    assert browser.attrs("#events tbody tr", "data-policy") == ["sensitive-files"]
    browser.load(fleet.url + "/ui/events?action=kill", ready="#events")
    assert browser.count("#events tbody tr") == 1
    browser.screenshot("events")


def test_pages_update_live_after_a_heartbeat_and_a_publish(fleet: ConsoleFleet, browser: Browser) -> None:  # noqa: F811
    browser.load(fleet.url + "/ui/events", ready="#events")
    browser.wait(lambda: browser.text("#live") == "live", 10, "the live stream to open")
    browser.mark()
    heartbeat(fleet.url, "late-1", labels={"role": "web"},
              observations=[{"policy": "web-exec-allowlist", "binary": "/usr/bin/wget", "count": 1}])
    browser.wait(lambda: browser.count("#events tr[data-sensor=late-1]"), 15, "the new event without a reload")
    assert not browser.reloaded()

    browser.load(fleet.url + "/ui/", ready="#fleet")
    browser.wait(lambda: browser.text("#live") == "live", 10, "the live stream to open")
    browser.mark()
    fleet.publish("web back to observe", [("enforcement/web-lockdown.yaml", "state: enforce_ready",
                                           "state: observe")])
    browser.wait(lambda: browser.text("#served-version") == "v2", 30, "v2 shown without a reload")
    # and the agents, which pull v2 and report it, show it as they do
    browser.wait(lambda: all(_rows(browser)[s]["version"] == "v2" for s, _ in AGENTS), 40, "agents on v2")
    assert not browser.reloaded()
    browser.assert_no_errors("the live fleet page")
    browser.screenshot("fleet-v2")


def test_console_headers_and_read_only(fleet: ConsoleFleet) -> None:
    for path in ("/ui/", "/ui/events", "/ui/?fragment=1", "/ui/static/console.js", "/ui/static/console.css",
                 "/ui/nowhere"):
        r = fleet.get(path)
        assert r.status_code == (404 if path == "/ui/nowhere" else 200), path
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert CSP.startswith("default-src 'none'; script-src 'self'; style-src 'self'")
    frag = fleet.get("/ui/?fragment=1").text
    assert frag.startswith('<main id="content"') and frag.endswith("</main>") and "<nav" not in frag
    r = httpx.get(fleet.url + "/", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (302, "/ui/")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/ui/", "/ui/events", "/ui/live"):
            r = httpx.request(method, fleet.url + path, timeout=10)
            assert r.status_code == 405, (method, path)
            assert r.headers["content-security-policy"] == CSP
    assert httpx.head(fleet.url + "/ui/", timeout=10).status_code == 200


def test_token_required_beyond_loopback(tmp_path: Path, browser: Browser) -> None:  # noqa: F811
    from support.serve import Serve

    repo_dir = tmp_path / "no-token"
    repo_dir.mkdir()
    # without a token file, listening on every address is refused before anything starts
    from reconciler import keys
    from support.policyrepo import PolicyRepo

    repo = PolicyRepo.create(repo_dir)
    pair = keys.generate(repo_dir / "k")
    with pytest.raises(AssertionError, match="beyond loopback needs --token-file"):
        Serve(repo.path, repo_dir / "state", pair.signing_key_path, "--listen", "0.0.0.0:0", start_timeout=20)
    token = "t0ken-" + "9f2c" * 8
    with ConsoleFleet.start(tmp_path / "fleet", [("web-1", {"role": "web"})], "--listen", "0.0.0.0:0",
                            token=token) as f:
        url = f.url.replace("0.0.0.0", "127.0.0.1")
        for path in ("/ui/", "/ui/events", "/ui/live", "/v1/status", "/v1/agents", "/v1/observations", "/metrics"):
            r = httpx.get(url + path, timeout=10)
            assert r.status_code == 401, path
            assert httpx.get(url + path, headers={"Authorization": "Bearer wrong-token-0123456789"},
                             timeout=10).status_code == 401
        # the agent's endpoints stay open, and the agent reports as always
        assert httpx.get(url + "/v1/index", timeout=10).status_code == 200
        f.server.url = url
        got = f.wait_reporting(1, version=1)
        assert [a["id"] for a in got] == ["web-1"]
        assert f.get("/ui/").status_code == 200
        # a browser hands the token over once; the cookie carries it from then on
        r = httpx.get(url + "/ui/events?token=" + token + "&sensor=web-1", follow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["location"] == "/ui/events?sensor=web-1"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        browser.driver.delete_all_cookies()
        browser.load(url + "/ui/?token=" + token, ready="#fleet")
        assert "token" not in browser.driver.current_url
        browser.load(url + "/ui/events", ready="main#content")
        assert browser.text("h1") == "Events"
        browser.wait(lambda: browser.text("#live") == "live", 10, "the live stream with the cookie")

"""Bundles from a static server: `palisade publish --to DIR`, Debian's nginx serving DIR on loopback, a
real agent (`palisade-agent run`, no engine) pulling from nginx and heartbeating to a real `palisade serve`.

Without nginx the test skips; under CI=true it fails (tests/support/nginx.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from agentproc import AgentProc

from agent import lkg
from agent.client import Client, Pacer
from agent.config import BundleSource, load
from agent.errors import ConfigError, Unreachable
from reconciler.keys import generate, load_public_key
from reconciler.state.mirror import mirror
from reconciler.state.store import Store
from support.bundles import keypair, make_bundle
from support.nginx import Nginx, nginx_serving
from support.policyrepo import PolicyRepo
from support.serve import running
from wire import bundle as B

__all__ = ["nginx_serving"]

ROOT = Path(__file__).resolve().parents[2]

def _publish(state: Path, to: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", "publish", "--state", str(state), "--to", str(to),
                           "-o", "json"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def _store_version(state: Path) -> int:
    try:
        return int(json.loads((state / "store" / "index.json").read_bytes())["version"])
    except (OSError, ValueError, KeyError):
        return 0


def _reported(url: str, sensor: str) -> dict[str, Any] | None:
    agents = httpx.get(f"{url}/v1/agents", timeout=10).json()["agents"]
    return next((a for a in agents if a["id"] == sensor), None)


@pytest.mark.slow
def test_an_agent_pulls_from_nginx_and_heartbeats_to_the_reconciler(
        tmp_path: Path, nginx_serving: Callable[[Path], Nginx]) -> None:
    repo = PolicyRepo.create(tmp_path)
    pair = generate(tmp_path / "keys")
    state, mirror = tmp_path / "state", tmp_path / "www"
    with running(repo.path, state, pair.signing_key_path) as serve:
        _wait(lambda: _store_version(state) >= 1, 30, "v1 in the store")
        out = _publish(state, mirror)
        assert out.returncode == 0, out.stderr
        first = json.loads(out.stdout)
        assert first["version"] == 1 and first["written"][-2:] == ["v1/bundles/1", "v1/index"]
        again = json.loads(_publish(state, mirror).stdout)  # idempotent: nothing to write the second time
        assert again["written"] == [] and again["unchanged"] == len(first["written"])

        web = nginx_serving(mirror)
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump({"engine": False, "bundles": {"url": web.url, "poll": 1},
                                          "intervals": {"heartbeat": 1, "retryMax": 1}}))
        agent = AgentProc(serve.url, pair.public_key_path, tmp_path / "agent", "web-1", labels="role=web",
                          config=config)
        try:
            agent.wait(lambda st: st["version"] == 1, 30, "v1 from nginx")
            # the heartbeat went to the reconciler, the bundle came from nginx
            _wait(lambda: (_reported(serve.url, "web-1") or {}).get("version") == 1, 30, "the heartbeat of v1")
            assert web.wait_access(lambda line: line.startswith("GET /v1/bundles/1 200"), 5, "the bundle")
            # polling, not long-polling: the ETag comes back and nginx answers 304; `wait` is never sent
            web.wait_access(lambda line: line.startswith("GET /v1/index 304 inm=") and "inm=-" not in line, 10,
                            "a 304 to If-None-Match")
            assert not [line for line in web.access_log() if "wait=" in line]

            # v2 uploaded with its bundle spoiled (same size, one byte flipped), the index last: the agent
            # refuses it and keeps enforcing v1
            repo.change("web back to observe", [("enforcement/web-lockdown.yaml", "state: enforce_ready",
                                                  "state: observe")])
            _wait(lambda: _store_version(state) >= 2, 30, "v2 in the store")
            staging = tmp_path / "staging"
            assert _publish(state, staging).returncode == 0
            bundle = mirror / "v1" / "bundles" / "2"
            data = bytearray((staging / "v1" / "bundles" / "2").read_bytes())
            data[len(data) // 2] ^= 0x01
            bundle.write_bytes(bytes(data))
            shutil.copyfile(staging / "v1" / "index", mirror / "v1" / ".index.new")
            os.replace(mirror / "v1" / ".index.new", mirror / "v1" / "index")
            st = agent.wait(lambda st: st["refusals"].get("digest", 0) >= 1, 30, "the tampered bundle refused")
            assert st["version"] == 1
            assert "bundle refused" in st["lastError"]
            saved = lkg.load(tmp_path / "agent", [load_public_key(pair.public_key_path)])
            assert saved is not None and saved.bundle.version == 1  # last-known-good is still v1
            assert (_reported(serve.url, "web-1") or {}).get("version") == 1

            # publish does not write over a bundle with other bytes (bundles are immutable): exit 2, named
            clash = _publish(state, mirror)
            assert clash.returncode == 2 and str(bundle) in clash.stderr and "Traceback" not in clash.stderr
            bundle.unlink()
            out = _publish(state, mirror)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["written"] == ["v1/bundles/2"]  # the index was already there
            agent.wait(lambda st: st["version"] == 2, 30, "v2 from nginx, by polling")
            _wait(lambda: (_reported(serve.url, "web-1") or {}).get("version") == 2, 30, "the heartbeat of v2")
        finally:
            assert agent.stop() == 0, agent.log
        assert "Traceback" not in agent.log, agent.log


def test_the_client_never_asks_a_static_source_to_wait_and_revalidates_by_etag_or_date(
        tmp_path: Path, nginx_serving: Callable[[Path], Nginx]) -> None:
    k = keypair(tmp_path / "keys")
    store = Store(tmp_path / "store", k.signing)
    store.publish(B.sign_bundle(make_bundle(1), k.signing))
    mirror(store.root, tmp_path / "www")
    web = nginx_serving(tmp_path / "www")
    index_bytes = store.index_bytes()
    assert index_bytes is not None

    async def talk() -> None:
        # heartbeats go to `server` (nothing listens on port 1 there); index and bundles to the source
        async with Client("http://127.0.0.1:1", source=web.url, long_poll=False, attempts=1) as c:
            t0 = time.monotonic()
            full = await c.index(None, wait=30)
            assert time.monotonic() - t0 < 5  # not held: `wait` was dropped
            assert full.data == index_bytes and full.etag and full.last_modified
            assert (await c.index(full.etag, wait=30)).data is None  # If-None-Match → 304
            by_date = await c.index(None, wait=30, last_modified=full.last_modified)  # a source with no ETag
            assert by_date.data is None and by_date.last_modified == full.last_modified
            entry = B.parse_index(index_bytes).bundles[0]
            assert await c.bundle(1, entry.size) == store.bundle_bytes(1)
            with pytest.raises(Unreachable):
                await c.heartbeat("web-1", {})

    asyncio.run(talk())
    log = web.access_log()
    assert [line.split()[2] for line in log if line.startswith("GET /v1/index")] == ["200", "304", "304"]
    assert "ims=-" not in [line for line in log if line.startswith("GET /v1/index")][2]
    assert not [line for line in log if "wait=" in line]


def test_polling_a_static_source_is_jittered_and_bounded() -> None:
    p = Pacer.polling(10.0)
    gaps = {round(p.after("unchanged", 0.01, None).gap, 6) for _ in range(50)}
    assert all(10.0 <= g <= 12.0 for g in gaps) and len(gaps) > 10  # spread over up to a fifth more
    assert p.after("applied", 0.01, None).gap == 0.0  # a new verified bundle: ask again at once
    assert Pacer.polling(0.1).minimum == 1.0  # never faster than MIN_POLL


def test_the_bundle_source_is_configured_apart_from_the_reconciler(tmp_path: Path) -> None:
    base = {"server": "http://127.0.0.1:8740", "pubkeys": ["k.pub"], "sensorId": "n1", "state": "s"}
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump({**base, "bundles": {"url": "https://cdn.example.com/palisade/", "poll": 5}}))
    cfg = load(f, {})
    assert cfg.bundles == BundleSource("https://cdn.example.com/palisade", long_poll=False, poll=5.0)
    assert cfg.source_url == "https://cdn.example.com/palisade" and not cfg.long_poll
    assert cfg.server == "http://127.0.0.1:8740"
    f.write_text(yaml.safe_dump(base))
    plain = load(f, {})
    assert plain.bundles is None and plain.source_url == plain.server and plain.long_poll
    for bad in ({"url": "ftp://x"}, {"url": "https://cdn/x?y=1"}, {"url": "https://cdn", "poll": 0},
                {"poll": 5}, {"url": "https://cdn", "wait": 5}):
        f.write_text(yaml.safe_dump({**base, "bundles": bad}))
        with pytest.raises(ConfigError, match="bundles"):
            load(f, {})

"""Heartbeat group commit (reconciler/serve/ingest.py) on a real fleet database, and through the real server."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from reconciler.serve.ingest import HeartbeatIngest
from reconciler.state.fleet import Fleet
from wire.heartbeat import Heartbeat, parse


def _beat(sensor: str, version: int = 1) -> Heartbeat:
    return parse({"labels": {"role": "web"}, "version": version, "stage": "default", "commit": None,
                  "policies": [], "counters": {}}, sensor)


class _Gated:
    """The real fleet's write, held at a gate the test opens: what a slow disk looks like to the server."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail_next = False

    def __call__(self, beats: Sequence[Heartbeat]) -> None:
        self.batches.append([b.sensor for b in beats])
        self.entered.set()
        self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise OSError(28, "No space left on device")
        self.fleet.record_heartbeats(beats)


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet.open(tmp_path)
    yield f
    f.close()


def test_heartbeats_arriving_during_a_write_are_committed_together_in_order(fleet: Fleet) -> None:
    write = _Gated(fleet)
    ingest = HeartbeatIngest(write)

    async def run() -> None:
        first = asyncio.create_task(ingest.submit(_beat("n-000")))
        await asyncio.to_thread(write.entered.wait, 10)  # the first write is on disk now
        rest = [asyncio.create_task(ingest.submit(_beat(f"n-{i:03d}", version=2))) for i in range(1, 50)]
        again = asyncio.create_task(ingest.submit(_beat("n-001", version=3)))  # the same sensor again: later wins
        await asyncio.sleep(0.05)
        assert not first.done()  # nobody is answered before the commit
        write.gate.set()
        await asyncio.gather(first, *rest, again)

    asyncio.run(run())
    assert write.batches[0] == ["n-000"]
    assert len(write.batches) == 2 and len(write.batches[1]) == 50  # one transaction for all that waited
    stored = {a.id: a.version for a in fleet.agents()}
    assert len(stored) == 50 and stored["n-000"] == 1 and stored["n-002"] == 2 and stored["n-001"] == 3


def test_a_failed_write_fails_every_request_of_its_batch_and_the_next_batch_is_stored(fleet: Fleet) -> None:
    write = _Gated(fleet)
    write.gate.set()
    write.fail_next = True
    ingest = HeartbeatIngest(write)

    async def run() -> list[BaseException | None]:
        got = await asyncio.gather(*(ingest.submit(_beat(f"n-{i}")) for i in range(3)), return_exceptions=True)
        await ingest.submit(_beat("n-9"))
        return got  # type: ignore[return-value]

    failed = asyncio.run(run())
    assert all(isinstance(e, OSError) and e.errno == 28 for e in failed), failed
    assert [a.id for a in fleet.agents()] == ["n-9"]  # nothing of the failed batch, the next one whole


def test_a_burst_of_heartbeats_to_the_real_server_is_all_stored(tmp_path: Path) -> None:
    from reconciler.serve.listen import BackgroundServer
    from reconciler.serve.server import create_app

    store = tmp_path / "state" / "store"
    store.mkdir(parents=True)
    with BackgroundServer(create_app(store)) as srv:
        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30,
                                         limits=httpx.Limits(max_connections=100)) as c:
                rs = await asyncio.gather(*(c.post(f"/v1/agents/b-{i:04d}/heartbeat",
                                                   json={"version": 1, "labels": {"n": str(i)}})
                                            for i in range(400)))
                return [r.status_code for r in rs]

        assert asyncio.run(burst()) == [204] * 400
    fleet = Fleet.open(tmp_path / "state")
    try:
        assert sorted(a.id for a in fleet.agents()) == [f"b-{i:04d}" for i in range(400)]
    finally:
        fleet.close()

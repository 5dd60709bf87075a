"""Process-level wiring of `palisade-agent run`: state lock, keys, enforcer, metrics, signals."""
from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from wire.keys import load_public_keys

from .apply import Enforcer, NullEnforcer
from .callouts import Callouts
from .client import Client
from .config import AgentConfig, Workload
from .containers import Container, ContainerWatcher
from .errors import AgentError, ConfigError
from .events import EventLog
from .metrics import AgentMetrics
from .runner import Agent
from .workloads import WorkloadIndex

if TYPE_CHECKING:
    from .cri import CriWatcher
    from .sensor import NodeSensor

__all__ = ["make_enforcer", "run", "start_sensor", "watch_containers"]

log = logging.getLogger("palisade.agent")
LOCK_FILE = "agent.lock"


def make_enforcer(cfg: AgentConfig) -> Enforcer:
    if not cfg.engine:
        return NullEnforcer()
    from .enforcer import EngineEnforcer

    containers = cfg.containers is not None  # workloads also come from the container runtime
    if cfg.pin_root is not None:
        return EngineEnforcer(cfg.workloads, node_name=cfg.sensor_id, pin_root=cfg.pin_root,
                              build_objects=cfg.build_objects, placeholders=dict(cfg.placeholders),
                              containers=containers)
    return EngineEnforcer(cfg.workloads, node_name=cfg.sensor_id, build_objects=cfg.build_objects,
                          placeholders=dict(cfg.placeholders), containers=containers)


def watch_containers(cfg: AgentConfig, enforcer: Enforcer, index: WorkloadIndex,
                     base: NodeSensor | None = None) -> ContainerWatcher | CriWatcher | None:
    """Follow the container runtime (when configured): each container that runs joins the scopes of the
    policies selecting it (first: that is what the start latency measures), and events name it — the
    policies' (`index`) and the base sensor's process_exec/exit (`base`)."""
    if cfg.containers is None:
        return None
    started = getattr(enforcer, "workload_started", None)
    stopped = getattr(enforcer, "workload_stopped", None)

    def on_start(c: Container) -> None:
        w = Workload.of_container(c)
        if started is not None:
            started(w)
        if base is not None:  # before the index: whoever sees the container there finds it named everywhere
            base.pods.add(w)
        index.add(w)

    def on_stop(c: Container) -> None:
        w = Workload.of_container(c)
        if stopped is not None:
            stopped(w)
        index.remove(w)
        if base is not None:
            base.pods.remove(w)

    watcher: ContainerWatcher | CriWatcher
    if cfg.containers.api == "cri":
        from .cri import CriWatcher  # grpcio only where a CRI socket is configured (CriUnavailable without)

        watcher = CriWatcher(cfg.containers.socket, on_start, on_stop)
    else:
        watcher = ContainerWatcher(cfg.containers.socket, on_start, on_stop)
    watcher.start()
    return watcher


def start_sensor(cfg: AgentConfig, events: EventLog, metrics: AgentMetrics | None = None) -> NodeSensor | None:
    """The base sensor (process_exec/process_exit of every process, as Tetragon's), whenever the engine runs."""
    if not cfg.engine:
        return None
    from bpf.engine import DEFAULT_PIN_ROOT

    from . import sensor

    return sensor.start(cfg.sensor_id, events, workloads=cfg.workloads, pin_root=cfg.pin_root or DEFAULT_PIN_ROOT,
                        metrics=metrics)


@contextlib.contextmanager
def _locked(cfg: AgentConfig) -> Iterator[None]:
    """One agent per state directory. A directory on a read-only or broken file system still starts:
    the directory itself is locked instead of the lock file it cannot create."""
    try:
        cfg.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise AgentError(f"state directory {cfg.state}: {e.strerror}") from None
    try:
        fd = os.open(cfg.state / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        try:
            fd = os.open(cfg.state, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            raise AgentError(f"state directory {cfg.state}: {e.strerror}") from None
        log.error("cannot create %s (%s): locking the directory instead", cfg.state / LOCK_FILE, e.strerror)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AgentError(f"another agent runs on the state directory {cfg.state}") from None
        yield
    finally:
        os.close(fd)


def run(cfg: AgentConfig) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
    if cfg.containers is not None and cfg.containers.api == "cri":
        from .cri import load_grpc

        load_grpc()  # before anything else: without grpcio, exit 3 (CriUnavailable) saying what to install
    pubkeys = load_public_keys(cfg.pubkeys)
    with _locked(cfg):
        metrics = AgentMetrics()
        if cfg.metrics:
            host, _, port = cfg.metrics.rpartition(":")
            try:
                bound = metrics.serve(host.strip("[]"), int(port))
            except (OSError, ValueError) as e:
                raise ConfigError(f"--metrics {cfg.metrics}: {e}") from None
            log.info("metrics on http://%s:%d/metrics", host, bound)
        enforcer = make_enforcer(cfg)
        events = EventLog(cfg.state, max_bytes=cfg.events_max_bytes, keep=cfg.events_keep)
        base = start_sensor(cfg, events, metrics)
        try:
            asyncio.run(_main(cfg, enforcer, pubkeys, metrics, events, base))
        finally:
            if base is not None:
                base.stop()  # unlike policies, the base sensor does not outlive the agent
            events.close()
            close = getattr(enforcer, "close", None)
            if close is not None:
                close()  # releases file descriptors; what is pinned stays enforced
    return 0


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        chain: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        print(f"task {task.get_name()}: " + " -> ".join(chain), file=sys.stderr)


async def _main(cfg: AgentConfig, enforcer: Enforcer, pubkeys: list, metrics: AgentMetrics,  # type: ignore[type-arg]
                events: EventLog, base: NodeSensor | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)  # `kill -USR2`: where every task waits
    # the agent counts failures (observe); bundles may come from a static source, heartbeats go to the reconciler
    client = Client(cfg.server, retry_max=cfg.intervals.retry_max, source=cfg.source_url, long_poll=cfg.long_poll)
    callouts = Callouts(cfg.callouts, on_outcome=lambda action, outcome: metrics.callouts.labels(action, outcome).inc())
    agent = Agent(cfg, enforcer=enforcer, client=client, pubkeys=pubkeys, metrics=metrics, events=events,
                  callouts=callouts)
    source = "" if cfg.bundles is None else (f" bundles from {cfg.source_url}"
                                             f"{'' if cfg.long_poll else f' (polled every {cfg.bundles.poll:g}s)'},")
    print(f"palisade-agent: sensor {cfg.sensor_id} pulling from {cfg.server},{source} state in {cfg.state}",
          file=sys.stderr, flush=True)
    watcher = watch_containers(cfg, enforcer, agent.workloads, base)
    try:
        await agent.run(stop)
    finally:
        if watcher is not None:
            watcher.stop()
        callouts.close()
        await client.aclose()
        log.info("stopped; enforcing v%s stays in the kernel", agent.version)

"""`EngineEnforcer`: the `Enforcer` protocol over the eBPF engine (bpf.engine), on the real kernel.

Each load of a policy runs under a name of its own, `<name>--<sha256[:12]>-<n>` (a
`LoadKey`), so a changed policy can be loaded *next to* the old one and the old one
removed afterwards (the engine refuses two loads under one key). The name is pinned in
bpffs with the policy document, so after a restart the loads are adopted and this
naming tells which policy and which version each one is: it is read back into a
`LoadKey` once, at adoption; loads made here keep the typed key they were made with.

Workload scoping: a policy with a `podSelector`, or a namespaced policy, runs
only in the cgroups of the workloads (agent configuration) whose namespace and
labels match; when no workload on this node matches, the policy is inactive
here (nothing loaded, reported as such). Other policies run node-wide.
With container discovery on (`containers`), workloads come and go: a scoped policy is loaded
even when nothing matches yet (a scope of nothing), and `workload_started`/`workload_stopped`
put a container's cgroup into, or out of, the in-kernel scope of every loaded policy that
selects it (Engine.scope_add/scope_remove: map updates, no program is reloaded).

Objects: the agent hands each verified bundle's CO-RE objects over (`offer_objects`)
before applying it; the engine loads a policy from the bundle's bytes when its own
plan for this kernel has the same source digest, else builds the object here (cached
by digest) unless `build_objects` is off, in which case the policy is refused with the
engine's `ObjectMissing` reason, plus which kernel profiles the bundle's objects were
built for.

Drift: right after a load (or adoption) the enforcer records the policy's
program and link ids and a digest of each of its static maps; `drift()` reads
the kernel inventory and reports a link or program that is gone or detached,
a pin directory removed, a static map whose content changed, and a program that
is not ours on a cgroup hook where ours are attached.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf import inventory as inv
from bpf import syscall
from bpf.compile import Features, compile_policy
from bpf.engine import DEFAULT_PIN_ROOT, STATIC_MAPS, Engine
from bpf.errors import BpfError, NotLoaded, PolicyRefusal, RefusalKind
from bpf.events import POLICY_EVENT_KINDS
from bpf.objects import ObjectSource, source_digest
from bpf.policy import LabelSelector, TracingPolicy
from wire.values import State

from .apply import Inactive, Loaded, Refused, invalid, read_policy
from .config import Workload
from .drift import DriftKind, Finding
from .objects import Offer
from .select import Desired
from .workloads import pod_of

__all__ = ["EngineEnforcer", "LoadKey"]

log = logging.getLogger("palisade.agent.enforcer")

_PINNED = re.compile(r"(?P<name>.+)--(?P<digest>[0-9a-f]{12})-(?P<n>[0-9]+)")


@dataclass(frozen=True)
class LoadKey:
    """Which policy, which version and which copy one load is; the policy runs under `str(key)`,
    `<name>--<digest>-<n>` (`digest`: the first 12 hex digits of its sha256)."""

    name: str
    digest: str
    n: int

    def __str__(self) -> str:
        return f"{self.name}--{self.digest}-{self.n}"

    @classmethod
    def of_pinned(cls, policy_name: str) -> LoadKey | None:
        """The key a pinned load's policy name spells (one an earlier agent process made); None when the
        load is not one of ours."""
        m = _PINNED.fullmatch(policy_name)
        return None if m is None else cls(m["name"], m["digest"], int(m["n"]))


@dataclass(frozen=True)
class _Baseline:
    prog_ids: frozenset[int]
    link_ids: frozenset[int]
    maps: tuple[tuple[str, str], ...]  # (pin name, digest)
    cgroups: tuple[str, ...]
    contents: tuple[tuple[str, tuple[tuple[bytes, bytes], ...]], ...] = ()  # static maps' entries, to restore


class EngineEnforcer:
    blocking = True
    wants_objects = True

    def __init__(self, workloads: Sequence[Workload], *, pin_root: Path = DEFAULT_PIN_ROOT,
                 node_name: str | None = None, features: Features | None = None, build_objects: bool = True,
                 object_cache: Path | None = None, placeholders: Mapping[str, Sequence[str]] | None = None,
                 containers: bool = False) -> None:
        """`build_objects` False: a policy whose object the bundle does not carry (for this kernel) is
        refused instead of compiled here; `object_cache`: where objects built here are kept (default:
        bpf.core.build's cache); `placeholders`: this node's values of `${NAME}` matchArgs values."""
        self.placeholders = dict(placeholders or {})
        if features is None:
            features = _probe()
        self.pin_root = Path(pin_root)
        self.workloads = tuple(workloads)
        #: True: workloads are also discovered (containers), so a scope may be empty for now
        self.containers = containers
        self._discovered: dict[str, Workload] = {}  # cgroup directory → the container's workload
        #: handle → (cgroup directory → cgroup id) of the workloads in its scope now
        self._scope: dict[str, dict[str, int]] = {}
        #: cgroup directory → monotonic time its workload was put into every scope selecting it (maybe none)
        self.scoped_at: dict[str, float] = {}
        self.build_objects = build_objects
        self._object_cache = object_cache
        self.engine = Engine(pin_root=self.pin_root, node_name=node_name, features=features,
                             objects=self._objects({}))
        #: policy sha256 → kernel profiles the current bundle's objects for it were built for
        self._profiles: dict[str, tuple[str, ...]] = {}
        self._offered: frozenset[str] = frozenset()
        #: handle → where its object came from ("bundle", "cache", "built"; "" when adopted)
        self.origins: dict[str, str] = {}
        self._lock = threading.RLock()  # loads, switches, unloads and event polls come from several threads
        self._base: dict[str, _Baseline] = {}
        #: handle (the engine's key) → which load it is, for every load of ours the engine holds
        self._keys: dict[str, LoadKey] = {}
        self._vanished: dict[str, str] = {}  # handle → policy, of loads whose pin directory disappeared
        with self._lock:
            adopted = self.engine.adopt()
            pinned = self.engine.loaded()
            for key in adopted:
                lk = LoadKey.of_pinned(pinned[key].policy.name)
                if lk is not None:  # else pinned by something else under our root: not one of ours
                    self._keys[key] = lk
                if (self._dir(key) / "map_pl_members").exists():  # scoped: containers keep coming to it
                    self._scope[key] = {c: i for c in pinned[key].cgroups if (i := _ino(c))}
                self._baseline(key)
        if adopted:
            log.info("adopted %d pinned policies: %s", len(adopted), ", ".join(adopted))
        for name, why in self.engine.broken.items():
            log.error("pinned %s cannot be adopted: %s", name, why)

    # ------------------------------------------------------------------ Enforcer

    def offer_objects(self, offer: Offer) -> None:
        with self._lock:
            # replaced, not added to: the engine holds the current bundle's objects only (bounded memory);
            # a repair reloads a policy of the current bundle, whose object is in this offer
            self.engine.objects = self._objects(offer.data)
            self._offered = frozenset(offer.data)
            self._profiles = dict(offer.profiles)

    def loaded(self) -> Sequence[Loaded]:
        with self._lock:
            self._forget_vanished()
            return tuple(self._loaded(handle, State(lp.mode)) for handle, lp in self.engine.loaded().items()
                         if handle in self._keys)

    def load(self, policy: Desired) -> Loaded:
        tp = read_policy(policy, self.placeholders)
        with self._lock:
            key, tp = self._new_key(tp, policy.name, policy.sha256)
            cgroups = self._cgroups(tp)
            if cgroups == () and not self.containers:
                raise Inactive(_why_inactive(tp))
            res = self.engine.load(tp, str(policy.state), cgroups=cgroups)
            if res.refusal is not None:
                raise Refused(res.refusal.adding(self._object_note(tp, policy, cgroups)))
            handle = tp.key
            self._keys[handle] = key
            if cgroups is not None:
                self._scope[handle] = {c: _ino(c) for c in cgroups}
            self.origins[handle] = res.origin
            self._baseline(handle)
        log.info("loaded %s (object from %s)", handle, res.origin or "?")
        return self._loaded(handle, policy.state)

    def workload_started(self, w: Workload) -> list[str]:
        """A workload appeared (a container started): into the scope of every loaded policy selecting it,
        without reloading anything. Returns the handles whose scope it joined."""
        joined = []
        with self._lock:
            self._discovered[w.cgroup] = w
            for handle, lp in self.engine.loaded().items():
                if handle not in self._keys or handle not in self._scope or not _selects(lp.policy, w):
                    continue
                if w.cgroup in self._scope[handle]:
                    continue
                try:
                    self._scope[handle][w.cgroup] = self.engine.scope_add(handle, w.cgroup)
                except (BpfError, OSError) as e:  # the container went away meanwhile, or the load did
                    log.warning("cannot scope %s to %s: %s", handle, w.cgroup, e)
                    continue
                self._baseline(handle)  # the scope maps changed by our hand: not drift
                joined.append(handle)
            self.scoped_at[w.cgroup] = time.monotonic()
        return joined

    def workload_stopped(self, w: Workload) -> None:
        """A workload went away (a container died): out of every scope it was in."""
        with self._lock:
            self._discovered.pop(w.cgroup, None)
            self.scoped_at.pop(w.cgroup, None)
            for handle, cgroups in self._scope.items():
                ino = cgroups.pop(w.cgroup, None)
                if ino is None or handle not in self._keys:
                    continue
                try:
                    self.engine.scope_remove(handle, w.cgroup, ino)
                except (BpfError, OSError) as e:
                    log.warning("cannot take %s out of %s: %s", w.cgroup, handle, e)
                self._baseline(handle)

    def unload(self, handle: str) -> None:
        with self._lock:
            self._scope.pop(handle, None)
            self._base.pop(handle, None)
            self.origins.pop(handle, None)
            try:
                self.engine.unload(handle)
            except NotLoaded:
                self._forget(handle)
            self._keys.pop(handle, None)

    def set_mode(self, handle: str, state: State) -> Loaded:
        with self._lock:
            self.engine.set_mode(handle, str(state))
            self._baseline(handle)
            return self._loaded(handle, state)

    def counters(self) -> dict[str, int]:
        total = {"events": 0, "enforced": 0, "wouldHaveEnforced": 0}
        with self._lock:
            for key in self.engine.loaded():
                try:
                    c = self.engine.counters(key)
                except (BpfError, OSError):
                    continue
                total["events"] += c.posted
                total["enforced"] += c.enforced
                total["wouldHaveEnforced"] += c.would_have_enforced
        return total

    def poll_events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        with self._lock:
            events = self.engine.poll_events(timeout)
            if not events:
                return events
            # an event names the load's policy (`<name>--<digest>-<n>`): report the policy's own name
            names = {str(k): k.name for k in self._keys.values()}
        pods = self._pods()
        for ev in events:
            for kind in POLICY_EVENT_KINDS:
                body = ev.get(kind)
                if isinstance(body, dict) and isinstance(body.get("policy_name"), str):
                    body["policy_name"] = names.get(body["policy_name"], body["policy_name"])
                    pal = ev.get("palisade")
                    proc = body.get("process")
                    cgroup_id = pal.get("cgroup_id") if isinstance(pal, dict) else None
                    pod = pods.get(cgroup_id) if isinstance(cgroup_id, int) else None
                    if pod is not None and isinstance(proc, dict):
                        proc["pod"] = _for_process(pod, proc.get("pid"))  # Tetragon's place for the workload
                        container = pod.get("container")
                        if isinstance(container, dict) and "://" in str(container.get("id")):
                            proc["docker"] = str(container["id"]).split("://", 1)[1][:31]  # Tetragon's cut
        return events

    def _pods(self) -> dict[int, dict[str, Any]]:
        """cgroup id → the workload (Tetragon's `process.pod` shape) for the configured workloads."""
        out = {}
        root = syscall.cgroup2_root()
        for w in self.workloads:
            path = Path(w.cgroup)
            if not str(path).startswith(str(root)):
                path = root / str(path).lstrip("/")
            try:
                ino = path.stat().st_ino
            except OSError:
                continue
            out[ino] = {"namespace": w.namespace or "default", "name": w.name, "pod_labels": w.label_map}
        with self._lock:
            scoped = {c: i for cgroups in self._scope.values() for c, i in cgroups.items()}
            discovered = list(self._discovered.values())
        for w in discovered:
            ino = scoped.get(w.cgroup) or _ino(w.cgroup)
            if ino:
                out[ino] = pod_of(w)
        return out

    def drift(self) -> list[Finding]:
        with self._lock:
            return self._drift()

    def repair(self, handle: str) -> Loaded:
        """Heal a damaged load: restore its maps in place when only their entries were changed (the
        programs and links are intact), else load a fresh copy next to it and remove the damaged one."""
        with self._lock:
            old = self._keys.get(handle)
            if old is None:
                raise Refused(PolicyRefusal(RefusalKind.LOAD_FAILED, (f"{handle} is not a palisade load",)))
            if self._restore_maps(handle):
                return self._loaded(handle, State(self.engine.loaded()[handle].mode))
            lp = self.engine.loaded().get(handle) if (self._dir(handle)).is_dir() else None
            base = self._base.get(handle)
            if lp is None:
                raise Refused(PolicyRefusal(RefusalKind.LOAD_FAILED,
                                            (f"{handle} is gone; the re-apply loads it again",)))
            key, tp = self._new_key(lp.policy, old.name, old.digest)
            if self.containers and handle in self._scope:
                cgroups = self._cgroups(tp)  # the scope now: containers came and went since the load
            else:
                cgroups = base.cgroups if base is not None and base.cgroups else self._cgroups(tp)
            res = self.engine.load(tp, lp.mode, cgroups=cgroups if self.containers else cgroups or None)
            if res.refusal is not None:
                raise Refused(res.refusal)
            self._keys[tp.key] = key
            if cgroups is not None and handle in self._scope:
                self._scope[tp.key] = {c: _ino(c) for c in cgroups}
            self._baseline(tp.key)
            self.unload(handle)
            return self._loaded(tp.key, State(lp.mode))

    def close(self) -> None:
        with self._lock:
            self.engine.close()

    # ------------------------------------------------------------------ internals

    def _objects(self, prebuilt: Mapping[str, bytes]) -> ObjectSource:
        return ObjectSource(prebuilt, cache_dir=self._object_cache, build=self.build_objects)

    def _object_note(self, tp: TracingPolicy, policy: Desired, cgroups: tuple[str, ...] | None) -> list[str]:
        """Why the bundle's objects did not serve, when it had some for this policy and the node's plan
        differs from all of them (another kernel layout); nothing otherwise."""
        profiles = self._profiles.get(policy.sha256)
        if not profiles:
            return []
        try:
            plan = compile_policy(tp, self.engine.features, self.engine.formats, scoped=cgroups is not None)
        except BpfError:
            return []
        if source_digest(plan.source) in self._offered:
            return []
        return [f"the bundle's objects for this policy were built for kernel profile {', '.join(profiles)}, "
                f"and this node plans it differently (source {source_digest(plan.source)[:12]}): another "
                "kernel layout or feature set; add this kernel's profile to the reconciler"
                + ("" if self.build_objects else ", or let the node build objects (buildObjects: true)")]

    def _dir(self, key: str) -> Path:
        return self.pin_root / key.replace(".", "_")

    def _loaded(self, handle: str, state: State) -> Loaded:
        key = self._keys[handle]
        return Loaded(handle, key.name, key.digest, state)

    def _new_key(self, tp: TracingPolicy, name: str, digest: str) -> tuple[LoadKey, TracingPolicy]:
        """The first free key of policy `name` at `digest`, and `tp` under its name."""
        n = 1
        while True:
            key = LoadKey(name, digest[:12], n)
            try:
                named = tp.renamed(str(key))
            except BpfError as e:  # a name near the length limit, which the suffix takes past it
                raise invalid(f"policy {name}: {e}") from None
            if not self._dir(named.key).exists():
                return key, named
            n += 1

    def _forget(self, key: str) -> None:
        # The engine keeps tracking a key whose pin directory someone removed, and its public
        # unload refuses it (NotLoaded): drop the stale entry so listing keeps working.
        self.engine._loaded.pop(key, None)
        self.engine._events.remove(key)

    def _forget_vanished(self) -> None:
        for key in list(self.engine._loaded):
            if not self._dir(key).is_dir():
                log.warning("pin directory of %s vanished", key)
                lk = self._keys.pop(key, None)
                self._vanished[key] = lk.name if lk is not None else key
                self._forget(key)

    def _cgroups(self, tp: TracingPolicy) -> tuple[str, ...] | None:
        """None: node-wide. A tuple (maybe empty): the matching workloads' cgroup directories."""
        if not _is_scoped(tp):
            return None
        root = syscall.cgroup2_root()
        out = []
        for w in (*self.workloads, *self._discovered.values()):
            if not _selects(tp, w):
                continue
            path = Path(w.cgroup)
            if not str(path).startswith(str(root)):
                path = root / str(path).lstrip("/")
            out.append(str(path))
        return tuple(out)

    def _baseline(self, key: str) -> None:
        d = self._dir(key)
        try:
            lp = self.engine.loaded()[key]
        except KeyError:
            return
        maps, contents = [], []
        for name in STATIC_MAPS:
            pin = d / f"map_{name}"
            if pin.exists():
                maps.append((name, inv.map_digest(pin).sha256))
                contents.append((name, tuple(sorted(_items(pin)))))
        self._base[key] = _Baseline(frozenset(i for _, i in lp.prog_ids), frozenset(i for _, i in lp.link_ids),
                                    tuple(maps), lp.cgroups, tuple(contents))

    def _restore_maps(self, key: str) -> bool:
        """Put back the recorded entries of the static maps; True if the load is whole again."""
        base = self._base.get(key)
        d = self._dir(key)
        if base is None or not d.is_dir() or not base.contents:
            return False
        kinds = {f.kind for f in self._drift() if f.handle == key}
        if kinds != {DriftKind.MAP_CHANGED}:
            return False
        for name, entries in base.contents:
            fd = syscall.obj_get(d / f"map_{name}")
            try:
                want = dict(entries)
                array = syscall.map_info(fd).type in (syscall.MapType.BPF_MAP_TYPE_ARRAY,
                                                       syscall.MapType.BPF_MAP_TYPE_PERCPU_ARRAY)
                if not array:
                    for k, _ in list(syscall.map_items(fd)):
                        if k not in want:
                            syscall.map_delete_elem(fd, k)
                for k, v in want.items():
                    syscall.map_update_elem(fd, k, v)
            finally:
                os.close(fd)
        return not any(f.handle == key for f in self._drift())

    def _drift(self) -> list[Finding]:
        out: list[Finding] = []
        for key, policy in sorted(self._vanished.items()):
            out.append(Finding(DriftKind.UNLOADED, policy, f"{key}: its pins were removed"))
        self._vanished.clear()
        if not self._base:
            return out
        snap = inv.inventory(pin_root=self.pin_root, cgroup_hooks=inv.DEFAULT_CGROUP_HOOKS)
        progs = {p.id for p in snap.programs}
        links = {link.id: link for link in snap.links}
        ours = set().union(*(b.prog_ids for b in self._base.values()))
        for key, base in sorted(self._base.items()):
            lk = self._keys.get(key)
            name = lk.name if lk is not None else key
            d = self._dir(key)
            if not d.is_dir():
                out.append(Finding(DriftKind.UNLOADED, name, f"{key}: its pins were removed", key))
                continue
            gone = sorted(base.prog_ids - progs)
            if gone:
                out.append(Finding(DriftKind.UNLOADED, name, f"programs {gone} of {key} were unloaded", key))
            lost = sorted(i for i in base.link_ids if i not in links or links[i].cgroup_id == 0)
            pinned = {p.name[5:] for p in d.iterdir() if p.name.startswith("link_")}
            if lost or len(pinned) < len(base.link_ids):
                out.append(Finding(DriftKind.DETACHED, name, f"{key}: {len(base.link_ids) - len(pinned) or len(lost)} "
                                                     f"of {len(base.link_ids)} attachments are gone", key))
            for map_name, digest in base.maps:
                pin = d / f"map_{map_name}"
                try:
                    now = inv.map_digest(pin).sha256
                except (OSError, BpfError):
                    now = "missing"
                if now != digest:
                    out.append(Finding(DriftKind.MAP_CHANGED, name, f"{key}: map {map_name} was changed", key))
        managed = {c for b in self._base.values() for c in b.cgroups}
        for att in snap.cgroup_attachments:
            cg = str(syscall.cgroup2_root() / att.cgroup.lstrip("/")) if att.cgroup != "/" else \
                str(syscall.cgroup2_root())
            if cg in managed and set(att.prog_ids) & ours:
                foreign = sorted(set(att.prog_ids) - ours)
                if foreign:
                    out.append(Finding(DriftKind.FOREIGN, att.attach_type,
                                       f"programs {foreign} not loaded by palisade on {att.attach_type} of {cg}"))
        return out


def _items(pin: Path) -> list[tuple[bytes, bytes]]:
    fd = syscall.obj_get(pin)
    try:
        return list(syscall.map_items(fd))
    finally:
        os.close(fd)


def _for_process(pod: dict[str, Any], pid: Any) -> dict[str, Any]:
    """A container's pod with Tetragon's `container.pid`: the process's pid in the container's pid namespace
    (the last NSpid of /proc/<pid>/status), left out when the process is gone (a killed exec, say)."""
    container = pod.get("container")
    if not isinstance(container, dict):
        return pod
    container = {k: v for k, v in container.items() if k != "pid"}
    try:
        status = Path(f"/proc/{int(pid)}/status").read_text()
        container["pid"] = int(next(ln for ln in status.splitlines() if ln.startswith("NSpid:")).split()[-1])
    except (OSError, ValueError, TypeError, StopIteration):
        pass
    return {**pod, "container": container}


def _is_scoped(tp: TracingPolicy) -> bool:
    return tp.kind == "TracingPolicyNamespaced" or tp.pod_selector is not None or tp.container_selector is not None


def _selects(tp: TracingPolicy, w: Workload) -> bool:
    """Whether scoped policy `tp` holds workload `w`: its namespace (a namespaced policy), its pod labels
    (podSelector), and for a container its name (containerSelector matches Tetragon's `name` key)."""
    if not _is_scoped(tp):
        return False
    if tp.kind == "TracingPolicyNamespaced" and (w.namespace or "default") != tp.namespace:
        return False
    if tp.pod_selector is not None and not _matches(tp.pod_selector, w.label_map):
        return False
    if tp.container_selector is not None:
        name = w.container.container_name if w.container is not None else w.name
        if not _matches(tp.container_selector, {"name": name}):
            return False
    return True


def _ino(cgroup: str) -> int:
    """The cgroup's id (its directory's inode), 0 when it is gone."""
    try:
        return os.stat(cgroup).st_ino
    except OSError:
        return 0


def _matches(sel: LabelSelector, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in sel.match_labels):
        return False
    for key, op, values in sel.match_expressions:
        have = key in labels
        if op == "In" and not (have and labels[key] in values):
            return False
        if op == "NotIn" and have and labels[key] in values:
            return False
        if op == "Exists" and not have:
            return False
        if op == "DoesNotExist" and have:
            return False
    return True


def _why_inactive(tp: TracingPolicy) -> str:
    parts = []
    if tp.kind == "TracingPolicyNamespaced":
        parts.append(f"namespace {tp.namespace}")
    if tp.pod_selector is not None:
        parts.append("podSelector " + ",".join(f"{k}={v}" for k, v in tp.pod_selector.match_labels))
    return f"no workload on this node matches {' and '.join(parts)}"


def _probe() -> Features:
    try:
        from bpf.probe import probe

        return Features.of(probe())
    except Exception as e:  # the probe needs root; compile with the documented defaults otherwise
        log.warning("kernel probe failed (%s); assuming the features in DESIGN.md §6", e)
        return Features()

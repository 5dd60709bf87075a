"""Load, attach, pin, adopt, switch and unload compiled policies in the running kernel.

Everything a policy puts in the kernel is pinned under `<pin_root>/<policy key>/`:
`prog_<fn>` (every program), `link_<fn>[_cg<cgroup id>]` (every attachment, as
a bpf_link: tracepoints through perf-event links, cgroup hooks through cgroup
links), `map_<name>` (every map, including `pl_meta`, which holds the policy
document and the load parameters so that a new process can adopt it). bpffs
refuses dots in names, so the directory is the key with `.` written as `_`
(Kubernetes names never contain `_`). Links
are pinned, not held by a file descriptor, so enforcement outlives the loading
process. Unloading does not rely on removing the pins alone, because the kernel
drops a pin's reference only after an RCU grace period and frees programs some
30-45 ms later: it switches the policy's programs off (`pl_cfg.mode =
MODE_OFF`, seen by the very next event), detaches the links the kernel can
detach (cgroup links; perf-event links cannot be), removes the pins, and waits
until the kernel has freed every program, link and map of the policy.

The engine never enforces against itself: every program first looks the current
tgid up in `<pin_root>/_self`, a hash map of engine tgids → process start time
shared by all the policies of the root. `Engine()` and `adopt()` write the
process's own tgid there before anything else (so an agent restarted with a new
pid is exempt before its first load) and drop entries of processes that are gone
(every policy also has `pl_self_exit`, which drops an engine the moment its last
thread exits, so a recycled pid is never exempt); `load()` creates the map when
it is missing, and the last `unload()` removes it. Only the engine's process is
exempt, not processes it starts.

Loading is all-or-nothing: the policy is built in a hidden sibling directory
(`_loading_<pid>_<dir>`) and renamed into place once every program is attached;
any failure removes the hidden directory, and with it every program, link and
map created so far. A hidden directory left by a loader that died is removed
by the next `adopt()`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.values import State

from . import exec_state, inventory, scope, syscall, uprobes, usdt
from .compile import (
    MODE_OFF,
    MODES,
    NS_FILES,
    SELF_ENTRIES,
    USDT_ARGS,
    Features,
    NsEntry,
    Plan,
    Site,
    compile_policy,
)
from .core.libbpf import BpfObject
from .errors import BpfError, LoadError, NotLoaded, PolicyRefusal, RefusalKind, Unsupported
from .events import Counters, EventStream, read_counters
from .objects import ObjectSource
from .policy import TracingPolicy, effective_mode, parse
from .tpformat import Formats, tracefs_formats

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/palisade")
_META_VERSION = 1
_CFG = struct.Struct("<II")  # struct pl_cfg { u32 mode; u32 scoped; }
_PROC = struct.Struct("<QII256s256s")  # struct pl_proc
_BASE_MAPS = ("pl_cfg", "pl_counters", "pl_scratch", "pl_events", "pl_scope", "pl_meta")
#: Maps whose content is fixed at load (or by a mode switch): any other change is tampering.
STATIC_MAPS = ("pl_cfg", "pl_scope", "pl_cgpaths", "pl_str_eq64", "pl_str_eq", "pl_str_pre", "pl_str_post",
               "pl_ns", "pl_meta")
_BPF_NOEXIST = 1
_SELF_PIN = "_self"
#: How long an unload waits for the kernel to free what it unpinned (measured: 30-50 ms).
_FREE_TIMEOUT = 2.0

_CGROUP_ATTACH = {
    "sock_create": syscall.AttachType.BPF_CGROUP_INET_SOCK_CREATE,
    "connect4": syscall.AttachType.BPF_CGROUP_INET4_CONNECT,
    "connect6": syscall.AttachType.BPF_CGROUP_INET6_CONNECT,
    "sendmsg4": syscall.AttachType.BPF_CGROUP_UDP4_SENDMSG,
    "sendmsg6": syscall.AttachType.BPF_CGROUP_UDP6_SENDMSG,
}
#: Programs on the BPF trampoline: loaded with the BTF id of their target (libbpf resolves it from the section,
#: `lsm/<hook>`, `fmod_ret/<function>`), linked with their attach type.
_TRACING_ATTACH = {
    "lsm": syscall.AttachType.BPF_LSM_MAC,
    "fmod_ret": syscall.AttachType.BPF_MODIFY_RETURN,
    "fexit": syscall.AttachType.BPF_TRACE_FEXIT,
    "fentry": syscall.AttachType.BPF_TRACE_FENTRY,
}


@dataclass(frozen=True)
class LoadResult:
    key: str
    loaded: bool
    #: Why it was refused or failed (None when loaded): the value the agent carries up to its status.
    refusal: PolicyRefusal | None = None
    #: Program name → kernel program id.
    prog_ids: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = ()
    #: Where the loaded object came from: "bundle", "cache" or "built" (bpf.objects).
    origin: str = ""

    @property
    def reasons(self) -> tuple[str, ...]:
        """The refusal's sentences (each "unsupported: ..." or "load failed: ..."); () when loaded."""
        return self.refusal.reasons if self.refusal is not None else ()


def _failed(key: str, reason: str, notes: tuple[str, ...] = ()) -> LoadResult:
    return LoadResult(key, False, PolicyRefusal(RefusalKind.LOAD_FAILED, (f"load failed: {reason}",)), notes=notes)


def _mode(mode: State | str) -> State:
    """The ladder state a caller names (a State, or its text)."""
    try:
        return State(mode)
    except ValueError:
        raise ValueError(f"unknown mode {mode!r}; modes are {', '.join(MODES)}") from None


@dataclass(frozen=True)
class LoadedPolicy:
    key: str
    policy: TracingPolicy
    plan: Plan = field(repr=False)
    mode: State
    pin_dir: Path
    #: Workload cgroup directories (empty: the whole node).
    cgroups: tuple[str, ...]
    prog_ids: tuple[tuple[str, int], ...]
    link_ids: tuple[tuple[str, int], ...]
    map_ids: tuple[tuple[str, int], ...]
    adopted: bool


class Engine:
    """The policies this node enforces. Needs root, bpffs, tracefs, BTF and libbpf (clang only to build
    objects a bundle does not carry)."""

    def __init__(self, pin_root: Path = DEFAULT_PIN_ROOT, node_name: str | None = None,
                 features: Features | None = None, formats: Formats | None = None,
                 objects: ObjectSource | None = None) -> None:
        self.pin_root = Path(pin_root)
        #: Where compiled objects come from (a bundle's signed objects, else built here and cached).
        self.objects = objects or ObjectSource()
        # first: a policy already pinned here (a block-bpf-load, say) must not hit this process;
        # best effort here, load() does it again and reports a failure
        with contextlib.suppress(LoadError):
            self._exempt_self(create=False)
        self.node_name = node_name or socket.gethostname()
        self._features = features
        self.formats = formats or tracefs_formats()
        self._loaded: dict[str, tuple[Plan, bool]] = {}
        self._events = EventStream(self.node_name)
        #: Pinned directories `adopt()` could not take over, with the reason.
        self.broken: dict[str, str] = {}

    @property
    def features(self) -> Features:
        """What the kernel offers: given, or probed on first use (root; a fraction of a second)."""
        if self._features is None:
            from .probe import probe

            self._features = Features.of(probe())
        return self._features

    # ------------------------------------------------------------------ public surface

    def load(self, policy: TracingPolicy, mode: State | str = State.OBSERVE,
             cgroups: Sequence[str | os.PathLike[str]] | None = None) -> LoadResult:
        """Load and attach `policy` in `mode`, limited to the processes of `cgroups` (cgroup2 directories)
        when given. Refusals and kernel failures are returned, with nothing left behind."""
        mode = State(effective_mode(policy, _mode(mode)))
        key = policy.key
        try:
            plan = compile_policy(policy, self.features, self.formats, scoped=cgroups is not None,
                                  real_path=real_binary_path, resolve_uprobe=uprobes.resolve,
                                  resolve_usdt=usdt.resolve)
        except Unsupported as e:
            return LoadResult(key, False, e.refusal)
        if cgroups is None and (policy.namespace or policy.pod_selector or policy.container_selector):
            return LoadResult(key, False, PolicyRefusal(RefusalKind.NEEDS_WORKLOADS, (
                "refused: the policy is limited to workloads (namespace, podSelector or containerSelector); "
                "load it with the cgroups of those workloads",)))
        final = self._dir(key)
        if final.exists():
            return _failed(key, f"{key} is already loaded ({final} exists); unload it first")
        cg = tuple(str(Path(c)) for c in cgroups) if cgroups is not None else None
        if cg is not None:
            missing = [c for c in cg if not Path(c, "cgroup.procs").exists()]
            if missing:
                return _failed(key, f"not cgroup2 directories: {', '.join(missing)}")
            # an empty scope is a scope of nothing (SCOPED in pl_cfg), until scope_add brings a workload in
            deep = [c for c in cg if scope.level(c, syscall.cgroup2_root()) >= scope.MAX_LEVEL]
            if deep:
                return _failed(key, f"cgroups more than {scope.MAX_LEVEL - 1} levels deep cannot be a scope: "
                                    f"{', '.join(deep)}")
        try:
            self._exempt_self(create=True)
            loader = _Loader(self, plan, mode, cg)
            loader.run(final)
        except Unsupported as e:  # found at load: a kernel function the policy names is missing here
            self._drop_self_if_idle()
            return LoadResult(key, False, e.refusal, notes=plan.notes)
        except (BpfError, OSError) as e:
            self._drop_self_if_idle()
            return _failed(key, str(e), plan.notes)
        self._track(key, plan, adopted=False)
        lp = self._describe(key)
        return LoadResult(key, True, None, lp.prog_ids, plan.notes, loader.origin)

    def set_mode(self, key: str, mode: State | str) -> None:
        """Switch a loaded (or pinned) policy's mode in place: same programs, new behaviour."""
        mode = _mode(mode)
        if key in self._loaded:
            mode = State(effective_mode(self._loaded[key][0].policy, mode))
        fd = self._open(key, "map_pl_cfg")
        try:
            raw = syscall.map_lookup_elem(fd, b"\0\0\0\0", _CFG.size) or _CFG.pack(0, 0)
            _, scoped = _CFG.unpack(raw)
            syscall.map_update_elem(fd, b"\0\0\0\0", _CFG.pack(mode.rank, scoped))
        finally:
            os.close(fd)

    def unload(self, key: str) -> None:
        """Detach and free everything of policy `key`."""
        d = self._dir(key)
        if not d.is_dir():
            raise NotLoaded(f"policy {key} is not loaded (no {d})")
        self._events.remove(key)
        self._loaded.pop(key, None)
        _teardown(d)
        self._drop_self_if_idle()

    def loaded(self) -> dict[str, LoadedPolicy]:
        """The policies this engine manages (loaded or adopted), as the kernel has them now."""
        return {k: self._describe(k) for k in sorted(self._loaded)}

    def adopt(self) -> list[str]:
        """Take over every policy pinned under `pin_root` (after a restart); returns their keys.

        Half-built directories of a loader that died are removed. Directories whose
        metadata cannot be read are left alone and listed in `broken`."""
        adopted: list[str] = []
        with contextlib.suppress(LoadError):
            self._exempt_self(create=False)
        if not self.pin_root.is_dir():
            return adopted
        for d in sorted(self.pin_root.iterdir()):
            if not d.is_dir():
                continue  # the shared exemption map
            if d.name.startswith("_loading_"):
                if _stale(d.name):
                    _teardown(d)
                continue
            try:
                policy, cg = _read_meta(d)
                plan = compile_policy(policy, self.features, self.formats, scoped=_meta_scoped(d) or bool(cg),
                                      real_path=real_binary_path)
            except (BpfError, OSError, ValueError) as e:
                self.broken[d.name] = str(e)
                continue
            if self._dir(policy.key) != d:
                self.broken[d.name] = f"pinned as {d.name} but its metadata names {policy.key}"
                continue
            if policy.key in self._loaded:
                continue
            self._track(policy.key, plan, adopted=True)
            adopted.append(policy.key)
        return adopted

    def poll_events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        events = self._events.poll(timeout)
        for ev in events:
            self._finish_escape(ev)
        return events

    def _finish_escape(self, ev: dict[str, Any]) -> None:
        """Kill a process a workload moved out of an enforced scope, when the kernel could not: the
        writer died in the kernel, but no program can signal another task (bpf/scope.py). Only a
        process still marked doomed in the policy's members is killed, so a pid reused since is safe."""
        body, meta = ev.get("process_tracepoint"), ev.get("palisade")
        if not (isinstance(body, dict) and isinstance(meta, dict) and meta.get("acted")
                and body.get("event") == scope.ATTACH_TRACEPOINT[1] and body.get("subsys") == "cgroup"):
            return
        moved = body["args"][0].get("int_arg")
        if not isinstance(moved, int) or moved == body["process"]["pid"]:
            return
        try:
            fd = self._open(str(meta["policy_key"]), "map_pl_members")
        except (NotLoaded, OSError):
            return
        try:
            if scope.is_member(fd, moved) == scope.DOOMED:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(moved, 9)
                meta["moved_killed"] = True
        finally:
            os.close(fd)

    def scope_add(self, key: str, cgroup: str | os.PathLike[str]) -> int:
        """Bring cgroup2 directory `cgroup` into scoped policy `key`'s scope, programs unchanged: its id
        into `pl_scope`, its path into `pl_cgpaths`, its level into `pl_cfg.scoped`, its processes into
        the members, and the policy's cgroup-hook programs attached to it. Returns the cgroup's id (what
        `scope_remove` takes, since a removed container's directory can no longer be stat'ed)."""
        path = str(Path(cgroup))
        root = syscall.cgroup2_root()
        if not Path(path, "cgroup.procs").exists():
            raise LoadError(f"not a cgroup2 directory: {path}")
        if scope.level(path, root) >= scope.MAX_LEVEL:
            raise LoadError(f"cgroups more than {scope.MAX_LEVEL - 1} levels deep cannot be a scope: {path}")
        d = self._dir(key)
        if not (d / "map_pl_members").exists():
            raise NotLoaded(f"policy {key} is not a scoped load (no {d / 'map_pl_members'})")
        ino = os.stat(path).st_ino
        fd = self._open(key, "map_pl_cfg")
        try:
            mode, scoped = _CFG.unpack(syscall.map_lookup_elem(fd, b"\0\0\0\0", _CFG.size) or _CFG.pack(0, 0))
            # the level first: the kernel asks for a task's ancestors at the levels the mask names
            syscall.map_update_elem(fd, b"\0\0\0\0", _CFG.pack(mode, scoped | scope.level_mask([path], root)))
        finally:
            os.close(fd)
        for pin, k in (("map_pl_cgpaths", next(scope.path_keys([path], root))),
                       ("map_pl_scope", struct.pack("<Q", ino))):
            fd = self._open(key, pin)
            try:
                syscall.map_update_elem(fd, k, b"\1")
            finally:
                os.close(fd)
        fd = self._open(key, "map_pl_members")
        try:
            scope.seed(fd, [path])
        finally:
            os.close(fd)
        plan = self._loaded[key][0] if key in self._loaded else None
        for site in plan.sites if plan is not None else ():
            if site.kind == "cgroup" and site.attach and not (d / f"link_{site.function}_cg{ino}").exists():
                pfd = self._open(key, f"prog_{site.function}")
                cgfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    lfd = syscall.link_create_cgroup(pfd, cgfd, _CGROUP_ATTACH[site.attach])
                finally:
                    os.close(cgfd)
                    os.close(pfd)
                _pin_link(lfd, d / f"link_{site.function}_cg{ino}")
        return ino

    def scope_remove(self, key: str, cgroup: str | os.PathLike[str], ino: int) -> None:
        """Take cgroup `cgroup` (id `ino`) out of policy `key`'s scope: its entries and its cgroup-hook links.
        The level stays in the mask (a superset only costs a lookup)."""
        root = syscall.cgroup2_root()
        d = self._dir(key)
        for pin, k in (("map_pl_scope", struct.pack("<Q", ino)),
                       ("map_pl_cgpaths", next(scope.path_keys([str(Path(cgroup))], root)))):
            fd = self._open(key, pin)
            try:
                with contextlib.suppress(FileNotFoundError):
                    syscall.map_delete_elem(fd, k)
            finally:
                os.close(fd)
        for link in d.glob(f"link_*_cg{ino}"):
            with contextlib.suppress(OSError):
                lfd = syscall.obj_get(link)
                try:
                    _detach(lfd)
                finally:
                    os.close(lfd)
            link.unlink()

    def counters(self, key: str) -> Counters:
        fd = self._open(key, "map_pl_counters")
        try:
            return read_counters(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release this process's file descriptors; what is pinned stays enforced."""
        self._events.close()
        self._loaded.clear()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def self_pin(self) -> Path:
        """The map of exempt engine processes shared by the policies under `pin_root`."""
        return self.pin_root / _SELF_PIN

    # ------------------------------------------------------------------ helpers

    def _exempt_self(self, create: bool) -> None:
        """Put this process in the exemption map (creating it when `create`), dropping processes that are gone."""
        pin = self.self_pin
        try:
            fd = syscall.obj_get(pin)
        except OSError as e:
            if e.errno != errno.ENOENT or not create:
                return  # nothing pinned yet (or no bpffs): nothing can hit us before our first load
            self.pin_root.mkdir(parents=True, exist_ok=True)
            fd = syscall.map_create(syscall.MapType.BPF_MAP_TYPE_HASH, 4, 8, SELF_ENTRIES, name="pl_self")
            try:
                syscall.obj_pin(fd, pin)
            except OSError as e2:
                os.close(fd)
                if e2.errno != errno.EEXIST:
                    raise
                fd = syscall.obj_get(pin)  # another engine pinned it meanwhile
        try:
            me = _own_tgid()
            for key in list(syscall.map_keys(fd, 4)):
                (pid,) = struct.unpack("<I", key)
                raw = syscall.map_lookup_elem(fd, key, 8)
                if pid != me and (raw is None or _start_time(pid) != struct.unpack("<Q", raw)[0]):
                    syscall.map_delete_elem(fd, key)  # gone, or its pid now belongs to another process
            syscall.map_update_elem(fd, struct.pack("<I", me), struct.pack("<Q", _start_time(me) or 0))
        except OSError as e:
            raise LoadError(f"cannot exempt this process from its own policies in {pin}: {e}") from None
        finally:
            os.close(fd)

    def _drop_self_if_idle(self) -> None:
        """Remove the exemption map once no policy (nor a load in progress) is pinned under the root."""
        if not self.pin_root.is_dir():
            return
        if any(p.is_dir() for p in self.pin_root.iterdir()):
            return
        with contextlib.suppress(FileNotFoundError):
            self.self_pin.unlink()

    def _dir(self, key: str) -> Path:
        return self.pin_root / key.replace(".", "_")

    def _open(self, key: str, pin: str) -> int:
        path = self._dir(key) / pin
        try:
            return syscall.obj_get(path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise NotLoaded(f"policy {key} is not loaded (no {path})") from None
            raise

    def _track(self, key: str, plan: Plan, adopted: bool) -> None:
        self._loaded[key] = (plan, adopted)
        stacks = self._open(key, "map_pl_stacks") if plan.stacks else None
        self._events.add(key, self._open(key, "map_pl_events"), plan, stacks)

    def _describe(self, key: str) -> LoadedPolicy:
        plan, adopted = self._loaded[key]
        d = self._dir(key)
        progs, links, maps = [], [], []
        for p in sorted(d.iterdir()):
            fd = syscall.obj_get(p)
            try:
                if p.name.startswith("prog_"):
                    progs.append((p.name[5:], syscall.prog_info(fd).id))
                elif p.name.startswith("link_"):
                    links.append((p.name[5:], syscall.link_info(fd).id))
                elif p.name.startswith("map_"):
                    maps.append((p.name[4:], syscall.map_info(fd).id))
            finally:
                os.close(fd)
        fd = self._open(key, "map_pl_cfg")
        try:
            raw = syscall.map_lookup_elem(fd, b"\0\0\0\0", _CFG.size) or _CFG.pack(0, 0)
        finally:
            os.close(fd)
        mode_i, _ = _CFG.unpack(raw)
        _, cg = _read_meta(d)
        return LoadedPolicy(key=key, policy=plan.policy, plan=plan, mode=MODES[min(mode_i, len(MODES) - 1)], pin_dir=d,
                            cgroups=cg, prog_ids=tuple(progs), link_ids=tuple(links), map_ids=tuple(maps),
                            adopted=adopted)


class _Loader:
    """One load: open the CO-RE object with libbpf, fill maps, attach through pinned links, publish by rename."""

    def __init__(self, engine: Engine, plan: Plan, mode: State, cgroups: tuple[str, ...] | None) -> None:
        self.e = engine
        self.origin = ""  # where the object came from (ObjectSource)
        self.plan = plan
        self.mode = mode
        self.cgroups = cgroups
        self.meta = json.dumps({
            "version": _META_VERSION,
            "key": plan.policy.key,
            "document": plan.policy.document,
            "cgroups": list(cgroups) if cgroups is not None else None,
        }, sort_keys=True, separators=(",", ":")).encode()

    def run(self, final: Path) -> None:
        self.e.pin_root.mkdir(parents=True, exist_ok=True)
        tmp = self.e.pin_root / f"_loading_{os.getpid()}_{final.name}"
        if tmp.exists():
            _teardown(tmp)
        tmp.mkdir()
        obj: BpfObject | None = None
        try:
            meta_size = (len(self.meta) + 4 + 7) // 8 * 8
            code = self.e.objects.get(self.plan.source, final.name)
            self.origin = code.origin
            obj = BpfObject.open_mem(code.data, final.name[:15])
            obj.map("pl_meta").set_value_size(meta_size)
            self_fd = syscall.obj_get(self.e.self_pin)
            try:
                obj.map("pl_self").reuse_fd(self_fd)
            finally:
                os.close(self_fd)
            obj.load()
            progs: dict[str, int] = {}
            for site in self.plan.sites:
                fd = obj.program(site.function).fd
                progs[site.function] = fd
                syscall.obj_pin(fd, tmp / f"prog_{site.function}")
            maps = list(_BASE_MAPS)
            if self.plan.strings:
                maps += ["pl_str_eq64", "pl_str_eq", "pl_str_pre", "pl_str_post"]
            if self.plan.tracking:
                maps.append("pl_procs")
            if self.plan.lineage:
                maps.append("pl_lineage")
            if self.plan.exec_state:
                maps.append("pl_base")
            if self.plan.namespaces:
                maps.append("pl_ns")
            if self.plan.stacks:
                maps.append("pl_stacks")
            if any(h.usdt is not None for h in self.plan.hooks):
                maps.append("pl_usdt")
            if self.plan.scoped:
                maps += ["pl_members", "pl_cgpaths"]
            fds = {name: obj.map(name).fd for name in maps}
            for name, fd in fds.items():
                syscall.obj_pin(fd, tmp / f"map_{name}")
            self._fill(fds, meta_size)
            # process tracking and scope membership first, then what was there before they ran
            first = ("pl_track_", "pl_scope_")
            tracking = [s for s in self.plan.sites if s.function.startswith(first)]
            hooks = [s for s in self.plan.sites if not s.function.startswith(first)]
            for s in tracking:
                self._attach(tmp, s, progs[s.function])
            if self.plan.tracking:
                _seed(fds["pl_procs"], self.plan)
            if self.plan.lineage:
                _seed_lineage(fds["pl_lineage"])
            if self.plan.exec_state:
                exec_state.seed(fds["pl_base"])
            if self.plan.scoped:
                scope.seed(fds["pl_members"], self.cgroups or ())
            for s in hooks:
                self._attach(tmp, s, progs[s.function])
            os.rename(tmp, final)
        except BaseException:
            _teardown(tmp)
            raise
        finally:
            if obj is not None:
                obj.close()  # what the policy needs is pinned

    def _fill(self, fds: dict[str, int], meta_size: int) -> None:
        zero = b"\0\0\0\0"
        scoped = 0 if self.cgroups is None else scope.level_mask(self.cgroups, syscall.cgroup2_root())
        syscall.map_update_elem(fds["pl_cfg"], zero, _CFG.pack(self.mode.rank, scoped))
        for c in self.cgroups or ():
            ino = os.stat(c).st_ino
            syscall.map_update_elem(fds["pl_scope"], struct.pack("<Q", ino), b"\1")
        if self.plan.scoped:
            for k in scope.path_keys(self.cgroups or (), syscall.cgroup2_root()):
                syscall.map_update_elem(fds["pl_cgpaths"], k, b"\1")
        for s in self.plan.strings:
            syscall.map_update_elem(fds[s.map_name], s.key, struct.pack("<Q", s.bits))
        for key, bits in namespace_entries(self.plan.namespaces).items():
            syscall.map_update_elem(fds["pl_ns"], key, struct.pack("<Q", bits))
        for site in self.plan.sites:
            for n, probe in enumerate(site.usdt_probes):
                syscall.map_update_elem(fds["pl_usdt"], struct.pack("<I", site.usdt_base + n), _usdt_spec(probe))
        syscall.map_update_elem(fds["pl_meta"], zero,
                                struct.pack("<I", len(self.meta)) + self.meta.ljust(meta_size - 4, b"\0"))

    def _attach(self, tmp: Path, site: Site, prog_fd: int) -> None:
        if site.kind == "raw_tracepoint" or site.kind in _TRACING_ATTACH:
            if site.kind in _TRACING_ATTACH:
                lfd = syscall.link_create_tracing(prog_fd, _TRACING_ATTACH[site.kind])
            else:
                assert site.event
                lfd = syscall.raw_tracepoint_open(prog_fd, site.event)
            _pin_link(lfd, tmp / f"link_{site.function}")
            return
        if site.kind == "kprobe" and site.pattern is not None:
            self._attach_ftrace_list(tmp, site, prog_fd)
            return
        if site.kind == "uprobe" and site.usdt_base >= 0:
            self._attach_usdt(tmp, site, prog_fd)
            return
        if site.kind in ("tracepoint", "kprobe", "kretprobe", "uprobe"):
            if site.kind == "tracepoint":
                assert site.subsystem and site.event
                pfd = syscall.perf_event_open_tracepoint(syscall.tracepoint_id(site.subsystem, site.event))
            elif site.kind == "uprobe":
                # in every process that maps the file (the inode is the probe's, whatever path reached it)
                assert site.file is not None and site.offset is not None, "a uprobe planned without its file"
                pfd = syscall.perf_event_open_uprobe(site.file, site.offset)
            else:
                assert site.attach
                try:
                    pfd = syscall.perf_event_open_kprobe(site.attach, retprobe=site.kind == "kretprobe")
                except OSError as e:
                    # the kernel names no such function, or cannot probe the one it has (inlined, on the
                    # kprobe blacklist, several of that name)
                    if e.errno not in _UNPROBEABLE:
                        raise
                    if site.optional:
                        return  # ignore: callNotFound, as Tetragon: the policy runs without this call
                    why = (f"the kernel cannot put a kprobe on {site.attach} ({os.strerror(e.errno)}: inlined, "
                           "blacklisted for kprobes or not one function)" if kernel_has_function(site.attach) else
                           f"this kernel has no function {site.attach}")
                    raise Unsupported([f"unsupported: kprobe on {site.attach}: {why}; `ignore: {{callNotFound: true}}` "
                                       "on the hook loads the policy without it"]) from None
            _pin_perf_link(prog_fd, pfd, tmp / f"link_{site.function}")
            return
        assert site.attach
        targets = list(self.cgroups) if self.cgroups is not None else [str(syscall.cgroup2_root())]
        for path in targets:
            cgfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                lfd = syscall.link_create_cgroup(prog_fd, cgfd, _CGROUP_ATTACH[site.attach])
            finally:
                os.close(cgfd)
            _pin_link(lfd, tmp / f"link_{site.function}_cg{os.stat(path).st_ino}")


    def _attach_usdt(self, tmp: Path, site: Site, prog_fd: int) -> None:
        """A usdt's program on a uprobe at each site of its probe (`link_<fn>_<k>`), linked with the cookie
        that keys the site's argument specs in pl_usdt, and with the probe's semaphore, which the kernel
        counts up while the link lives."""
        assert site.usdt_probes, "a usdt planned without its sites"
        for k, probe in enumerate(site.usdt_probes):
            pfd = syscall.perf_event_open_uprobe(probe.file, probe.offset, ref_ctr_offset=probe.ref_ctr_offset)
            _pin_perf_link(prog_fd, pfd, tmp / f"link_{site.function}_{k}", cookie=site.usdt_base + k)

    def _attach_ftrace_list(self, tmp: Path, site: Site, prog_fd: int) -> None:
        """The program of a generated_ftrace list on a kprobe at each kernel function its pattern matches,
        one link each (`link_<fn>_<k>`). A matched function the kernel will not kprobe (on the kprobe
        blacklist, or a name several functions share) is left out; none at all refuses the policy."""
        assert site.pattern is not None
        names = ftrace_functions(site.pattern)
        if not names:
            raise Unsupported([f"unsupported: {site.attach}: no kernel function of the ftrace list "
                               f"(available_filter_functions) matches {site.pattern!r}"])
        attached = 0
        for name in names:
            try:
                pfd = syscall.perf_event_open_kprobe(name)
            except OSError as e:
                if e.errno not in _UNPROBEABLE:
                    raise
                continue
            _pin_perf_link(prog_fd, pfd, tmp / f"link_{site.function}_{attached}")
            attached += 1
        if not attached:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise Unsupported([f"unsupported: {site.attach}: the kernel puts a kprobe on none of the functions "
                               f"matching {site.pattern!r} ({shown})"])


def _pin_link(lfd: int, path: Path) -> None:
    """Pin a link this process made at `path`, then close its fd: the pin keeps the link (and its program)."""
    try:
        syscall.obj_pin(lfd, path)
    finally:
        os.close(lfd)


def _pin_perf_link(prog_fd: int, pfd: int, path: Path, cookie: int = 0) -> None:
    """Link the program to perf event `pfd` (closed here: the link holds the event) and pin the link."""
    try:
        lfd = syscall.link_create_perf_event(prog_fd, pfd, cookie=cookie)
    finally:
        os.close(pfd)
    _pin_link(lfd, path)


#: Where the kernel lists the functions ftrace (and so a kprobe) can trace: tracefs, or tracefs under debugfs.
FTRACE_FUNCTIONS = (Path("/sys/kernel/tracing/available_filter_functions"),
                    Path("/sys/kernel/debug/tracing/available_filter_functions"))


def ftrace_functions(pattern: str, paths: Sequence[Path] = FTRACE_FUNCTIONS) -> list[str]:
    """The kernel functions of the ftrace list that regular expression `pattern` matches (anywhere in the
    name, as Tetragon's Go regexp does), each once, in the list's order; a module's functions carry their
    module in brackets there, which is not part of the name."""
    rx = re.compile(pattern)
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        seen: dict[str, None] = {}
        for line in text.splitlines():
            name = line.split(maxsplit=1)[0] if line.strip() else ""
            if name and rx.search(name):
                seen.setdefault(name)
        return list(seen)
    raise Unsupported(["unsupported: a generated_ftrace list needs the kernel's ftrace function list "
                       f"({' or '.join(map(str, paths))}), which is not readable here"])


#: perf_event_open errors of a kprobe on a function the kernel lacks or cannot probe.
_UNPROBEABLE = (errno.ENOENT, errno.EINVAL, errno.EADDRNOTAVAIL, errno.EILSEQ)


def kernel_has_function(name: str, kallsyms: Path = Path("/proc/kallsyms")) -> bool:
    """Whether the running kernel (or a loaded module) has a function named `name` (a text symbol)."""
    with kallsyms.open() as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == name and parts[1] in "tT":
                return True
    return False


def namespace_entries(entries: Sequence[NsEntry], proc: Path = Path("/proc")) -> dict[bytes, int]:
    """`pl_ns` contents: (kind, inode) → the bits of the matchNamespaces entries naming it. host_ns is this
    node's own namespace of that kind, as init (/proc/1/ns) has it; where init's are not readable (a
    sandbox that denies ptrace access to pid 1), the agent's own, which a node agent shares with the host."""
    def host(kind: int) -> int:
        try:
            return os.stat(proc / "1" / "ns" / NS_FILES[kind]).st_ino
        except PermissionError:
            return os.stat(proc / "self" / "ns" / NS_FILES[kind]).st_ino

    out: dict[bytes, int] = {}
    for e in entries:
        for v in e.values:
            inum = host(e.kind) if v == "host_ns" else int(v)
            key = struct.pack("<II", e.kind, inum & 0xFFFFFFFF)
            out[key] = out.get(key, 0) | (1 << e.bit)
    return out


def remove_all(pin_root: Path = DEFAULT_PIN_ROOT) -> tuple[list[str], list[str]]:
    """Stop enforcing everything pinned under `pin_root` and remove the root: (unloaded, problems).

    Policies are adopted and unloaded; directories an engine cannot adopt (broken or
    half-built) and the exemption map are torn down pin by pin. For decommissioning a
    node (`palisade-agent reset`) and for cleaning up after tests.
    """
    unloaded: list[str] = []
    problems: list[str] = []
    if not pin_root.exists():
        return unloaded, problems
    with Engine(pin_root) as engine:
        for key in engine.adopt():
            try:
                engine.unload(key)
                unloaded.append(key)
            except (OSError, BpfError) as e:
                problems.append(f"{key}: {e}")
    for leftover in sorted(pin_root.iterdir()) if pin_root.exists() else ():
        try:
            if leftover.is_dir():
                _teardown(leftover)
            else:
                leftover.unlink()
        except OSError as e:
            problems.append(f"{leftover}: {e}")
    with contextlib.suppress(OSError):
        pin_root.rmdir()
    return unloaded, problems


def real_binary_path(value: str) -> str:
    """A matchBinaries value as the kernel will name the file: symlinks resolved on this node, a
    directory prefix keeping its slash. A path that does not exist yet resolves as far as it exists,
    so a symlink put there later is judged by where it leads."""
    if not value.startswith("/"):
        return value
    real = os.path.realpath(value)
    return real + "/" if value.endswith("/") and real != "/" else real


def _own_tgid() -> int:
    """This process's tgid as the kernel's BPF helpers see it (the initial pid namespace).

    That is what /proc/self names when /proc is the host's (an agent runs with the host's pid
    namespace, as Tetragon's does); os.getpid() is the pid in the process's own namespace."""
    try:
        return int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        return os.getpid()


def _start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot; /proc/<pid>/stat field 22), None if it is gone.

    With the pid it identifies a process: a recycled pid has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _read_meta(d: Path) -> tuple[TracingPolicy, tuple[str, ...]]:
    try:
        fd = syscall.obj_get(d / "map_pl_meta")
    except OSError as e:
        raise LoadError(f"{d}: no readable metadata map ({e})") from None
    try:
        size = syscall.map_info(fd).value_size
        raw = syscall.map_lookup_elem(fd, b"\0\0\0\0", size)
    finally:
        os.close(fd)
    if not raw:
        raise LoadError(f"{d}: empty metadata map")
    (n,) = struct.unpack_from("<I", raw)
    meta = json.loads(raw[4:4 + n])
    if meta.get("version") != _META_VERSION:
        raise LoadError(f"{d}: metadata version {meta.get('version')!r} is not {_META_VERSION}")
    return parse(meta["document"]), tuple(meta.get("cgroups") or ())


def _meta_scoped(d: Path) -> bool:
    """Whether the load pinned in `d` is scoped, also with a scope of no cgroups (what `scope_add` fills)."""
    return (d / "map_pl_members").exists()


def _teardown(d: Path, timeout: float = _FREE_TIMEOUT) -> bool:
    """Stop, detach and unpin everything in `d`, remove it, and wait until the kernel has freed it.

    True when every program, link and map pinned there is gone from the kernel
    within `timeout` (they are switched off and detached before that anyway)."""
    progs: set[int] = set()
    links: set[int] = set()
    maps: set[int] = set()
    _switch_off(d / "map_pl_cfg")
    for p in sorted(d.rglob("*")):
        if p.is_dir():
            continue
        kind = p.name.split("_", 1)[0]
        try:
            fd = syscall.obj_get(p)
        except OSError:
            continue  # not a BPF object (or already gone): only unlinked below
        try:
            ident = syscall.obj_id(fd)
            if kind == "link":
                links.add(ident)
                _detach(fd)
            elif kind == "prog":
                progs.add(ident)
            elif kind == "map":
                maps.add(ident)
        finally:
            os.close(fd)
    _remove_pins(d)
    return inventory.wait_until_gone(progs, links, maps, timeout=timeout)


def _switch_off(cfg_pin: Path) -> None:
    """Make the policy's programs return at once, from the next event on (map updates are immediate)."""
    try:
        fd = syscall.obj_get(cfg_pin)
    except OSError:
        return  # a half-built load that never got its configuration map pinned
    try:
        syscall.map_update_elem(fd, b"\0\0\0\0", _CFG.pack(MODE_OFF, 0))
    except OSError:
        pass  # a foreign or damaged map: removing the pins still detaches, just later
    finally:
        os.close(fd)


#: One `struct pl_usdt_arg` of bpf/compile.py's _USDT: val, reg_off, idx_off, kind, size, sign, shift.
_USDT_ARG = struct.Struct("<qHhBBBB")


def _usdt_spec(probe: usdt.Probe) -> bytes:
    """The `struct pl_usdt_spec` of one probe site: how each of its arguments is read."""
    out = b"".join(_USDT_ARG.pack(a.value if a.value < 1 << 63 else a.value - (1 << 64), a.reg_off, a.index_off,
                                  a.kind, a.size, int(a.signed), a.shift) for a in probe.args[:USDT_ARGS])
    return out.ljust(USDT_ARGS * _USDT_ARG.size, b"\0")


def _detach(link_fd: int) -> None:
    """Detach a link now, where the kernel can (cgroup links); perf-event links say EOPNOTSUPP and
    go with their last reference (their programs are switched off by then)."""
    try:
        syscall.link_detach(link_fd)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOLINK):
            raise


def _remove_pins(d: Path) -> None:
    """Unpin everything in `d` and remove it."""
    for p in d.iterdir():
        if p.is_dir():
            _remove_pins(p)
        else:
            p.unlink()
    d.rmdir()


def _stale(name: str) -> bool:
    """A `_loading_<pid>_<dir>` directory whose loader is gone."""
    pid = name.split("_")[2] if name.count("_") >= 3 else ""
    if not pid.isdigit():
        return True
    return not Path(f"/proc/{pid}").exists() or int(pid) == os.getpid()


def _seed_lineage(fd: int, proc: Path = Path("/proc")) -> None:
    """Fill the lineage map (matchPIDs followForks) from /proc: each process's parent and its pid in its own
    pid namespace (0 in the initial one), for processes that forked before the policy was loaded, as
    Tetragon fills its execve_map at start. Entries the kernel already wrote win (BPF_NOEXIST)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            nspids = next((line.split()[1:] for line in (entry / "status").read_text().splitlines()
                           if line.startswith("NSpid:")), [])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        nspid = int(nspids[-1]) if len(nspids) > 1 else 0
        try:
            syscall.map_update_elem(fd, struct.pack("<I", int(entry.name)), struct.pack("<II", ppid, nspid),
                                    _BPF_NOEXIST)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


def _seed(fd: int, plan: Plan) -> None:
    """Fill the pid → binary map from /proc, for processes that exec'd before the policy was loaded.

    Entries the kernel already wrote (a process that exec'd meanwhile) win (BPF_NOEXIST)."""
    procs: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe").removesuffix(" (deleted)")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(entry.name)] = (exe, ppid)

    def matches(ff_table: str, values: Iterable[str], binary: str) -> bool:
        if ff_table == "eq":
            return binary in values
        if ff_table == "pre":
            return any(binary.startswith(v) for v in values)
        return any(binary.endswith(v) for v in values)

    bits_cache: dict[int, int] = {}

    def bits(pid: int, depth: int = 0) -> int:
        if pid in bits_cache:
            return bits_cache[pid]
        if pid not in procs or depth > 64:
            return 0
        exe, ppid = procs[pid]
        b = bits(ppid, depth + 1) if ppid != pid else 0
        for ff in plan.follow:
            if matches(ff.table, ff.values, exe):
                b |= 1 << ff.bit
        bits_cache[pid] = b
        return b

    for pid, (exe, ppid) in procs.items():
        parent = procs.get(ppid, ("", 0))[0]
        bexe, bpar = exe.encode()[:255], parent.encode()[:255]
        value = _PROC.pack(bits(pid), len(bexe), len(bpar), bexe, bpar)
        try:
            syscall.map_update_elem(fd, struct.pack("<I", pid), value, _BPF_NOEXIST)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise

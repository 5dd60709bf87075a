"""Build the CO-RE objects of a commit's policies, for the bundle (DESIGN.md §6).

A node plans each policy with its own kernel's features and tracepoint layouts and
loads the bundle's object when the C source it would generate has the same digest
(`bpf.objects`). So the reconciler plans every rendered policy for the **kernel
profiles** it is configured with (by default one: this host's kernel when it can be
probed — root and tracefs — else the built-in profile, `Features()` with the
built-in tracepoint layouts, which is what DESIGN.md §6 measured) and compiles each
distinct source once.

Only the variant a node will load is built: an agent loads a policy for workload
cgroups (scoped) exactly when it has a podSelector, a containerSelector or is
namespaced (`loads_scoped`; agent/enforcer.py uses the same function), and never
the other way round, so building both variants would double the compile time for
objects no node asks for.

Compiling costs 0.2-1 s a source, so it is cached twice: by source digest in the
reconciler's state directory (`<state>/objects/<source digest>.o`; an unchanged
policy is never compiled again, whatever the commit), and by clang's inputs in
bpf.core.build's machine cache (shared by every state directory on the host). The
sources of one commit that are not cached compile in a pool of worker threads
(clang runs as a subprocess, so threads use every core).

A policy whose C does not compile is an error finding located at the policy (the
commit is rejected: no node could load it either). A policy a profile cannot run
(`Unsupported`) simply has no object for that profile. A reconciler host without
clang, bpftool or BTF publishes bundles without objects and says why in its status;
nodes then build the objects themselves or refuse the policies.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bpf.compile import Features, compile_policy
from bpf.core.errors import BtfUnavailable, CompileFailed, CoreError, ToolMissing, VmlinuxFailed
from bpf.errors import BpfError
from bpf.objects import source_digest
from bpf.policy import TracingPolicy, parse
from bpf.tpformat import Formats, builtin_formats
from reconciler.findings import Finding, error
from reconciler.repository.model import PolicyRepository
from reconciler.repository.render import RenderedPolicy
from reconciler.state import statedir
from wire.bundle import MAX_OBJECT_BYTES, BundleObject, sha256_hex

__all__ = ["BUILTIN", "HOST", "Build", "KernelProfile", "ObjectBuilder", "builtin_profile", "default_profiles",
           "host_profile", "loads_scoped"]

log = logging.getLogger("palisade.objects")

HOST = "host"
BUILTIN = "builtin"
CACHE_DIR = statedir.OBJECT_CACHE
_TRACEFS = Path("/sys/kernel/tracing")
_MAX_LINES = 12


def loads_scoped(policy: TracingPolicy) -> bool:
    """Whether an agent loads `policy` for workload cgroups (its only way to load it) or node-wide."""
    return (policy.pod_selector is not None or policy.container_selector is not None
            or policy.kind == "TracingPolicyNamespaced")


@dataclass(frozen=True)
class KernelProfile:
    """The kernel a policy is planned for: its features and its tracepoint layouts."""

    name: str
    features: Features
    formats: Formats = field(compare=False, repr=False)


def builtin_profile() -> KernelProfile:
    return KernelProfile(BUILTIN, Features(), builtin_formats)


@lru_cache(maxsize=1)
def host_profile() -> KernelProfile | None:
    """This host's tracepoint layouts (read from tracefs) with the default features, or None without tracefs.

    Nothing is loaded into the kernel: the reconciler never loads programs (DESIGN.md). Where a
    node's probed features differ from the defaults, its plan differs, and it builds or refuses
    (bpf.objects); `palisade-agent probe` on a node says what it has."""
    if not (_TRACEFS / "events").is_dir():
        return None
    try:
        from bpf.tpformat import tracefs_formats

        return KernelProfile(HOST, Features(), tracefs_formats(_TRACEFS))
    except OSError as e:  # an unreadable tracefs is a host we cannot plan for, not a reconciler that stops
        log.warning("cannot read this host's tracepoint formats (%s); building for the built-in profile", e)
        return None


def default_profiles() -> tuple[KernelProfile, ...]:
    return (host_profile() or builtin_profile(),)


@dataclass(frozen=True)
class Build:
    """The objects of one commit: the bundle's entries, their bytes, and what went wrong."""

    objects: tuple[BundleObject, ...] = ()
    data: Mapping[str, bytes] = field(default_factory=dict, repr=False)  # object sha256 → bytes
    findings: tuple[Finding, ...] = ()
    #: Set when this host cannot build at all (no clang, bpftool or BTF): the bundle goes without objects.
    unavailable: str | None = None
    compiled: int = 0  # sources compiled now (the rest came from the cache)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Want:
    policy: RenderedPolicy
    profile: str
    scoped: bool
    source: str
    digest: str


class ObjectBuilder:
    """Plans and compiles the objects of rendered policies for `profiles`, cached in `state_dir`."""

    def __init__(self, state_dir: Path | statedir.StateView, profiles: Sequence[KernelProfile] | None = None, *,
                 workers: int | None = None, core_cache: Path | None = None) -> None:
        self.cache = statedir.StateView.of(state_dir).object_cache
        self._profiles = tuple(profiles) if profiles is not None else None
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.core_cache = core_cache  # None: bpf.core.build's machine cache
        self.unavailable: str | None = None  # the last reason this host could not build

    @property
    def profiles(self) -> tuple[KernelProfile, ...]:
        if self._profiles is None:
            self._profiles = default_profiles()  # probed on first use, not when the reconciler opens
        return self._profiles

    def status(self) -> dict[str, Any]:
        return {"profiles": [p.name for p in self.profiles], "unavailable": self.unavailable}

    def build(self, rendered: Sequence[RenderedPolicy], repo: PolicyRepository | None = None) -> Build:
        t0 = time.perf_counter()
        wants: dict[str, _Want] = {}
        for p in rendered:
            try:
                tp = parse(dict(p.document))
            except BpfError:
                continue  # validation reported it; nothing a node could load either
            scoped = loads_scoped(tp)
            for prof in self.profiles:
                try:
                    source = self._source(tp, prof, scoped)
                except BpfError:  # Unsupported: this kernel cannot run it; nodes say so (validate warned)
                    continue
                digest = source_digest(source)
                # one object per source: the same policy at several scopes shares it
                wants.setdefault(digest, _Want(p, prof.name, scoped, source, digest))
        data: dict[str, bytes] = {}
        findings: list[Finding] = []
        entries: list[BundleObject] = []
        todo = []
        for w in wants.values():
            cached = self._cached(w.digest)
            if cached is None:
                todo.append(w)
            else:
                data[w.digest] = cached
        unavailable = None
        if todo:
            with concurrent.futures.ThreadPoolExecutor(min(self.workers, len(todo))) as pool:
                results = list(pool.map(self._compile, todo))
            for w, (obj, problem) in zip(todo, results, strict=True):
                if obj is not None:
                    data[w.digest] = obj
                elif isinstance(problem, ToolMissing | BtfUnavailable | VmlinuxFailed):
                    unavailable = str(problem)
                elif problem is not None:
                    findings.append(_finding(w, problem, repo))
        self.unavailable = unavailable
        if unavailable is not None:
            log.warning("no objects in this bundle: this host cannot build them (%s)", unavailable)
            return Build(findings=tuple(findings), unavailable=unavailable, compiled=len(todo),
                         seconds=time.perf_counter() - t0)
        blobs: dict[str, bytes] = {}
        for w in wants.values():
            obj = data.get(w.digest)
            if obj is None:
                continue
            sha = sha256_hex(obj)
            blobs[sha] = obj
            entries.append(BundleObject(w.digest, sha, len(obj), w.policy.sha256, w.profile, w.scoped))
        entries.sort(key=lambda o: o.source)
        return Build(tuple(entries), blobs, tuple(findings), None, len(todo), time.perf_counter() - t0)

    # -- internals ----------------------------------------------------------

    def _source(self, policy: TracingPolicy, profile: KernelProfile, scoped: bool) -> str:
        """The C a node with this kernel generates for the policy (what its object is named after)."""
        return compile_policy(policy, profile.features, profile.formats, scoped=scoped).source

    def _path(self, digest: str) -> Path:
        return self.cache / f"{digest}.o"

    def _cached(self, digest: str) -> bytes | None:
        try:
            data = self._path(digest).read_bytes()
        except OSError:
            return None
        return data if 0 < len(data) <= MAX_OBJECT_BYTES else None

    def _compile(self, w: _Want) -> tuple[bytes | None, Exception | None]:
        from bpf.core.build import compile_object

        try:
            built = compile_object(w.source.encode(), self.core_cache, name=f"{w.policy.name}.bpf.c")
            data = built.read()
        except (CoreError, OSError) as e:
            return None, e
        if not 0 < len(data) <= MAX_OBJECT_BYTES:
            return None, CompileFailed(w.policy.name, f"the object is {len(data)} bytes, more than "
                                                      f"{MAX_OBJECT_BYTES}")
        self._remember(w.digest, data)
        return data, None

    def _remember(self, digest: str, data: bytes) -> None:
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=f".{digest[:16]}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path(digest))
        except OSError as e:  # a cache that cannot be written costs a compile next time, nothing more
            log.warning("cannot cache object %s: %s", digest[:12], e)


def _finding(w: _Want, problem: Exception, repo: PolicyRepository | None) -> Finding:
    file, line = _where(w.policy, repo)
    text = str(problem.message if isinstance(problem, CompileFailed) else problem).strip()
    lines = text.splitlines()
    if len(lines) > _MAX_LINES:  # clang can say a lot; the first errors locate the problem
        text = "\n".join([*lines[:_MAX_LINES], f"... ({len(lines) - _MAX_LINES} more lines)"])
    return error(file, line, 0, "object-compile",
                 f"policy {w.policy.name}: its generated C does not compile for kernel profile {w.profile}: "
                 f"{text}")


def _where(p: RenderedPolicy, repo: PolicyRepository | None) -> tuple[str, int]:
    """The file that holds the policy (a pack's document or the rule), 0 = the whole file."""
    if repo is None:
        return "", 0
    if p.origin_kind == "pack":
        pack = repo.pack(p.origin_name)
        if pack is not None:
            src = next((s for s in pack.policies if s.name == p.name), None)
            return (src.path if src else pack.path), 0
    else:
        rule = next((r for r in repo.rules if r.name == p.origin_name), None)
        if rule is not None:
            return rule.path, rule.where.line if rule.where.path == rule.path else 0
    return "", 0

"""Where a policy's CO-RE object comes from: the signed bundle, this node's cache, or clang here.

A policy's object is named by the digest of its generated C source (`source_digest`), which
captures everything the object depends on: the policy, the kernel features and tracepoint
layouts it was planned for, whether it is scoped. The reconciler builds objects for the
kernels it plans for and signs them into the bundle; a node plans the policy for its own
kernel and loads the bundle's bytes when the digests agree, so it loads exactly what was
reviewed and signed and needs no compiler. Where they differ (another kernel layout), the
node builds the object itself when clang is installed, cached by digest, or refuses the
policy saying why.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .core.build import compile_object
from .core.errors import ToolMissing
from .errors import LoadError


def source_digest(source: str) -> str:
    """The name of a policy's object: sha256 of its C source."""
    return hashlib.sha256(source.encode()).hexdigest()


@dataclass(frozen=True)
class PolicyObject:
    digest: str
    data: bytes = b""
    #: "bundle" (signed bytes from the reconciler), "cache" (built here before) or "built" (built now).
    origin: str = "bundle"


class ObjectMissing(LoadError):
    """No object for this source in the bundle, and this node cannot build one."""

    def __init__(self, name: str, digest: str, why: str) -> None:
        self.name = name
        self.digest = digest
        super().__init__(
            f"no CO-RE object for {name} (source {digest[:12]}) in the bundle, and this node cannot build one "
            f"({why}); publish from a reconciler that builds objects for this kernel, or install clang here")


class ObjectSource:
    """Objects by source digest: prebuilt ones first (a bundle's), then the node's cache or clang."""

    def __init__(self, prebuilt: Mapping[str, bytes] | None = None, *, cache_dir: Path | None = None,
                 build: bool = True) -> None:
        self._prebuilt: dict[str, bytes] = dict(prebuilt or {})
        self._cache_dir = cache_dir
        self._build = build
        self._lock = threading.Lock()

    def offer(self, objects: Mapping[str, bytes]) -> None:
        """Objects a newly verified bundle carries (by source digest)."""
        with self._lock:
            self._prebuilt.update(objects)

    def get(self, source: str, name: str) -> PolicyObject:
        digest = source_digest(source)
        with self._lock:
            data = self._prebuilt.get(digest)
        if data is not None:
            return PolicyObject(digest, data, "bundle")
        if not self._build:
            raise ObjectMissing(name, digest, "building on the node is off")
        try:
            built = compile_object(source.encode(), self._cache_dir, name=f"{name}.bpf.c")
        except ToolMissing as e:
            raise ObjectMissing(name, digest, str(e)) from None
        return PolicyObject(digest, built.read(), "cache" if built.cached else "built")

"""The CO-RE objects of a verified bundle, fetched, checked against its signed digests, and kept.

A bundle lists, per policy, objects the reconciler built (reconciler/publish/objects.py) by
the digest of their C source, with the sha256 and size of their bytes. The bytes are
separate blobs (`GET /v1/objects/<sha256>`), so the agent fetches only those of the
policies it selected, and only once: they are kept by sha256 in `<state>/objects/`
(and in memory), content-addressed, so an unchanged policy costs nothing in the next
bundle, and a restart without the server still loads the signed bytes (`offer` reads
them back and checks them again).

An object whose bytes do not match the signed digest is refused like a tampered
bundle (`DigestMismatch` / `TooLarge`): nothing of the bundle is applied and the last
good one stays enforced. Objects are offered to the enforcer (engine) by source
digest before an apply; the engine loads a policy's object when its own plan for this
kernel has the same source, and otherwise builds one here or refuses (bpf.objects).
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wire.bundle import Bundle, BundleObject, WireError, verify_object

from .select import Desired

if TYPE_CHECKING:
    from .client import Client

__all__ = ["OBJECTS_DIR", "ObjectStore", "Offer", "wanted"]

log = logging.getLogger("palisade.agent.objects")

OBJECTS_DIR = "objects"
#: Objects kept in memory (the disk keeps every one; memory only what the current bundles use).
_MEMORY_ITEMS = 512


@dataclass(frozen=True)
class Offer:
    """What a bundle gives the engine: verified object bytes by source digest, and, per policy (sha256 of
    its YAML), the kernel profiles its objects were built for (for the reason of a refusal)."""

    data: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    profiles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def wanted(bundle: Bundle, desired: Sequence[Desired]) -> tuple[BundleObject, ...]:
    """The objects of the policies this sensor selected (each policy's for every profile)."""
    digests = {d.sha256 for d in desired}
    return tuple(o for o in bundle.objects if o.policy in digests)


class ObjectStore:
    """Verified objects by sha256: on disk under `root` (None: memory only), and in memory."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._memory: dict[str, bytes] = {}

    async def fetch(self, client: Client, bundle: Bundle, desired: Sequence[Desired]) -> int:
        """Fetch every wanted object not kept yet; raises a WireError for bytes the bundle does not sign
        (and a FetchError when the server cannot give them). Returns how many were fetched."""
        fetched = 0
        for entry in wanted(bundle, desired):
            if self._get(entry) is not None:
                continue
            data = verify_object(await client.object(entry.sha256, entry.size), entry)
            self._put(entry.sha256, data)
            fetched += 1
        return fetched

    def offer(self, bundle: Bundle, desired: Sequence[Desired]) -> Offer:
        """The verified objects at hand for this bundle's selected policies (missing ones are left out:
        the engine builds those or refuses them)."""
        data: dict[str, bytes] = {}
        profiles: dict[str, list[str]] = {}
        for entry in wanted(bundle, desired):
            profiles.setdefault(entry.policy, []).append(entry.profile)
            found = self._get(entry)
            if found is not None:
                data[entry.source] = found
        return Offer(data, {k: tuple(sorted(set(v))) for k, v in profiles.items()})

    # -- internals ----------------------------------------------------------

    def _get(self, entry: BundleObject) -> bytes | None:
        data = self._memory.get(entry.sha256)
        if data is None and self.root is not None:
            try:
                data = (self.root / entry.sha256).read_bytes()
            except OSError:
                return None
        if data is None:
            return None
        try:
            verify_object(data, entry)  # a file damaged on disk is fetched again, never loaded
        except WireError:
            self._memory.pop(entry.sha256, None)
            return None
        self._remember(entry.sha256, data)
        return data

    def _put(self, sha256: str, data: bytes) -> None:
        self._remember(sha256, data)
        if self.root is None:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{sha256[:16]}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.root / sha256)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:  # a full disk keeps it in memory: it is loaded all the same
            log.warning("cannot keep object %s on disk: %s", sha256[:12], e.strerror or e)

    def _remember(self, sha256: str, data: bytes) -> None:
        self._memory.pop(sha256, None)
        self._memory[sha256] = data
        while len(self._memory) > _MEMORY_ITEMS:
            self._memory.pop(next(iter(self._memory)))

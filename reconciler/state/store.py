"""The bundle store: a directory any static web server, object store or CDN can serve.

    <store>/index.json          the signed index (DESIGN.md §3)
    <store>/bundles/v<N>.json   immutable signed bundles
    <store>/objects/<sha256>    CO-RE objects the bundles list, named by the sha256 of their bytes

Every file is written to a temporary file in the same directory, fsync'ed,
renamed over its final name, and the directory is fsync'ed. Objects are durable
before the bundle that lists them, and a bundle is always durable *before* the
index that names it is written, so a crash at any point
leaves the old index or the new one — never a torn index, and never an index
naming a bundle that is not there. Temporary files start with a dot (static
servers do not serve them); a writer removes those of dead writers when it opens the store.

A store has one writer: the reconciler that holds the state lock (ledger.py). It publishes a
`SignedBundle`: the bytes it writes with the typed bundle they encode, so nothing on the way
parses them back (the rollout controller reads the plan, the store the objects and the version).
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from reconciler.errors import StateError, VerificationError
from reconciler.state import statedir
from wire.bundle import (
    DEFAULT_STAGE,
    INDEX_KEEP,
    MAX_OBJECT_BYTES,
    Bundle,
    BundleObject,
    Index,
    IndexEntry,
    UnknownKey,
    keyid,
    parse_bundle,
    parse_index,
    sha256_hex,
    sign_bundle,
    sign_index,
    verify_bundle,
)

INDEX_FILE, BUNDLES_DIR, OBJECTS_DIR = statedir.INDEX_FILE, statedir.BUNDLES_DIR, statedir.OBJECTS_DIR
DEFAULT_EXPIRY = _dt.timedelta(hours=24)
#: Test hook: seconds to sleep between the steps of every file write, so a crash test can
#: kill the writer inside each window (temp file half written, written, renamed, ...).
_SLOW_ENV = "PALISADE_TEST_SLOW_WRITES"
_BUNDLE_NAME = re.compile(r"^v([1-9][0-9]*)\.json$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class SignedBundle:
    """A bundle's signed file bytes and the typed bundle they encode, carried together through a publish.

    Make one with `sign` (the reconciler, from the bundle it built: no parse at all), `verify` (bytes
    from elsewhere: parsed and checked once) or `Store.read_bundle` (a file of our own store). `bundle`
    is the value that was signed; its signature is in `data`, made by the key with id `signer`.
    """

    bundle: Bundle
    data: bytes
    signer: str

    @classmethod
    def sign(cls, bundle: Bundle, key: SigningKey) -> SignedBundle:
        return cls(bundle, sign_bundle(bundle, key), keyid(key))

    @classmethod
    def verify(cls, data: bytes, key: VerifyKey) -> SignedBundle:
        """Bytes whose signature by `key` verifies (raises VerificationError)."""
        return cls(verify_bundle(data, [key], expected_sha256=None, expected_size=None), data, keyid(key))

    @property
    def version(self) -> int:
        return self.bundle.version


class Store:
    """Reads and atomically writes one bundle store directory."""

    def __init__(self, root: Path, key: SigningKey | None = None, *,
                 expiry: _dt.timedelta = DEFAULT_EXPIRY, keep: int = INDEX_KEEP) -> None:
        """`key` signs the index (needed to publish, pin and re-sign, not to read).
        `expiry` is the lifetime of an index when the caller does not give one."""
        self.root = Path(root)
        self.key = key
        self.expiry = expiry
        self.keep = keep
        self._slow = float(os.environ.get(_SLOW_ENV, "0") or 0)
        if key is not None:  # a writer; readers never create or change anything
            try:
                (self.root / BUNDLES_DIR).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StateError(f"cannot create the bundle store {self.root}: {e.strerror}") from None
            self._remove_temporaries()

    # -- reading ------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    def bundle_path(self, version: int) -> Path:
        return self.root / BUNDLES_DIR / f"v{int(version)}.json"

    def index_bytes(self) -> bytes | None:
        """The index file as served, or None before the first publish."""
        try:
            return self.index_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read {self.index_path}: {e.strerror}") from None

    def index(self) -> Index | None:
        """The current index (parsed, not signature-checked: it is our own file)."""
        data = self.index_bytes()
        return None if data is None else parse_index(data)

    def bundle_bytes(self, version: int) -> bytes | None:
        try:
            return self.bundle_path(version).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read {self.bundle_path(version)}: {e.strerror}") from None

    def read_bundle(self, version: int) -> SignedBundle | None:
        """A bundle file of this store with its parsed form; None when absent or unreadable.

        Parsed, not signature-checked (our own file, like `index`); `signer` is the key it names."""
        data = self.bundle_bytes(version)
        if data is None:
            return None
        try:
            parsed = parse_bundle(data)
        except VerificationError:
            return None
        return SignedBundle(parsed, data, parsed.signatures[0].keyid if parsed.signatures else "")

    def object_path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
        return self.root / OBJECTS_DIR / sha256

    def object_bytes(self, sha256: str) -> bytes | None:
        """An object's bytes if the store holds them intact (a damaged file is no object)."""
        try:
            with self.object_path(sha256).open("rb") as f:
                data = f.read(MAX_OBJECT_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read {self.object_path(sha256)}: {e.strerror}") from None
        return data if sha256_hex(data) == sha256 else None

    def versions_on_disk(self) -> list[int]:
        """Every bundle version with a file, ascending (the index may list fewer)."""
        out = []
        try:
            names = os.listdir(self.root / BUNDLES_DIR)
        except FileNotFoundError:
            return []
        for name in names:
            m = _BUNDLE_NAME.match(name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_version(self) -> int:
        """The highest version this store has ever held (index or file), 0 if none: never reuse it."""
        index = self.index()
        on_disk = self.versions_on_disk()
        return max([0, *on_disk, *([index.version] if index else [])])

    # -- writing ------------------------------------------------------------

    def write_object(self, data: bytes) -> str:
        """Store an object under the sha256 of its bytes (before a bundle lists it); the digest."""
        self._need_key()
        if not 0 < len(data) <= MAX_OBJECT_BYTES:
            raise StateError(f"an object of {len(data)} bytes is not between 1 and {MAX_OBJECT_BYTES}")
        digest = sha256_hex(data)
        if self.object_bytes(digest) is None:  # absent, or damaged: written (again)
            try:
                (self.root / OBJECTS_DIR).mkdir(exist_ok=True)  # made by the first object only
            except OSError as e:
                raise StateError(f"cannot create {self.root / OBJECTS_DIR}: {e.strerror}") from None
            self._atomic_write(self.object_path(digest), data)
        return digest

    def publish(self, bundle: SignedBundle | bytes, *, now: _dt.datetime | None = None,
                expiry: _dt.timedelta | None = None, stages: Mapping[str, int] | None = None) -> Index:
        """Write a signed bundle, then the index that makes it the newest version.

        The bundle must be signed by the store's key and newer than the current
        index; bare bytes are verified here (a `SignedBundle` already was, or was
        made from the typed bundle). Publishing the same bytes again is a no-op
        returning the current index (so a restart may repeat a publish a crash
        interrupted). `stages` defaults to every stage of the bundle's staging
        plan plus "default" pinned to the new version. Returns the new index.
        """
        key = self._need_key()
        signed = bundle if isinstance(bundle, SignedBundle) else SignedBundle.verify(bundle, key.verify_key)
        if signed.signer != keyid(key):
            raise UnknownKey(f"bundle v{signed.version} is not signed by the store's key "
                             f"(signed by {signed.signer[:16] or 'nobody'})")
        parsed, data = signed.bundle, signed.data
        version = parsed.version
        entry = IndexEntry(version, sha256_hex(data), len(data))
        current = self.index()
        if current is not None and version <= current.version:
            if current.entry(version) == entry:
                return current
            raise StateError(
                f"cannot publish bundle v{version}: the index already names v{current.version} "
                f"(versions only grow)"
            )
        self._check_objects(parsed.objects)
        self._write_bundle(version, data)
        if stages is None:
            names = [s.name for s in parsed.staging.stages] if parsed.staging else []
            stages = {**dict.fromkeys(names, version), DEFAULT_STAGE: version}
        previous = current.bundles if current else ()
        return self._write_index(current, [*previous, entry], stages, now, expiry)

    def pin(self, stages: Mapping[str, int], *, now: _dt.datetime | None = None) -> Index:
        """Re-pin stages (the rollout controller's promotions and halts) in a new index."""
        current = self._need_index()
        listed = {b.version for b in current.bundles}
        for stage, v in stages.items():
            if v not in listed:
                raise StateError(f"cannot pin stage {stage} to v{v}: the index does not list it")
        return self._write_index(current, list(current.bundles), stages, now, None)

    def resign_if_due(self, *, now: _dt.datetime | None = None,
                      margin: _dt.timedelta | None = None) -> Index | None:
        """Re-sign the index when less than `margin` of its life is left (default: half of it).

        Nothing else changes but `serial`, `issued` and `expires`. Returns the new
        index, or None when no index exists or re-signing is not due yet.
        """
        current = self.index()
        if current is None:
            return None
        now = now or _dt.datetime.now(_dt.UTC)
        lifetime = current.expires - current.issued
        if margin is None:
            margin = lifetime / 2
        if current.expires - now > margin:
            return None
        return self._write_index(current, list(current.bundles), current.stages, now, lifetime)

    # -- internals ----------------------------------------------------------

    def _need_key(self) -> SigningKey:
        if self.key is None:
            raise StateError("this store was opened without a signing key; it cannot write")
        return self.key

    def _need_index(self) -> Index:
        current = self.index()
        if current is None:
            raise StateError(f"{self.index_path} does not exist yet (nothing was published)")
        return current

    def _check_objects(self, objects: tuple[BundleObject, ...]) -> None:
        # never publish a bundle whose objects an agent could not fetch
        for o in objects:
            data = self.object_bytes(o.sha256)
            if data is None or len(data) != o.size:
                raise StateError(f"cannot publish: object {o.sha256[:12]} (policy {o.policy[:12]}, profile "
                                 f"{o.profile}) is not in {self.root / OBJECTS_DIR}")

    def _write_bundle(self, version: int, data: bytes) -> None:
        path = self.bundle_path(version)
        existing = self.bundle_bytes(version)
        if existing is not None:
            if existing == data:
                return  # an earlier attempt wrote it before a crash; bundles are immutable
            raise StateError(f"{path} exists with different content; bundles are never overwritten")
        self._atomic_write(path, data)

    def _write_index(self, current: Index | None, entries: list[IndexEntry], stages: Mapping[str, int],
                     now: _dt.datetime | None, expiry: _dt.timedelta | None) -> Index:
        key = self._need_key()
        now = (now or _dt.datetime.now(_dt.UTC)).replace(microsecond=0)
        if expiry is None:
            expiry = (current.expires - current.issued) if current else self.expiry
        pinned = set(stages.values())
        # The newest `keep` bundles stay listed, and so does every version a stage still runs.
        newest = {e.version for e in entries[-self.keep:]}
        kept = tuple(e for e in entries if e.version in newest or e.version in pinned)
        index = Index(
            serial=(current.serial + 1) if current else 1,
            version=kept[-1].version,
            issued=now,
            expires=now + expiry,
            bundles=kept,
            stages=stages,
        )
        data = sign_index(index, key)
        self._atomic_write(self.index_path, data)
        return parse_index(data)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        tmp = path.parent / f".{path.name}{_TMP_MARK}{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if self._slow:
                    # Two halves with a pause, so a kill can land on a half-written temp file.
                    half = len(data) // 2
                    _write_all(fd, data[:half])
                    self._pause()
                    _write_all(fd, data[half:])
                else:
                    _write_all(fd, data)
                self._pause()
                os.fsync(fd)
            finally:
                os.close(fd)
            self._pause()
            os.replace(tmp, path)
            self._pause()
            _fsync_dir(path.parent)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StateError(f"cannot write {path}: {e.strerror}") from None

    def _pause(self) -> None:
        if self._slow:
            time.sleep(self._slow)

    def _remove_temporaries(self) -> None:
        """Remove temporary files of writers that are gone (a crash mid-write); a live one's stay."""
        for d in (self.root, self.root / BUNDLES_DIR, self.root / OBJECTS_DIR):
            if not d.is_dir():
                continue
            for name in os.listdir(d):
                if name.startswith(".") and _TMP_MARK in name and not _alive(name.rpartition(_TMP_MARK)[2]):
                    (d / name).unlink(missing_ok=True)


def _alive(pid_text: str) -> bool:
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # our own leftovers: we are not writing them now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

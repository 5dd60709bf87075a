"""`palisade bundle verify FILE --pubkey FILE [--index FILE]`: offline verification of a bundle.

Exit 0 with a one-line summary when the bundle verifies; 1 with the reason when
it does not; 2 when the command line or a file is unusable.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.errors import UsageError

if TYPE_CHECKING:
    from wire.bundle import Index, IndexEntry
from . import add_output


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bundle", help="inspect and verify bundles", description="Inspect and verify bundles.")
    bsub = p.add_subparsers(dest="bundle_command", required=True, metavar="SUBCOMMAND")
    v = bsub.add_parser(
        "verify",
        help="verify a bundle file's signature (and its index entry)",
        description="Verify the signature of a downloaded bundle with a pinned public key. With --index, "
        "also verify the index (signature, expiry) and that the bundle's size and sha256 match its entry. "
        "Exit 0: verified; 1: verification failed (the reason is printed); 2: usage or I/O problem.",
    )
    v.add_argument("file", type=Path, metavar="FILE", help="the bundle file (v<N>.json)")
    v.add_argument("--pubkey", required=True, type=Path, action="append", metavar="FILE",
                   help="a trusted public key (palisade.pub); repeat for several")
    v.add_argument("--index", type=Path, metavar="FILE", help="the index.json the bundle was listed in")
    v.add_argument("--allow-expired", action="store_true",
                   help="accept an expired index (auditing old downloads)")
    add_output(v)
    v.set_defaults(func=_verify)


def _read(path: Path, what: str) -> bytes:
    from wire.bundle import MAX_BUNDLE_BYTES

    try:
        with path.open("rb") as f:
            # Read one byte past the limit: enough for verification to report the size.
            return f.read(MAX_BUNDLE_BYTES + 1)
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None


def _verify(args: argparse.Namespace) -> int:
    from reconciler.errors import VerificationError

    try:
        return _verify_or_raise(args)
    except VerificationError as e:
        raise VerificationError(f"{args.file}: verification FAILED: {e}") from None


def _verify_or_raise(args: argparse.Namespace) -> int:
    from reconciler.keys import load_public_keys
    from wire.bundle import format_time, sha256_hex, verify_bundle, verify_index

    keys = load_public_keys(args.pubkey)
    data = _read(args.file, "bundle")
    expected_sha, expected_size, index_note = None, None, ""
    if args.index is not None:
        raw_index = _read(args.index, "index")
        now = _dt.datetime.now(_dt.UTC)
        if args.allow_expired:
            now = _dt.datetime.min.replace(tzinfo=_dt.UTC)
        index = verify_index(raw_index, keys, now=now)
        entry = _entry_for(index, data)
        expected_sha, expected_size = entry.sha256, entry.size
        index_note = f", listed in index serial {index.serial}"
    bundle = verify_bundle(data, keys, expected_sha256=expected_sha, expected_size=expected_size)
    if args.output == "json":
        print(json.dumps({
            "ok": True, "file": str(args.file), "version": bundle.version, "commit": bundle.commit,
            "created": format_time(bundle.created), "policies": len(bundle.policies),
            "sha256": sha256_hex(data), "keyids": [s.keyid for s in bundle.signatures],
        }))
    else:
        print(f"OK {args.file}: bundle v{bundle.version} commit {bundle.commit[:12]} "
              f"created {format_time(bundle.created)}, {len(bundle.policies)} policies, "
              f"signed by {bundle.signatures[0].keyid[:16]}{index_note}")
    return 0


def _entry_for(index: Index, data: bytes) -> IndexEntry:
    """The index entry to hold the file against: the one with its digest, else the one for the version
    the file claims (read without trusting it), so a tampered file gets a digest mismatch."""
    from reconciler.errors import VerificationError
    from wire.bundle import sha256_hex

    digest = sha256_hex(data)
    for e in index.bundles:
        if e.sha256 == digest:
            return e
    try:
        claimed = json.loads(data).get("version")
    except (ValueError, AttributeError, RecursionError):
        claimed = None
    entry = index.entry(claimed) if isinstance(claimed, int) else None
    if entry is None:
        what = f"bundle v{claimed}" if isinstance(claimed, int) else f"a bundle with digest {digest}"
        raise VerificationError(f"{what} is not listed in the index (serial {index.serial})")
    return entry

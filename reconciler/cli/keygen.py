"""`palisade keygen --out DIR [--force]`: a new Ed25519 key pair for signing bundles."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_output


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keygen",
        help="write a new bundle signing key pair",
        description="Write DIR/palisade.key (the Ed25519 signing key, mode 0600) and DIR/palisade.pub "
        "(the public key agents pin). Existing files are kept unless --force is given (exit 2).",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the two files")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    add_output(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from reconciler.keys import generate

    pair = generate(args.out, force=args.force)
    if args.output == "json":
        print(json.dumps({"signingKey": str(pair.signing_key_path), "publicKey": str(pair.public_key_path),
                          "keyid": pair.keyid}))
    else:
        print(f"wrote {pair.signing_key_path} (keep it secret) and {pair.public_key_path}")
        print(f"keyid {pair.keyid}")
    return 0

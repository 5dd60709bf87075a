"""`make demo`: validate the example repository and show what it enforces where."""
from __future__ import annotations

import sys
from pathlib import Path

from .cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "example-repo"


def run() -> int:
    print(f"$ palisade validate --repo {EXAMPLE.name}", flush=True)
    code = main(["validate", "--repo", str(EXAMPLE)])
    if code != 0:
        return code
    print("valid.\n", flush=True)
    print(f"$ palisade units --repo {EXAMPLE.name}", flush=True)
    return main(["units", "--repo", str(EXAMPLE)])


if __name__ == "__main__":
    sys.exit(run())

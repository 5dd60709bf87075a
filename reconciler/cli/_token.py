"""The token that `--server` requests carry to a `palisade serve --token-file` server (serve/auth.py):
$PALISADE_TOKEN, or the file $PALISADE_TOKEN_FILE names — never a flag, so it stays out of shell
history and `ps`."""
from __future__ import annotations

import os
from pathlib import Path

TOKEN_ENV = "PALISADE_TOKEN"
TOKEN_FILE_ENV = "PALISADE_TOKEN_FILE"
#: Said after a 401, so the operator knows what the server wants.
HINT = (f"the server wants its token: set ${TOKEN_ENV} or ${TOKEN_FILE_ENV} "
        "(the file `palisade serve --token-file` reads)")


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer …` when the environment gives a token; none otherwise. UsageError when
    $PALISADE_TOKEN_FILE names a file that cannot be read or holds no valid token."""
    from reconciler.serve.auth import load_token

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token and os.environ.get(TOKEN_FILE_ENV):
        token = load_token(Path(os.environ[TOKEN_FILE_ENV]))
    return {"Authorization": f"Bearer {token}"} if token else {}

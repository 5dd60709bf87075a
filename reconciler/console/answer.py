"""A page's answer when the state may not have what it shows yet (no commit accepted, no rollout run)."""
from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response

from reconciler.console.html import Markup, el
from reconciler.console.layout import html_response, page


def answer(title: str, name: str, build: Callable[[], Markup], *unavailable: type[Exception]) -> Response:
    """The page whose body `build()` makes; when it raises one of `unavailable`, the page says why instead."""
    try:
        body = build()
    except unavailable as e:
        body = el("p", {"class": "empty"}, str(e))
    return html_response(page(title, name, body))

"""The console's page frame: one HTML document per page, the same navigation on every one.

`page(title, active, body)` is the whole document. The page's own content, `body`, sits alone in
`<main id="content">`: the live updates (console.js) fetch the same URL with `?fragment=1` and swap that
element, and `fragment_of(document)` (which the console app applies to every page's answer when
`?fragment=1` is asked) cuts exactly that element out. A page therefore never handles `?fragment=1`
itself: it always returns `page(...)`.

The document loads /ui/static/console.css and /ui/static/console.js and nothing else, with no inline script
or style, so the strict Content-Security-Policy the console sends holds (app.py).
"""
from __future__ import annotations

from starlette.responses import Response

from reconciler.console.html import Markup, el

__all__ = ["HTML", "MAIN_CLOSE", "MAIN_OPEN", "NAV", "fragment_of", "html_response", "page"]

#: (name, path) of the navigation, in order; `active` names one of them.
NAV = (("Fleet", "/ui/"), ("Units", "/ui/units"), ("Rollouts", "/ui/rollouts"), ("Ledger", "/ui/ledger"),
       ("Events", "/ui/events"))
MAIN_OPEN = '<main id="content" data-live="1">'
MAIN_CLOSE = "</main>"
HTML = "text/html; charset=utf-8"
# The one script (el() refuses <script>: no page may add one).
_SCRIPT = Markup('<script src="/ui/static/console.js" defer></script>')


def page(title: str, active: str, body: Markup) -> bytes:
    """The full HTML document of one console page (UTF-8). `active` is the name of the nav entry to mark."""
    nav = el("nav", {"class": "nav"},
             el("span", {"class": "brand"}, "Palisade"),
             (el("a", {"href": path, "class": "active" if name == active else None,
                       "aria-current": "page" if name == active else None}, name) for name, path in NAV),
             el("span", {"id": "live", "class": "live", "title": "live updates"}, "offline"))
    head = el("head", None,
              Markup('<meta charset="utf-8">'),
              el("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}),
              el("title", None, f"{title} · Palisade"),
              el("link", {"rel": "icon", "href": "data:,"}),
              el("link", {"rel": "stylesheet", "href": "/ui/static/console.css"}),
              _SCRIPT)
    doc = (f"<!doctype html>\n<html lang=\"en\">{head}<body>{nav}{MAIN_OPEN}"
           f"{el('h1', None, title)}{body}{MAIN_CLOSE}</body></html>\n")
    return doc.encode()


def fragment_of(document: bytes) -> bytes:
    """The `<main id="content">` element of a document `page()` made (the document itself if it has none)."""
    start = document.find(MAIN_OPEN.encode())
    end = document.rfind(MAIN_CLOSE.encode())
    if start < 0 or end < start:
        return document
    return document[start:end + len(MAIN_CLOSE)]


def html_response(document: bytes, status: int = 200) -> Response:
    """A page's answer: the document `page()` made, never cached (it shows live state)."""
    return Response(document, status_code=status, media_type=HTML, headers={"Cache-Control": "no-store"})

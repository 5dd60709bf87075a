"""HTML built from values, never from format strings: everything the console shows may come from an attacker
(binary names, arguments, pod labels, commit messages), so every page is made of `el()` calls.

    el("a", {"href": "/ui/units", "class": "nav"}, "Units")     → <a href="/ui/units" class="nav">Units</a>
    el("td", None, "<img src=x>")                               → <td>&lt;img src=x&gt;</td>
    table(["sensor", "health"], [["web-1", badge], ...], id="fleet")

A plain value (str, int, None is skipped) is escaped; a `Markup` (what `el`, `join`, `table` and `escape`
return) is kept as it is. Attribute values are escaped too, and the two ways a value could still run script
are refused outright: event-handler attributes (`on*`) and `javascript:`-like URLs (UnsafeMarkup). The
strict Content-Security-Policy (no inline script) is the second wall behind this one.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["Markup", "UnsafeMarkup", "el", "escape", "join", "table"]

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"})
# Elements without content (no closing tag).
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                   "wbr"})
_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]*$")
# Attributes holding a URL: their scheme must not run code.
_URL_ATTRS = frozenset({"href", "src", "action", "formaction", "xlink:href", "poster", "cite", "data", "srcset"})
# What browsers ignore before a URL's scheme (whitespace and control characters, anywhere in it).
_URL_NOISE = re.compile(r"[\x00-\x20\x7f]+")
_BAD_SCHEMES = ("javascript:", "vbscript:", "data:text/html")


class Markup(str):
    """A string that is already safe HTML (made by this module): kept as it is when put into other markup."""

    __slots__ = ()

    def __html__(self) -> Markup:
        return self


class UnsafeMarkup(ValueError):
    """An element or attribute that could run script (an `on*` handler, a `javascript:` URL) or a bad name."""


def escape(value: object) -> Markup:
    """`value` as HTML text: `&<>"'` escaped; a Markup is returned unchanged; None is the empty string."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(str(value).translate(_ESCAPES))


_checked_names: dict[str, bool] = {}  # attribute name → whether it holds a URL (names already checked)


def _attr(name: str, value: object) -> str:
    url = _checked_names.get(name)
    if url is None:
        if not _NAME.match(name.replace(":", "-")):
            raise UnsafeMarkup(f"not an attribute name: {name[:40]!r}")
        if name.lower().startswith("on"):
            raise UnsafeMarkup(f"event-handler attribute {name!r} refused: the console runs no inline script")
        url = name.lower() in _URL_ATTRS
        if len(_checked_names) < 512:
            _checked_names[name] = url
    if value is True:
        return f" {name}"
    text = str(value)
    if url and _URL_NOISE.sub("", text).lower().startswith(_BAD_SCHEMES):
        raise UnsafeMarkup(f"{name}={text[:40]!r} refused: script URLs are not links")
    return f' {name}="{text.translate(_ESCAPES)}"'


def el(tag: str, attrs: Mapping[str, object] | None = None, *children: object) -> Markup:
    """The element `tag` with `attrs` (None or False: left out; True: a bare attribute) and `children`
    (plain values escaped, Markup kept, None skipped; an iterable of children other than a string is
    flattened, so a generator of rows can be passed as it is)."""
    if not _NAME.match(tag):
        raise UnsafeMarkup(f"not an element name: {tag[:40]!r}")
    if tag.lower() in ("script", "style"):
        raise UnsafeMarkup(f"<{tag}> refused: scripts and styles come from /ui/static only")
    head = "".join(_attr(k, v) for k, v in (attrs or {}).items() if v is not None and v is not False)
    if tag in _VOID:
        if children:
            raise UnsafeMarkup(f"<{tag}> has no content")
        return Markup(f"<{tag}{head}>")
    return Markup(f"<{tag}{head}>{_children(children)}</{tag}>")


def _children(children: Iterable[object]) -> str:
    parts: list[str] = []
    for c in children:
        kind = type(c)
        if kind is Markup:
            parts.append(c)  # type: ignore[arg-type]
        elif kind is str:
            parts.append(str.translate(c, _ESCAPES))  # type: ignore[arg-type]
        elif c is None:
            continue
        elif isinstance(c, str | int | float) or not isinstance(c, Iterable):
            parts.append(escape(c))
        else:
            parts.append(_children(c))
    return "".join(parts)


def join(parts: Iterable[object], sep: object = "") -> Markup:
    """The markup of `parts` one after another (plain values escaped), separated by `sep`."""
    return Markup(escape(sep).join(escape(p) for p in parts if p is not None))


def table(headers: Iterable[object], rows: Iterable[Iterable[object]], **attrs: object) -> Markup:
    """A table: a header row of `headers`, then one row per item of `rows` (each cell a plain value or
    Markup; a cell that is already a `<td>` Markup is kept as the cell). `attrs` go on the table element
    (`class_` for `class`, underscores in other names become dashes: `data_sort` → `data-sort`)."""
    head = el("thead", None, el("tr", None, (el("th", None, h) for h in headers)))
    body = el("tbody", None, (el("tr", None, (_cell(c) for c in row)) for row in rows))
    return el("table", {_attr_name(k): v for k, v in attrs.items()}, head, body)


def _cell(c: object) -> Markup:
    if isinstance(c, Markup) and c.startswith(("<td>", "<td ")):
        return c
    return el("td", None, c)


def _attr_name(key: str) -> str:
    return key.rstrip("_").replace("_", "-")

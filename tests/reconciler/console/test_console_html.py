"""The console's HTML builder: plain values are escaped everywhere, markup is kept, and what could run script
(event-handler attributes, script URLs, <script>/<style>) is refused; the page frame and its fragment."""
from __future__ import annotations

import pytest

from reconciler.console.html import Markup, UnsafeMarkup, el, escape, join, table
from reconciler.console.layout import NAV, fragment_of, page

PROBE = "<img src=x onerror=alert(1)>"


def test_text_and_attributes_are_escaped() -> None:
    out = el("a", {"href": "/ui/?q=" + PROBE, "title": "\"'&"}, PROBE)
    assert out == ('<a href="/ui/?q=&lt;img src=x onerror=alert(1)&gt;" title="&quot;&#x27;&amp;">'
                   "&lt;img src=x onerror=alert(1)&gt;</a>")
    assert "<img" not in table(["h", PROBE], [[PROBE, 3]]) and isinstance(join([PROBE]), Markup)
    assert escape(Markup("<b>x</b>")) == "<b>x</b>" and escape(None) == "" and escape(7) == "7"


def test_attribute_values_none_false_true() -> None:
    assert el("input", {"type": "checkbox", "checked": True, "disabled": False, "value": None}) == \
        '<input type="checkbox" checked>'


def test_children_nest_and_flatten() -> None:
    assert el("ul", None, (el("li", None, i) for i in range(2)), None, [PROBE]) == \
        "<ul><li>0</li><li>1</li>&lt;img src=x onerror=alert(1)&gt;</ul>"


@pytest.mark.parametrize("make", [
    lambda: el("a", {"onclick": "x()"}),
    lambda: el("img", {"OnError": "x()"}),
    lambda: el("a", {"href": "javascript:alert(1)"}),
    lambda: el("a", {"href": " JaVa\tScRiPt:alert(1)"}),
    lambda: el("iframe", {"src": "data:text/html,<script>1</script>"}),
    lambda: el("script", None, "alert(1)"),
    lambda: el("style"),
    lambda: el("a b"),
    lambda: el("a", {'x" onload="y': 1}),
])
def test_what_could_run_script_is_refused(make: object) -> None:
    with pytest.raises(UnsafeMarkup):
        make()  # type: ignore[operator]


def test_page_frame_and_its_fragment() -> None:
    doc = page("Fleet " + PROBE, "Fleet", el("p", None, "hello"))
    text = doc.decode()
    assert text.startswith("<!doctype html>") and "<style" not in text
    assert text.count("<script") == 1 and '<script src="/ui/static/console.js" defer></script>' in text
    assert "&lt;img" in text and "<img" not in text
    for name, path in NAV:
        assert f'href="{path}"' in text, name
    assert 'class="active" aria-current="page">Fleet<' in text
    frag = fragment_of(doc).decode()
    assert frag.startswith('<main id="content"') and frag.endswith("</main>") and "<p>hello</p>" in frag
    assert "<nav" not in frag

"""YAML as coloured tokens, for showing rendered policies in the console without any external asset.

`tokens(text)` splits each line into (kind, text) pieces whose texts joined give the line back
unchanged, so highlighting can never alter what a reviewer reads; `highlight(text)` renders them as
spans with classes (the stylesheet colours them; the strict CSP allows no inline style). It is a
reader for the block YAML that `yaml.dump` writes and people write in packs, not a parser: anything
it does not recognise stays plain text.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from reconciler.console.html import Markup, el, join


class Kind(StrEnum):
    PLAIN = "plain"
    KEY = "key"
    STRING = "str"
    NUMBER = "num"
    BOOL = "bool"
    NULL = "null"
    COMMENT = "comment"
    PUNCT = "punct"
    DOCUMENT = "doc"
    ANCHOR = "anchor"


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str


_KEY = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s#'"\-?:,\[\]{}][^#:]*?|-[^\s#:][^#:]*?)(\s*:)(?=\s|$)""")
_NUMBER = re.compile(r"[-+]?(\d[\d_]*(\.\d*)?([eE][-+]?\d+)?|\.\d+|0x[0-9a-fA-F]+|0o[0-7]+|\.inf|\.nan)$")
_BOOLS = frozenset({"true", "false", "yes", "no", "on", "off"})
_NULLS = frozenset({"null", "~", ""})
_FLOW_PUNCT = "[]{},"


def tokens(text: str) -> list[list[Token]]:
    """Each line of `text` as tokens (a final newline does not make an empty last line)."""
    out: list[list[Token]] = []
    block_indent: int | None = None  # inside a `|` or `>` scalar begun at this indentation
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None:
            if not line.strip() or indent > block_indent:
                out.append([Token(Kind.STRING, line)] if line else [])
                continue
            block_indent = None
        toks = list(_line(line))
        out.append(toks)
        if toks and toks[-1].kind is Kind.PUNCT and toks[-1].text.strip()[:1] in ("|", ">"):
            block_indent = indent
    return out


def _line(line: str) -> Iterator[Token]:
    rest = line
    lead = len(rest) - len(rest.lstrip(" "))
    if lead:
        yield Token(Kind.PLAIN, rest[:lead])
        rest = rest[lead:]
    if rest in ("---", "...") or rest.startswith("--- "):
        yield Token(Kind.DOCUMENT, rest)
        return
    while rest.startswith("- ") or rest == "-":
        yield Token(Kind.PUNCT, rest[:2])
        rest = rest[2:]
    m = _KEY.match(rest)
    if m:
        yield Token(Kind.KEY, m.group(1))
        yield Token(Kind.PUNCT, m.group(2))
        rest = rest[m.end():]
    yield from _value(rest)


def _value(text: str) -> Iterator[Token]:
    """A value and what follows it on the line: spaces, a scalar or a flow collection, a comment."""
    stripped = text.lstrip(" ")
    if len(stripped) < len(text):
        yield Token(Kind.PLAIN, text[: len(text) - len(stripped)])
    text = stripped
    if not text:
        return
    if text.startswith("#"):
        yield Token(Kind.COMMENT, text)
        return
    if text[0] in "&*!":
        end = text.find(" ")
        end = len(text) if end < 0 else end
        yield Token(Kind.ANCHOR, text[:end])
        yield from _value(text[end:])
        return
    if re.match(r"[|>][-+0-9]*(\s|$)", text):
        head = text.split(" ", 1)
        yield Token(Kind.PUNCT, head[0])
        if len(head) > 1:
            yield from _value(" " + head[1])
        return
    if text[0] in "[{":
        yield from _flow(text)
        return
    if text[0] in "'\"":
        end = _quoted_end(text)
        yield Token(Kind.STRING, text[:end])
        yield from _value(text[end:])
        return
    cut = text.find(" #")
    scalar, tail = (text, "") if cut < 0 else (text[:cut], text[cut:])
    yield Token(_scalar_kind(scalar.rstrip()), scalar)
    if tail:
        yield from _value(tail)


def _flow(text: str) -> Iterator[Token]:
    """`[a, "b", 3]`, `{k: v}`: punctuation, quoted strings and scalars."""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _FLOW_PUNCT or ch == ":":
            yield Token(Kind.PUNCT, ch)
            i += 1
        elif ch == " ":
            j = i
            while j < len(text) and text[j] == " ":
                j += 1
            if text[j:j + 1] == "#":
                yield Token(Kind.COMMENT, text[i:])
                return
            yield Token(Kind.PLAIN, text[i:j])
            i = j
        elif ch in "'\"":
            end = i + _quoted_end(text[i:])
            yield Token(Kind.STRING, text[i:end])
            i = end
        else:
            j = i
            while j < len(text) and text[j] not in _FLOW_PUNCT and not (text[j] == ":" and text[j + 1:j + 2] in
                                                                         (" ", "")):
                j += 1
            word = text[i:j]
            if text[j:j + 1] == ":":
                yield Token(Kind.KEY, word)
            else:
                yield Token(_scalar_kind(word.strip()), word)
            i = j


def _quoted_end(text: str) -> int:
    """The index just past the closing quote of the string `text` starts with (its end if unclosed)."""
    quote, i = text[0], 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            if quote == "'" and text[i + 1:i + 2] == "'":
                i += 2
                continue
            return i + 1
        i += 1
    return len(text)


def _scalar_kind(word: str) -> Kind:
    low = word.lower()
    if low in _NULLS:
        return Kind.NULL
    if low in _BOOLS:
        return Kind.BOOL
    if _NUMBER.match(word):
        return Kind.NUMBER
    return Kind.STRING


def highlight(text: str) -> Markup:
    """`text` as a `<pre>` of spans, one `y-<kind>` class per token (every text escaped by `el`)."""
    lines = []
    for toks in tokens(text):
        parts = [t.text if t.kind is Kind.PLAIN else el("span", {"class": f"y-{t.kind}"}, t.text) for t in toks]
        lines.append(el("span", {"class": "y-line"}, *parts))
    return el("pre", {"class": "yaml"}, el("code", None, join(_with_newlines(lines))))


def _with_newlines(lines: list[Markup]) -> list[Markup | str]:
    out: list[Markup | str] = []
    for line in lines:
        out += [line, "\n"]
    return out

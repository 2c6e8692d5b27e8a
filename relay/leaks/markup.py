"""The text of an HTML (or XML) part, through a real parser (html.parser: entities, tags,
comments, ``<script>`` and ``<style>`` as raw text).

What a reader sees is kept in order; what is hidden from them (hidden elements, comments,
scripts, styles, attribute values) follows it: a leak hidden in a comment is still a leak.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["html_text", "is_markup", "is_markup_type"]

_MARKUP = re.compile(r"\s*(?:<!doctype\s+html|<html|<\?xml|<svg|<head|<body)", re.I)


def is_markup_type(ctype: str) -> bool:
    """Whether a content type is HTML or XML, read through `html_text`."""
    return ctype in ("text/html", "application/xhtml+xml", "image/svg+xml") or ctype.endswith(
        "/xml"
    )


def is_markup(text: str) -> bool:
    """Whether a text of any label starts as an HTML or XML document does."""
    return bool(_MARKUP.match(text[:1024]))


def _words(words: str) -> frozenset[str]:
    return frozenset(words.split())


_BLOCKS = _words(
    "address article aside blockquote body br caption dd details div dl dt fieldset "
    "figcaption figure footer form h1 h2 h3 h4 h5 h6 header hr html li main nav ol p pre "
    "section summary table tbody td tfoot th thead title tr ul"
)
_VOID = _words("area base br col embed hr img input link meta param source track wbr")
_HIDDEN_TAGS = _words("head script style template noscript title")
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?![.\d]*[1-9])"
    r"|opacity\s*:\s*0(?![.\d]*[1-9])|(?:max-)?(?:height|width)\s*:\s*0(?![.\d]*[1-9])",
    re.I,
)


class _HTMLText(HTMLParser):
    """Shown text in order; hidden text, comments and attribute values apart."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.shown: list[str] = []
        self.hidden: list[list[str]] = []  # one run per outermost hidden element
        self.extras: list[str] = []  # comments, declarations, attribute values
        self._open: list[tuple[str, bool]] = []  # (tag, hidden)

    def _hiding(self) -> bool:
        return bool(self._open) and self._open[-1][1]

    def _sink(self) -> list[str]:
        return self.hidden[-1] if self._hiding() else self.shown

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = " ".join(value for _, value in attrs if value)
        if values:
            self.extras.append(values)
        style = " ".join(value or "" for key, value in attrs if key == "style")
        hides = (
            tag in _HIDDEN_TAGS
            or any(key == "hidden" for key, _ in attrs)
            or bool(_HIDDEN_STYLE.search(style))
        )
        if tag not in _VOID:
            if hides and not self._hiding():
                self.hidden.append([])
            self._open.append((tag, hides or self._hiding()))
        if tag in _BLOCKS:  # a hidden block breaks no line of the shown text
            self._sink().append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                if tag in _BLOCKS:
                    self._sink().append("\n")
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        self._sink().append(data)

    def handle_comment(self, data: str) -> None:
        self.extras.append(data)

    def unknown_decl(self, data: str) -> None:  # <![CDATA[...]]> and the like
        self.extras.append(data)


def html_text(markup: str) -> str:
    """The text of an HTML (or XML) document: what is shown, then what is hidden."""
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    hidden = "\n".join(["".join(run) for run in parser.hidden] + parser.extras).strip()
    shown = "".join(parser.shown)
    return f"{shown}\n\n{hidden}" if hidden else shown

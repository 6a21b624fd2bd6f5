"""Headings of the report's HTML: unique ids and a table of contents.

nbconvert gives every heading an id made of its text, so the many "Dim = 8" and "Sample = 500"
headings of the toy sections share ids and their links jump to the first. :func:`unique_anchors`
gives each heading an ASCII id prefixed by its section headings (``hyper-parameter-search-
epsilon-for-cdg-sigma-for-nes-1--cdg-lr-loss-decrease-plot--dim-8``), numbered on a clash, and
points its anchor link at it;
:func:`table_of_contents` lists the headings of levels 2 to 4 as nested links, inserted after the
Findings, before the first section.
"""
from __future__ import annotations

import html
import re
from typing import NamedTuple

from lib.experiments.cells import slug

_HEADING = re.compile(r'<h([1-6]) id="([^"]*)">(.*?)<a class="anchor-link" href="#\2">', re.S)


class Heading(NamedTuple):
    level: int
    id: str
    text: str


def unique_anchors(body: str) -> tuple[str, list[Heading]]:
    """``body`` with every heading's id (and its anchor link) made unique; the headings in order."""
    path: list[str] = []  # the slugs of the open headings of levels 3 and below (level 2 is the notes' title)
    seen: set[str] = set()
    headings: list[Heading] = []

    def rename(m: re.Match) -> str:
        level, text = int(m.group(1)), m.group(3)
        del path[max(0, level - 3):]
        own = slug(text)
        base = "--".join(path + [own]) if level >= 3 else own
        new, k = base, 2
        while new in seen:
            new, k = f"{base}-{k}", k + 1
        seen.add(new)
        if level >= 3:
            path.append(own)
        headings.append(Heading(level, new, html.unescape(re.sub(r"<[^>]+>", "", text)).strip()))
        return f'<h{level} id="{new}">{text}<a class="anchor-link" href="#{new}">'

    return _HEADING.sub(rename, body), headings


def table_of_contents(headings: list[Heading], levels: tuple[int, int] = (2, 4)) -> str:
    """Nested lists of links to the headings of ``levels`` (inclusive), under a "Contents"
    heading; a heading's subheadings are a list inside its item."""
    low, high = levels
    shown = [h for h in headings if low <= h.level <= high]

    def items(start: int, level: int) -> tuple[list[str], int]:
        out, k = [], start
        while k < len(shown) and shown[k].level >= level:
            h = shown[k]
            if h.level > level:  # deeper than expected (a skipped level): nest it under the last item
                sub, k = items(k, h.level)
                out.append("<ul>" + "".join(sub) + "</ul>")
                continue
            sub, k = items(k + 1, level + 1)
            out.append(f'<li><a href="#{h.id}">{html.escape(h.text)}</a>'
                       + (f"<ul>{''.join(sub)}</ul>" if sub else "") + "</li>")
        return out, k

    top, _ = items(0, low)
    return '<nav class="toc"><h2 id="contents">Contents</h2><ul>' + "".join(top) + "</ul></nav>"


def with_contents(body: str) -> str:
    """Unique heading ids, and the table of contents before the first section heading (level 2)
    that is not the Findings: the report opens with its answers, then its contents."""
    body, headings = unique_anchors(body)
    first = next((m for m in re.finditer(r'<h2 id="([^"]*)"', body) if m.group(1) != "findings"), None)
    if first is None:
        return body
    return body[:first.start()] + table_of_contents(headings) + "\n" + body[first.start():]

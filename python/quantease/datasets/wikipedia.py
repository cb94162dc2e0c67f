"""MediaWiki XML dumps: the articles they hold, with the wiki markup stripped into plain paragraphs."""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

__all__ = ["clean_wikitext", "wiki_articles"]

# Sections made of citations and link lists, not prose.
_DROP_SECTIONS = {
    "references",
    "external links",
    "see also",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "footnotes",
    "citations",
    "notes and references",
    "works cited",
}
_LINK_DROP_PREFIXES = (
    "file:",
    "image:",
    "category:",
    "media:",
    "wikipedia:",
    "wp:",
    "template:",
    "help:",
    "portal:",
    "special:",
    "user:",
    "talk:",
)
_INNER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_INNER_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_INTERWIKI = re.compile(r"^:?[a-z]{2,3}(?:-[a-z]+)?:")


def _strip_nested(pattern: re.Pattern[str], text: str, repl: Any = "") -> str:
    # Innermost first, until nothing matches: handles nesting without a parser.
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def _link_text(match: re.Match[str]) -> str:
    target, _, label = match.group(1).partition("|")
    low = target.strip().lower()
    if low.startswith(_LINK_DROP_PREFIXES) or _INTERWIKI.match(low):
        return ""
    if label:
        # [[File:..|thumb|caption]] was dropped above; for ordinary links the label is the last field.
        return label.rsplit("|", 1)[-1]
    return target.lstrip(":").split("#")[0] or target


def clean_wikitext(markup: str) -> str:
    """Plain prose from MediaWiki markup: paragraphs and headings, no templates, tables, refs or links.

    A small, deterministic cleaner (not a MediaWiki parser): templates ``{{..}}``, tables ``{|..|}``,
    ``<ref>`` notes, comments, files/categories/interwiki links and the reference sections are dropped;
    ``[[target|label]]`` becomes ``label``, ``[url label]`` becomes ``label``; bold/italic quotes and HTML
    tags go; list markers are removed. Paragraphs are separated by one blank line.
    """
    text = re.sub(r"<!--.*?-->", "", markup, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = re.sub(
        r"<(math|gallery|timeline|score|syntaxhighlight|source|imagemap)[^>]*>.*?</\1>", "", text, flags=re.S | re.I
    )
    text = _strip_nested(_INNER_TEMPLATE, text)
    text = _strip_nested(_INNER_TABLE, text)
    text = _strip_nested(_INNER_LINK, text, _link_text)
    text = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]+\s+([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[(?:https?:|ftp:)?//[^\]]*\]", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = re.sub(r"</?[a-zA-Z][^>]*>", "", text)
    text = re.sub(r"__[A-Z]+__", "", text)
    text = html.unescape(text)

    paragraphs: list[str] = []
    dropping = False
    for raw in text.split("\n"):
        line = raw.strip()
        heading = re.fullmatch(r"(=+)\s*(.*?)\s*\1", line)
        if heading:
            title = heading.group(2).strip()
            dropping = title.lower() in _DROP_SECTIONS
            if not dropping and title:
                paragraphs.append(title)
            continue
        if dropping:
            continue
        line = re.sub(r"^[*#:;]+\s*", "", line)
        line = re.sub(r"\s+", " ", line).strip()
        # Leftovers of broken markup (unbalanced braces, table rows) carry no prose.
        if not line or line.startswith(("{{", "}}", "{|", "|", "!")) or not re.search(r"[A-Za-z]", line):
            continue
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)
        line = re.sub(r" ([,.;:])", r"\1", line)
        paragraphs.append(line)
    return "\n\n".join(paragraphs)


def wiki_articles(path: Path) -> list[tuple[str, str]]:
    """(title, plain text) of each main-namespace, non-redirect article of a MediaWiki XML dump."""
    articles = []
    with bz2.open(path, "rb") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            if not elem.tag.endswith("}page"):
                continue
            ns = "{" + elem.tag[1:].split("}")[0] + "}"
            title = elem.findtext(f"{ns}title") or ""
            namespace = elem.findtext(f"{ns}ns") or "0"
            body = elem.findtext(f"{ns}revision/{ns}text") or ""
            elem.clear()
            if namespace != "0" or body.lstrip().upper().startswith("#REDIRECT"):
                continue
            cleaned = clean_wikitext(body)
            if cleaned:
                articles.append((title, cleaned))
    return articles

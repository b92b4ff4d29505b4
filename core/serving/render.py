"""Chat text as the browser shows it: literal text, never markup from a prompt or an answer.

The chat's message component renders Markdown and lets (sanitised) HTML through; an image in
a prompt or an answer — `![x](http://host/p.png)` or `<img src=...>` — would make every
browser that shows the conversation fetch that address. So prompt and answer text is turned
into Markdown that renders as exactly the characters typed: every ASCII punctuation mark is
backslash-escaped (CommonMark lets any of them be escaped, and an escaped character starts
no syntax: no image, link, HTML tag, entity, emphasis, code or LaTeX), and leading spaces
become no-break spaces (an indented line would otherwise start a code block, where the
backslashes would show; the entity, unlike the character, is not trimmed away as leading
whitespace). Only our own labels around the text use Markdown.
"""

from __future__ import annotations

import re
import string

_PUNCT = re.compile("([" + re.escape(string.punctuation) + "])")
_LEAD = re.compile(r"^[ \t]+", re.MULTILINE)
NBSP = "&nbsp;"  # the only markup we add to the text; `&` typed in the text is escaped


def literal_markdown(text: str) -> str:
    """Markdown that renders as `text`, character for character (line breaks kept)."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    escaped = _PUNCT.sub(r"\\\1", text)
    return _LEAD.sub(lambda m: m.group(0).replace("\t", NBSP * 4).replace(" ", NBSP), escaped)


def answer_markdown(text: str, model: str, note: str = "") -> str:
    """An answer for the conversation view, labelled with the model that wrote it."""
    label = f"**{literal_markdown(model)}**"
    if note:
        label += f" · *{literal_markdown(note)}*"
    return f"{label}\n\n{literal_markdown(text)}" if text else label

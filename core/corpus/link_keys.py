"""Which document a link value names: by id, by file name, by title or by an alias such as a
man page's `name(section)`.

Link values come in many forms (`rm.1`, `rm(1)`, `../man1/rm.1.html`, "Remove files"), and
an id-only match left every link of another form pointing at nothing, silently. A
`KeyIndex` holds, per kind of key, the documents each normalised key names; `resolve`
looks a link value up in one kind (the ingest's `--link-key`) or, with "auto", in each kind
in turn (id first, so that a link that names an id resolves exactly as it always did).
Pure functions and data: linking.py reads the documents and writes the edges.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

LINK_KEYS = ("auto", "id", "filename", "title", "alias")
# The order "auto" tries: exact forms first, the free-form title last.
AUTO_ORDER = ("id", "filename", "alias", "title")

# Files that hold many documents (one per row): their name names none of them.
_MULTI_DOCUMENT_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".parquet"}
_EXTERNAL_SCHEMES = {"http", "https", "mailto", "tel", "ftp", "javascript", "data"}

# `rm(1)`, `git-commit (1)`, `printf(3p)`: a man page's name and section.
_MAN_REF = re.compile(r"^([\w][\w.+:-]*)\s*\((\d[a-z0-9]*)\)$")
# The same at the start of a title: "RM(1) - remove files", "rm(1)".
_MAN_TITLE = re.compile(r"^([\w][\w.+:-]*)\s*\((\d[a-z0-9]*)\)")
# `rm.1`, `git-commit.1`, `printf.3p` as an id or file stem.
_MAN_DOTTED = re.compile(r"^([\w][\w+:-]*(?:\.[\w+:-]+)*)\.(\d[a-z0-9]*)$")


def check_link_key(value: str) -> str:
    value = (value or "auto").strip().lower()
    if value not in LINK_KEYS:
        raise ValueError(f"link key {value!r}: use one of {', '.join(LINK_KEYS)}")
    return value


def norm(text: str) -> str:
    """Case, Unicode form and spacing do not tell documents apart."""
    return " ".join(unicodedata.normalize("NFC", str(text)).casefold().split())


def man_alias(text: str) -> str | None:
    """`name(section)` of a man-page-like reference, id or title, or None."""
    s = norm(text)
    m = _MAN_REF.match(s) or _MAN_DOTTED.match(s)
    return f"{m.group(1)}({m.group(2)})" if m else None


def is_document_link(ref: str) -> bool:
    """False for links that leave the corpus (web addresses, mail, in-page anchors)."""
    ref = ref.strip()
    if not ref or ref.startswith("#"):
        return False
    return urlparse(ref).scheme.lower() not in _EXTERNAL_SCHEMES


def _path_name(ref: str) -> str:
    path = unquote(urlparse(ref.strip()).path or "")
    return PurePosixPath(path.replace("\\", "/")).name


def _stem(name: str) -> str:
    """The name without a file suffix (`faq.html` → `faq`; "Dr. Smith" keeps its dot)."""
    base, dot, suffix = name.rpartition(".")
    return base if dot and base and re.fullmatch(r"[A-Za-z0-9]{1,8}", suffix) else name


def document_keys(
    doc_id: str, title: str, source_path: str | None, metadata: dict[str, Any] | None
) -> dict[str, set[str]]:
    """The keys by which links may name a document, per kind."""
    keys: dict[str, set[str]] = {"id": {norm(doc_id)}, "filename": set(), "title": set()}
    aliases: set[str] = set()
    if title.strip():
        keys["title"].add(norm(title))
    if source_path:
        name = PurePosixPath(str(source_path).replace("\\", "/")).name
        if PurePosixPath(name).suffix.lower() not in _MULTI_DOCUMENT_SUFFIXES:
            keys["filename"].update({norm(name), norm(_stem(name))})
    for raw in (doc_id, title):
        m = _MAN_TITLE.match(norm(raw))
        alias = man_alias(raw) or (f"{m.group(1)}({m.group(2)})" if m else None)
        if alias:
            aliases.add(alias)
    meta = metadata or {}
    declared = meta.get("aliases") or []
    declared = [declared] if isinstance(declared, str) else list(declared)
    if meta.get("short_name"):
        declared.append(meta["short_name"])
    for a in declared:
        if isinstance(a, str | int) and str(a).strip():
            aliases.add(man_alias(str(a)) or norm(str(a)))
    keys["alias"] = aliases
    return keys


def ref_keys(ref: str, kind: str) -> list[str]:
    """The keys a link value may stand for in one kind, most exact first."""
    ref = ref.strip()
    if kind == "id":
        # "rm.1" is an id as it stands; "../x/faq.html#top" names the id "faq".
        return list(dict.fromkeys(k for k in (norm(ref), norm(_stem(_path_name(ref)))) if k))
    if kind == "filename":
        name = _path_name(ref)
        return list(dict.fromkeys(k for k in (norm(name), norm(_stem(name))) if k))
    if kind == "alias":
        return [man_alias(ref) or norm(ref)]
    return [norm(ref)]


@dataclass
class Resolution:
    target: str | None
    reason: str = ""  # why there is no target


@dataclass
class KeyIndex:
    """Normalised key → document ids, per kind of key."""

    keys: dict[str, dict[str, set[str]]] = field(
        default_factory=lambda: {k: {} for k in AUTO_ORDER}
    )
    ids: set[str] = field(default_factory=set)

    def add(
        self,
        doc_id: str,
        title: str,
        source_path: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.ids.add(doc_id)
        for kind, found in document_keys(doc_id, title, source_path, metadata).items():
            for key in found:
                self.keys[kind].setdefault(key, set()).add(doc_id)

    def add_all(self, rows: Iterable[tuple[str, str, str | None, dict | None]]) -> None:
        for row in rows:
            self.add(*row)

    def _lookup(self, ref: str, kind: str) -> set[str]:
        if kind == "id" and ref.strip() in self.ids:
            return {ref.strip()}  # the exact id wins over ids that differ only in case
        for key in ref_keys(ref, kind):
            found = self.keys[kind].get(key)
            if found:
                return found
        return set()

    def resolve(self, ref: str, link_key: str = "auto") -> Resolution:
        kinds = AUTO_ORDER if link_key == "auto" else (link_key,)
        for kind in kinds:
            found = self._lookup(ref, kind)
            if len(found) == 1:
                return Resolution(next(iter(found)))
            if found:
                some = ", ".join(sorted(found)[:3])
                return Resolution(None, f"{kind} matches {len(found)} documents ({some}, ...)")
        tried = "id, file name, alias or title" if link_key == "auto" else link_key
        return Resolution(None, f"no document matches by {tried}")

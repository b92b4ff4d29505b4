"""One reader per format. Readers turn a file into `SourceDocument`s (or `RowProblem`s for
bad lines of tabular files) and raise `FileProblem` when the whole file is unusable.

Readers stream: tabular files are read row by row (parquet batch by batch), so memory does
not grow with the file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ClaraError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm", ".pdf"}
TABULAR_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".parquet"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | TABULAR_SUFFIXES

# Fields a column mapping may name; any other column becomes free metadata.
MAPPABLE = ("text", "title", "id", "links", "document_type", "domain", "date")
DEFAULT_MAPPING = {f: f for f in MAPPABLE}
# Front-matter / metadata keys that describe relations, and the edge type each one makes.
RELATION_KEYS = {
    "links": "links_to",
    "see_also": "links_to",
    "cites": "cites",
    "part_of": "part_of",
    "parent": "part_of",
    "supersedes": "supersedes",
    "replaces": "supersedes",
}
MAX_DOCUMENT_BYTES = 10 * 1024 * 1024


class FileProblem(ClaraError):
    """The whole file cannot be ingested; `reason` says why and what to do."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class RowProblem:
    path: str
    line: int
    reason: str


@dataclass
class SourceDocument:
    doc_id: str
    title: str
    text: str
    source_path: str
    document_type: str | None = None
    domain: str | None = None
    date: dt.date | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # (target reference, edge type, origin); a reference is an id or a file name.
    links: list[tuple[str, str, str]] = field(default_factory=list)
    line: int | None = None
    warnings: list[str] = field(default_factory=list)


def parse_mapping(spec: str | dict[str, str] | None) -> dict[str, str]:
    """`text=body,title=headline` → {"text": "body", ...} on top of the identity mapping."""
    mapping = dict(DEFAULT_MAPPING)
    if not spec:
        return mapping
    items = (
        spec.items()
        if isinstance(spec, dict)
        else (p.split("=", 1) if "=" in p else (p, "") for p in spec.split(",") if p.strip())
    )
    for key, col in items:
        key, col = key.strip(), col.strip()
        if key not in MAPPABLE or not col:
            raise ValueError(
                f"column mapping {key}={col!r}: use FIELD=COLUMN with FIELD one of "
                f"{', '.join(MAPPABLE)}"
            )
        mapping[key] = col
    return mapping


def parse_date(value: Any) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ValueError(f"date {value!r} is not an ISO date (YYYY-MM-DD)") from None


def _as_list(value: Any, sep: str = ";") -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        # None: an empty YAML list item ("- " or "- #anchor", a comment to YAML)
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    if hasattr(value, "tolist"):
        return _as_list(value.tolist(), sep)
    s = str(value).strip()
    if s.startswith("["):
        try:
            return _as_list(json.loads(s), sep)
        except json.JSONDecodeError:
            pass
    return [p.strip() for p in re.split(r"[;,]", s) if p.strip()]


def decode(raw: bytes, path: str) -> tuple[str, list[str]]:
    """UTF-8 (with or without BOM); otherwise Windows-1252/latin-1 with a warning."""
    if b"\x00" in raw[:8192]:
        raise FileProblem(path, "contains NUL bytes: this is a binary file, not text")
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as err:
        where = f"byte {err.start} (0x{raw[err.start]:02x})"
    for enc in ("cp1252", "latin-1"):
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError:
            continue
        return text, [
            f"not valid UTF-8 at {where}; decoded as {enc} (latin-1 family). "
            "Re-save the file as UTF-8 if characters look wrong."
        ]
    raise FileProblem(path, "cannot be decoded as UTF-8 or latin-1")  # pragma: no cover


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    size = path.stat().st_size
    if size == 0:
        raise FileProblem(str(path), "file is empty (0 bytes): nothing to ingest")
    if size > max_bytes:
        raise FileProblem(
            str(path),
            f"file is {size / 1e6:.1f} MB, above the {max_bytes / 1e6:.0f} MB limit for one "
            "document; split it or raise max_document_bytes (--max-doc-mb)",
        )
    return path.read_bytes()


def _require_text(text: str, path: str) -> str:
    if not text.strip():
        raise FileProblem(path, "contains no text (only whitespace or markup)")
    return text


def _meta_fields(doc: SourceDocument, meta: dict[str, Any], path: str) -> None:
    """Move well-known keys from a metadata dict onto the document."""
    for key in list(meta):
        if key in RELATION_KEYS:
            for target in _as_list(meta.pop(key)):
                doc.links.append((target, RELATION_KEYS[key], key))
    if "document_type" in meta:
        doc.document_type = str(meta.pop("document_type") or "") or None
    if "domain" in meta:
        doc.domain = str(meta.pop("domain") or "") or None
    if "date" in meta:
        raw = meta.pop("date")
        try:
            doc.date = parse_date(raw)
        except ValueError as err:
            doc.warnings.append(f"{err}; date left empty")
    for key, value in meta.items():
        if isinstance(value, dt.date | dt.datetime):
            value = value.isoformat()
        doc.metadata[str(key)] = value


# Markdown ---------------------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)
_MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_HEADING = re.compile(r"^#\s+(.+)$", re.M)


def read_markdown(path: Path, max_bytes: int) -> SourceDocument:
    import yaml

    text, warnings = decode(_read_bytes(path, max_bytes), str(path))
    meta: dict[str, Any] = {}
    m = _FRONT_MATTER.match(text)
    if m:
        try:
            loaded = yaml.safe_load(m.group(1)) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f" line {mark.line + 2}" if mark else ""
            raise FileProblem(
                str(path), f"front matter is not valid YAML at{line}: {err}"
            ) from None
        if not isinstance(loaded, dict):
            raise FileProblem(str(path), "front matter must be a mapping of key: value lines")
        meta = loaded
        text = text[m.end() :]
    _require_text(text, str(path))
    heading = _MD_HEADING.search(text)
    title = str(meta.pop("title", "") or (heading.group(1).strip() if heading else path.stem))
    doc = SourceDocument(
        doc_id=str(meta.pop("id", "") or path.stem),
        title=title,
        text=text.strip(),
        source_path=str(path),
        warnings=warnings,
    )
    _meta_fields(doc, meta, str(path))
    for target in _MD_LINK.findall(text):
        doc.links.append((target, "links_to", "markdown_link"))
    return doc


# Plain text -------------------------------------------------------------------------------


def read_text(path: Path, max_bytes: int) -> SourceDocument:
    text, warnings = decode(_read_bytes(path, max_bytes), str(path))
    _require_text(text, str(path))
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    title = first if len(first) <= 200 else path.stem
    return SourceDocument(
        doc_id=path.stem, title=title, text=text.strip(), source_path=str(path), warnings=warnings
    )


# HTML -------------------------------------------------------------------------------------

_HIDDEN_RULE = re.compile(r"([^{}]+)\{[^}]*display\s*:\s*none[^}]*\}", re.I)
_BLOCK_TAGS = (
    "p",
    "div",
    "li",
    "dt",
    "dd",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "br",
    "section",
    "article",
    "table",
    "ul",
    "ol",
    "dl",
    "blockquote",
    "pre",
)


def read_html(path: Path, max_bytes: int) -> SourceDocument:
    from bs4 import BeautifulSoup

    raw, warnings = decode(_read_bytes(path, max_bytes), str(path))
    soup = BeautifulSoup(raw, "html.parser")
    meta: dict[str, Any] = {}
    for tag in soup.find_all("meta"):
        name, content = tag.get("name"), tag.get("content")
        if name and content is not None and name.lower() not in ("viewport", "generator"):
            meta[name] = content
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else ""
    # Selectors that stylesheets hide (".cookie { display: none }") are not visible text.
    hidden: list[str] = []
    for style in soup.find_all("style"):
        for sel in _HIDDEN_RULE.findall(style.get_text()):
            hidden.extend(s.strip() for s in sel.split(",") if s.strip())
    for sel in hidden:
        try:
            for el in soup.select(sel):
                el.decompose()
        except Exception:
            continue
    for el in soup(["script", "style", "noscript", "template", "head", "svg", "iframe"]):
        el.decompose()
    for el in soup.select("[hidden], [style*='display:none'], [style*='display: none']"):
        el.decompose()
    links = []
    for a in soup.find_all("a", href=True):
        href = a["href"].strip()
        if href and not href.startswith(("#", "mailto:", "tel:", "javascript:")):
            links.append((href, "links_to", "html_link"))
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for el in soup.find_all(_BLOCK_TAGS):
        el.insert_before("\n")
        el.insert_after("\n")
    body = soup.body or soup
    lines = [" ".join(ln.split()) for ln in body.get_text().splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    _require_text(text, str(path))
    if not title:
        h1 = soup.find("h1")
        title = h1.get_text(" ", strip=True) if h1 else path.stem
    doc = SourceDocument(
        doc_id=str(meta.pop("id", "") or path.stem),
        title=title,
        text=text,
        source_path=str(path),
        warnings=warnings,
        links=links,
    )
    _meta_fields(doc, meta, str(path))
    return doc


# PDF --------------------------------------------------------------------------------------


def read_pdf(path: Path, max_bytes: int) -> SourceDocument:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PdfStreamError

    raw = _read_bytes(path, max_bytes)
    try:
        reader = PdfReader(io.BytesIO(raw), strict=False)
        pages_text = [(p.extract_text() or "") for p in reader.pages]
        info = reader.metadata or {}
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError, OSError) as err:
        raise FileProblem(
            str(path), f"PDF is not readable ({type(err).__name__}: {err}); re-export the file"
        ) from None
    parts, offsets, pos = [], [], 0
    for n, ptext in enumerate(pages_text, start=1):
        ptext = ptext.strip()
        offsets.append({"page": n, "start_char": pos})
        parts.append(ptext)
        pos += len(ptext) + 2
    text = "\n\n".join(parts).strip()
    if not text:
        raise FileProblem(
            str(path), "PDF has no text layer (scanned images?); run OCR first and ingest again"
        )
    title = (
        str(info.get("/Title") or "").strip()
        or next((ln.strip() for ln in text.splitlines() if ln.strip()), path.stem)[:200]
    )
    doc = SourceDocument(doc_id=path.stem, title=title, text=text, source_path=str(path))
    doc.metadata["pages"] = offsets
    doc.metadata["page_count"] = len(pages_text)
    subject = str(info.get("/Subject") or "")
    bits = [b.strip() for b in subject.split(";")]
    if len(bits) == 3:  # "document_type; domain; date", as our sample PDFs write it
        meta = {"document_type": bits[0], "domain": bits[1], "date": bits[2]}
        _meta_fields(doc, meta, str(path))
    elif subject:
        doc.metadata["subject"] = subject
    if info.get("/Author"):
        doc.metadata["author"] = str(info["/Author"])
    return doc


# Tabular ----------------------------------------------------------------------------------


def _row_document(
    row: dict[str, Any], mapping: dict[str, str], path: Path, line: int, links_sep: str
) -> SourceDocument:
    text_col = mapping["text"]
    text = row.get(text_col)
    if text is None or (isinstance(text, float) and text != text):
        raise ValueError(f"field {text_col!r} (mapped to text) is missing")
    text = str(text).strip()
    if not text:
        raise ValueError(f"field {text_col!r} (mapped to text) is empty")
    doc_id = str(row.get(mapping["id"]) or "").strip() or f"{path.stem}-{line}"
    title = str(row.get(mapping["title"]) or "").strip() or text[:80]
    doc = SourceDocument(doc_id=doc_id, title=title, text=text, source_path=str(path), line=line)
    used = {mapping[k] for k in MAPPABLE}
    meta: dict[str, Any] = {}
    for key in ("document_type", "domain", "date"):
        if mapping[key] in row:
            meta[key] = row[mapping[key]]
    _meta_fields(doc, meta, str(path))
    for target in _as_list(row.get(mapping["links"]), links_sep):
        doc.links.append((target, "links_to", "links_column"))
    for key, value in row.items():
        if key in used or value is None or value == "":
            continue
        if key in RELATION_KEYS:
            for target in _as_list(value, links_sep):
                doc.links.append((target, RELATION_KEYS[key], key))
            continue
        if hasattr(value, "item"):
            value = value.item()
        elif hasattr(value, "tolist"):
            value = value.tolist()
        doc.metadata[str(key)] = value
    return doc


def _rows_jsonl(path: Path, max_bytes: int) -> Iterator[tuple[int, dict[str, Any] | str]]:
    with path.open("rb") as f:
        line_no = 0
        while True:
            raw = f.readline(max_bytes + 1)
            if not raw:
                break
            line_no += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the long line
                    raw = f.readline(1 << 20)
                yield line_no, f"line longer than {max_bytes / 1e6:.0f} MB; skipped"
                continue
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield line_no, f"not valid UTF-8 at column {err.start + 1}; save the file as UTF-8"
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                yield line_no, f"not valid JSON ({err.msg} at column {err.colno})"
                continue
            if not isinstance(obj, dict):
                yield line_no, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield line_no, obj


def _rows_json(path: Path, max_bytes: int) -> Iterator[tuple[int, dict[str, Any] | str]]:
    text, _ = decode(_read_bytes(path, max_bytes), str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise FileProblem(str(path), f"not valid JSON at line {err.lineno}: {err.msg}") from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), [data])
    if not isinstance(data, list):
        raise FileProblem(str(path), "expected a JSON array of objects (or JSONL)")
    for i, obj in enumerate(data, start=1):
        yield i, obj if isinstance(obj, dict) else f"item {i} is not a JSON object"


def _rows_csv(
    path: Path, mapping: dict[str, str], max_bytes: int
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    csv.field_size_limit(max_bytes)
    raw = path.open("rb")
    head = raw.read(4096)
    raw.seek(0)
    encoding = "utf-8-sig"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        encoding = "cp1252"
    with io.TextIOWrapper(raw, encoding=encoding, newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(f, dialect=dialect)
        header = reader.fieldnames or []
        if mapping["text"] not in header:
            raise FileProblem(
                str(path),
                f"header (line 1): required column {mapping['text']!r} (mapped to text) is "
                f"missing; columns are {', '.join(header) or '(none)'}. Map another column "
                "with --map text=COLUMN",
            )
        rows = iter(reader)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as err:
                # The parser cannot find the next row (a cell over the size limit, an
                # unclosed quote, bytes of another encoding): the file fails as a whole, and
                # its rows written so far roll back with its transaction.
                raise FileProblem(str(path), _csv_reason(err, reader.line_num, max_bytes)) from None
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def _csv_reason(err: Exception, lines_read: int, max_bytes: int) -> str:
    if isinstance(err, UnicodeDecodeError):  # text is decoded ahead: no exact line
        return (
            f"not valid {err.encoding} text ({err.reason}) after line {lines_read}; save the "
            "whole file in one encoding (UTF-8)"
        )
    where = f"line {lines_read + 1}"
    if "field larger than field limit" in str(err):
        return (
            f"{where}: a cell is larger than the largest document ({_size(max_bytes)}; raise "
            "the limit, CLI: --max-doc-mb)"
        )
    return f"{where}: CSV error: {err}"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def _rows_parquet(
    path: Path, mapping: dict[str, str]
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:
        raise FileProblem(str(path), f"Parquet file is not readable: {err}") from None
    names = pf.schema_arrow.names
    if mapping["text"] not in names:
        raise FileProblem(
            str(path),
            f"required column {mapping['text']!r} (mapped to text) is missing; columns are "
            f"{', '.join(names)}. Map another column with --map text=COLUMN",
        )
    n = 0
    batches = pf.iter_batches(batch_size=512)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:  # pyarrow raises several types for a damaged row group
            raise FileProblem(str(path), f"Parquet file is damaged after row {n}: {err}") from None
        for row in batch.to_pylist():
            n += 1
            yield n, row


def read_tabular(
    path: Path, mapping: dict[str, str], max_bytes: int
) -> Iterator[SourceDocument | RowProblem]:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise FileProblem(str(path), "file is empty (0 bytes): nothing to ingest")
    if suffix in (".jsonl", ".ndjson"):
        rows, sep = _rows_jsonl(path, max_bytes), ";"
    elif suffix == ".json":
        rows, sep = _rows_json(path, max_bytes), ";"
    elif suffix == ".csv":
        rows, sep = _rows_csv(path, mapping, max_bytes), ";"
    else:
        rows, sep = _rows_parquet(path, mapping), ";"
    for line, row in rows:
        if isinstance(row, str):
            yield RowProblem(str(path), line, row)
            continue
        try:
            yield _row_document(row, mapping, path, line, sep)
        except ValueError as err:
            yield RowProblem(str(path), line, str(err))


def read_file(
    path: Path, mapping: dict[str, str] | None = None, max_bytes: int = MAX_DOCUMENT_BYTES
) -> Iterator[SourceDocument | RowProblem]:
    """Documents (and row problems) of one file; raises FileProblem for an unusable file."""
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        yield read_markdown(path, max_bytes)
    elif suffix == ".txt":
        yield read_text(path, max_bytes)
    elif suffix in (".html", ".htm"):
        yield read_html(path, max_bytes)
    elif suffix == ".pdf":
        yield read_pdf(path, max_bytes)
    elif suffix in TABULAR_SUFFIXES:
        yield from read_tabular(path, mapping or dict(DEFAULT_MAPPING), max_bytes)
    else:
        raise FileProblem(
            str(path),
            f"unsupported file type {suffix or '(none)'}; supported: "
            + ", ".join(sorted(SUPPORTED_SUFFIXES)),
        )

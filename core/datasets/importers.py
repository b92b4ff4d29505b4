"""Import existing instruction data: JSONL / JSON / CSV / Parquet in the OpenAI `messages`,
Alpaca (instruction/input/output), ShareGPT (conversations with from/value) and plain `text`
formats, detected from the rows (or given explicitly).

Conversion is lossless: fields the format does not map are kept in the sample's metadata
(`extra`), an Alpaca `input` is kept separately so an Alpaca export restores it, and every
sample records its file and line. Rows are streamed; the import is one transaction, and with
any bad row nothing is written unless the caller asked to skip bad rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine

from core.audit import audited
from core.datasets.errors import DatasetError, ImportFailed, ImportRowError, UnknownFormat
from core.datasets.service import SampleIn, insert_samples, resolve_dataset, sample_row
from core.db import writing
from core.db.base import utcnow
from core.permissions import Principal, require

FORMATS: dict[str, str] = {
    "messages": 'OpenAI chat: {"messages": [{"role": "user"|"assistant"|"system", "content"}]}',
    "alpaca": 'Alpaca: {"instruction", "input" (optional), "output", "system"/"history" '
    "(optional)}",
    "sharegpt": 'ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}',
    "text": 'plain text: {"text"}',
}
FILE_TYPES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
DETECT_ROWS = 50
BATCH = 500

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}
# Keys each format consumes; everything else goes to metadata["extra"].
_CONSUMED = {
    "messages": {"messages", "system"},
    "alpaca": {"instruction", "input", "output", "system", "history"},
    "sharegpt": {"conversations", "system"},
    "text": {"text"},
}


@dataclass
class RawRow:
    line: int
    data: Any


@dataclass
class ImportReport:
    dataset: str
    file: str
    format: str
    detected: bool
    imported: int = 0
    skipped: int = 0
    errors: list[ImportRowError] = field(default_factory=list)
    sample_ids: list[int] = field(default_factory=list)


def file_type(path: Path) -> str:
    ft = FILE_TYPES.get(path.suffix.lower())
    if ft is None:
        raise DatasetError(
            f"{path.name}: unsupported file type {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(sorted(FILE_TYPES))}"
        )
    return ft


NESTED_FIELDS = ("messages", "conversations", "history")


def _maybe_json(key: str, value: Any) -> Any:
    # CSV cells and some Parquet exports carry nested fields as JSON strings.
    if key in NESTED_FIELDS and isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def iter_rows(path: Path) -> Iterator[RawRow | ImportRowError]:
    """Stream the rows of a file with 1-based line numbers (row numbers for Parquet/JSON)."""
    name = path.name
    ft = file_type(path)
    if ft == "jsonl":
        n = 0
        with path.open("r", encoding="utf-8-sig", errors="strict") as f:
            try:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield RawRow(n, json.loads(line))
                    except json.JSONDecodeError as err:
                        yield ImportRowError(
                            name, n, f"invalid JSON: {err.msg} at column {err.colno}"
                        )
            except UnicodeDecodeError as err:
                yield ImportRowError(
                    name, n + 1, f"not UTF-8 text ({err.reason}); re-save the file as UTF-8"
                )
    elif ft == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            line = getattr(err, "lineno", 1)
            yield ImportRowError(name, line, f"the file is not valid JSON: {err}")
            return
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) == 1:
                data = lists[0]
        if not isinstance(data, list):
            yield ImportRowError(
                name,
                1,
                "a JSON file must hold a list of records (or an "
                "object with exactly one list of records)",
            )
            return
        for n, item in enumerate(data, start=1):
            yield RawRow(n, item)
    elif ft == "csv":
        with path.open("r", encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            try:
                for rec in reader:
                    if None in rec:
                        yield ImportRowError(
                            name,
                            reader.line_num,
                            f"{len(rec[None])} more cell(s) than header columns",
                        )
                        continue
                    yield RawRow(
                        reader.line_num, {k: _maybe_json(k, v) for k, v in rec.items() if v != ""}
                    )
            except (csv.Error, UnicodeDecodeError) as err:
                yield ImportRowError(name, reader.line_num + 1, f"CSV error: {err}")
    else:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for damaged files
            yield ImportRowError(name, 0, f"not a readable Parquet file: {err}")
            return
        n = 0
        for batch in pf.iter_batches(batch_size=BATCH):
            for rec in batch.to_pylist():
                n += 1
                yield RawRow(n, {k: _maybe_json(k, v) for k, v in rec.items() if v is not None})


def formats_of(rec: Any) -> list[str]:
    if not isinstance(rec, dict):
        return []
    found = []
    if "messages" in rec:
        found.append("messages")
    if "conversations" in rec:
        found.append("sharegpt")
    if "instruction" in rec and "output" in rec:
        found.append("alpaca")
    if "text" in rec:
        found.append("text")
    return found


def detect_format(records: list[Any], file: str = "") -> str:
    """The format most of the first rows match; UnknownFormat says what was seen."""
    votes: dict[str, int] = {}
    for rec in records:
        for f in formats_of(rec)[:1]:
            votes[f] = votes.get(f, 0) + 1
    if not votes:
        seen: set[str] = set()
        for rec in records:
            if isinstance(rec, dict):
                seen.update(rec)
            else:
                seen.add(f"<{type(rec).__name__}>")
        supported = "; ".join(FORMATS.values())
        raise UnknownFormat(
            f"{file}: cannot tell the format. Supported formats are {supported}. "
            f"The first rows have the fields: {', '.join(sorted(seen)) or '(none)'}. "
            "Rename the columns or pass the format explicitly."
        )
    return max(votes, key=lambda k: (votes[k], -list(FORMATS).index(k)))


class RowFieldError(ValueError):
    """A record's field is wrong; `field` names it as a path (`messages.1.role`, 0-based)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


def _str(value: Any, what: str, field: str) -> str:
    if not isinstance(value, str):
        raise RowFieldError(field, f"{what} must be a string, got {type(value).__name__}")
    return value


def convert(rec: Any, fmt: str) -> SampleIn:
    """One raw record → SampleIn; ValueError with a specific reason on bad data."""
    if not isinstance(rec, dict):
        raise RowFieldError("", f"expected an object with fields, got {type(rec).__name__}")
    extra = {k: v for k, v in rec.items() if k not in _CONSUMED[fmt]}
    meta: dict[str, Any] = {"extra": extra} if extra else {}
    system = rec.get("system")
    if system is not None:
        system = _str(system, "'system'", "system") or None
    if fmt == "text":
        if "text" not in rec:
            raise RowFieldError("text", "missing field 'text'")
        return SampleIn(kind="text", text=_str(rec["text"], "'text'", "text"), metadata=meta)
    if fmt == "messages":
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RowFieldError(
                "messages", "'messages' must be a non-empty list of {role, content}"
            )
        clean = []
        msg_extra: dict[str, Any] = {}
        for i, m in enumerate(msgs, start=1):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise RowFieldError(f"messages.{i - 1}", f"message {i} needs 'role' and 'content'")
            if m["role"] not in ("system", "user", "assistant"):
                raise RowFieldError(
                    f"messages.{i - 1}.role",
                    f"message {i} has role {m['role']!r}; supported roles are "
                    "system, user, assistant",
                )
            content = _str(m["content"], f"message {i} content", f"messages.{i - 1}.content")
            clean.append({"role": m["role"], "content": content})
            # None-valued keys are Parquet struct padding (the union of all rows' keys).
            rest = {k: v for k, v in m.items() if k not in ("role", "content") and v is not None}
            if rest:
                msg_extra[str(i)] = rest
        if msg_extra:
            meta["message_extra"] = msg_extra
        return SampleIn(kind="chat", messages=clean, system=system, metadata=meta)
    if fmt == "sharegpt":
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise RowFieldError(
                "conversations", "'conversations' must be a non-empty list of {from, value}"
            )
        clean = []
        for i, m in enumerate(conv, start=1):
            if not isinstance(m, dict) or "from" not in m or "value" not in m:
                raise RowFieldError(f"conversations.{i - 1}", f"turn {i} needs 'from' and 'value'")
            role = _SHAREGPT_ROLES.get(str(m["from"]).lower())
            if role is None:
                raise RowFieldError(
                    f"conversations.{i - 1}.from",
                    f"turn {i} is from {m['from']!r}; supported are "
                    f"{', '.join(sorted(_SHAREGPT_ROLES))}",
                )
            value = _str(m["value"], f"turn {i} value", f"conversations.{i - 1}.value")
            clean.append({"role": role, "content": value})
        return SampleIn(kind="chat", messages=clean, system=system, metadata=meta)
    # alpaca
    instruction = _str(rec.get("instruction"), "'instruction'", "instruction")
    inp = rec.get("input")
    inp = _str(inp, "'input'", "input") if inp is not None else ""
    output = _str(rec.get("output"), "'output'", "output")
    msgs: list[dict[str, str]] = []
    for i, pair in enumerate(rec.get("history") or [], start=1):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise RowFieldError(
                f"history.{i - 1}", f"history entry {i} must be a [question, answer] pair"
            )
        msgs += [
            {
                "role": "user",
                "content": _str(pair[0], f"history {i} question", f"history.{i - 1}.0"),
            },
            {
                "role": "assistant",
                "content": _str(pair[1], f"history {i} answer", f"history.{i - 1}.1"),
            },
        ]
    user = f"{instruction}\n\n{inp}" if inp.strip() else instruction
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if inp.strip():
        meta["alpaca"] = {"instruction": instruction, "input": inp}
    return SampleIn(kind="chat", messages=msgs, system=system, metadata=meta)


def _field(err: Exception) -> str:
    """The field a conversion error is about ("" when it is about the whole record)."""
    if isinstance(err, RowFieldError):
        return err.field
    if isinstance(err, ValidationError):
        return ".".join(str(p) for p in err.errors()[0].get("loc", ()))
    return ""


def _reason(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        msg = first.get("msg", "invalid").removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    return str(err)


def parse_file(
    path: Path, fmt: str | None = None
) -> tuple[str, bool, Iterator[tuple[int, SampleIn] | ImportRowError]]:
    """(format, detected, stream of (line, sample) or row errors). Pure: no database."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if fmt is not None and fmt not in FORMATS:
        raise UnknownFormat(f"unknown format {fmt!r}; supported formats are {', '.join(FORMATS)}")
    detected = fmt is None
    if fmt is None:
        head = []
        for item in iter_rows(path):
            if isinstance(item, RawRow):
                head.append(item.data)
                if len(head) >= DETECT_ROWS:
                    break
        if not head:
            raise DatasetError(f"{path.name}: the file has no readable rows")
        fmt = detect_format(head, path.name)

    def stream() -> Iterator[tuple[int, SampleIn] | ImportRowError]:
        for item in iter_rows(path):
            if isinstance(item, ImportRowError):
                yield item
                continue
            try:
                sample = convert(item.data, fmt)
            except (ValueError, ValidationError) as err:
                yield ImportRowError(path.name, item.line, _reason(err), _field(err))
                continue
            sample.provenance = {
                "source": "import",
                "file": path.name,
                "line": item.line,
                "format": fmt,
            }
            yield item.line, sample

    return fmt, detected, stream()


def import_file(
    engine: Engine,
    actor: Principal,
    dataset_id: int | str,
    path: Path | str,
    fmt: str | None = None,
    skip_bad: bool = False,
    status: str = "pending",
    progress: Any = None,
) -> ImportReport:
    """Import a file into a dataset in one transaction.

    With bad rows: raises ImportFailed listing every one (file, line, reason) and writes
    nothing, unless skip_bad, which imports the good rows and reports the bad ones.
    `progress(rows_seen)` is called after each batch.
    """
    path = Path(path)
    with audited(
        engine, actor, "datasets.import", target=str(dataset_id), detail={"file": path.name}
    ) as ctx:
        require(actor, "datasets:create")
        fmt, detected, stream = parse_file(path, fmt)
        errors: list[ImportRowError] = []
        good = 0
        ids: list[int] = []

        class _Abort(Exception):
            pass

        try:
            with writing(engine) as s:
                d = resolve_dataset(s, dataset_id)
                ctx.target = d.name
                batch: list[dict[str, Any]] = []
                for item in stream:
                    if isinstance(item, ImportRowError):
                        errors.append(item)
                        continue
                    _line, sample = item
                    sample.status = status
                    good += 1
                    # After the first bad row (all-or-nothing), keep validating but stop
                    # inserting: the transaction will be rolled back anyway.
                    if errors and not skip_bad:
                        continue
                    batch.append(sample_row(d.id, sample, actor.username))
                    if len(batch) >= BATCH:
                        ids += insert_samples(s, d.id, batch)
                        batch = []
                        if progress:
                            progress(good + len(errors))
                if errors and not skip_bad:
                    raise _Abort
                if batch:
                    ids += insert_samples(s, d.id, batch)
                if not ids:
                    raise DatasetError(f"{path.name}: no sample could be imported")
                d.updated_at = utcnow()
        except _Abort:
            ctx.detail.update({"bad_rows": len(errors), "good_rows": good})
            raise ImportFailed(errors, good) from None
        if progress:
            progress(good + len(errors))
        ctx.detail.update({"imported": len(ids), "skipped": len(errors), "format": fmt})
        return ImportReport(
            dataset=ctx.target,
            file=path.name,
            format=fmt,
            detected=detected,
            imported=len(ids),
            skipped=len(errors),
            errors=errors,
            sample_ids=ids,
        )


def import_upload(
    engine: Engine,
    actor: Principal,
    dataset_id: int | str,
    filename: str,
    data: bytes,
    fmt: str | None = None,
    skip_bad: bool = False,
) -> ImportReport:
    """Import an uploaded file (the page hands over bytes); same rules as import_file."""
    import tempfile

    safe = Path(filename).name or "upload"
    file_type(Path(safe))  # refuse an unsupported type before writing anything
    with tempfile.TemporaryDirectory(prefix="clara-import-") as tmp:
        path = Path(tmp) / safe
        path.write_bytes(data)
        return import_file(engine, actor, dataset_id, path, fmt, skip_bad)

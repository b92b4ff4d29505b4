"""Importers: every format and file type, detection, override, and bad rows (pure, no DB)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.datasets.errors import DatasetError, ImportRowError, UnknownFormat
from core.datasets.importers import convert, detect_format, parse_file


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows)
        + "\n",
        encoding="utf-8",
    )
    return path


def _collect(path: Path, fmt: str | None = None):
    fmt, detected, stream = parse_file(path, fmt)
    items = list(stream)
    good = [s for s in items if not isinstance(s, ImportRowError)]
    bad = [e for e in items if isinstance(e, ImportRowError)]
    return fmt, detected, good, bad


MESSAGES = {
    "messages": [
        {"role": "system", "content": "Sei knapp."},
        {"role": "user", "content": "Wann ist das Amt offen?"},
        {"role": "assistant", "content": "Montags 8 bis 12 Uhr.", "weight": 1},
    ],
    "id": "m1",
    "topic": "amt",
}
ALPACA = {
    "instruction": "Fasse zusammen.",
    "input": "Die Satzung regelt Gebühren.",
    "output": "Gebühren.",
    "category": "summary",
}
SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Du hilfst."},
        {"from": "human", "value": "Hallo?"},
        {"from": "gpt", "value": "Guten Tag."},
    ],
    "src": "x",
}
TEXT = {"text": "Die Abfallgebührensatzung regelt die Gebühren.", "lang": "de"}


def test_messages_lossless(tmp_path):
    fmt, detected, good, bad = _collect(_jsonl(tmp_path / "m.jsonl", [MESSAGES]))
    assert (fmt, detected, bad) == ("messages", True, [])
    line, s = good[0]
    assert line == 1 and s.kind == "chat" and s.system == "Sei knapp."
    assert [m.role for m in s.messages] == ["user", "assistant"]
    assert s.metadata == {
        "extra": {"id": "m1", "topic": "amt"},
        "message_extra": {"3": {"weight": 1}},
    }
    assert s.provenance == {"source": "import", "file": "m.jsonl", "line": 1, "format": "messages"}


def test_alpaca_keeps_input_and_history():
    s = convert({**ALPACA, "history": [["Vorher?", "Ja."]], "system": "S"}, "alpaca")
    assert [m.role for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert s.messages[2].content == "Fasse zusammen.\n\nDie Satzung regelt Gebühren."
    assert s.metadata["alpaca"] == {
        "instruction": "Fasse zusammen.",
        "input": "Die Satzung regelt Gebühren.",
    }
    assert s.metadata["extra"] == {"category": "summary"}
    assert s.system == "S"


def test_sharegpt_and_text(tmp_path):
    s = convert(SHAREGPT, "sharegpt")
    assert s.system == "Du hilfst." and s.messages[0].role == "user"
    assert s.metadata == {"extra": {"src": "x"}}
    t = convert(TEXT, "text")
    assert t.kind == "text" and t.metadata == {"extra": {"lang": "de"}}


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize(
    "rec,fmt", [(MESSAGES, "messages"), (ALPACA, "alpaca"), (SHAREGPT, "sharegpt"), (TEXT, "text")]
)
def test_every_file_type_detects_every_format(tmp_path, suffix, rec, fmt):
    path = tmp_path / f"data{suffix}"
    rows = [rec, rec]
    if suffix == ".jsonl":
        _jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".csv":
        keys = list(rec)
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow(
                    {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()}
                )
    else:
        flat = [
            {
                k: json.dumps(v) if isinstance(v, list) and fmt != "messages" else v
                for k, v in r.items()
            }
            for r in rows
        ]
        pq.write_table(pa.Table.from_pylist(flat), path)
    got_fmt, _, good, bad = _collect(path)
    assert got_fmt == fmt and bad == [] and len(good) == 2
    lines = [line for line, _ in good]
    assert lines == ([2, 3] if suffix == ".csv" else [1, 2])
    assert good[0][1] == convert(rec, fmt).model_copy(update={"provenance": good[0][1].provenance})


def test_bad_rows_are_all_reported(tmp_path):
    path = _jsonl(
        tmp_path / "bad.jsonl",
        [
            MESSAGES,
            "{not json",
            {"messages": [{"role": "user", "content": "nur eine Frage"}]},
            {"messages": [{"role": "robot", "content": "x"}]},
            {"messages": "text"},
            MESSAGES,
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 3}]},
        ],
    )
    fmt, _, good, bad = _collect(path)
    assert fmt == "messages" and len(good) == 2
    assert [e.line for e in bad] == [2, 3, 4, 5, 7]
    assert all(e.file == "bad.jsonl" for e in bad)
    assert "invalid JSON" in bad[0].reason
    assert "assistant" in bad[1].reason
    assert "robot" in bad[2].reason and "supported roles" in bad[2].reason
    assert "non-empty list" in bad[3].reason
    assert "content must be a string" in bad[4].reason


def test_csv_ragged_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,lang\nEin Satz,de\nZu,viele,zellen\n", encoding="utf-8")
    _, _, good, bad = _collect(path)
    assert len(good) == 1 and bad[0].line == 3 and "more cell" in bad[0].reason


def test_unknown_format_names_formats_and_seen_fields(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"frage": "a", "antwort": "b"}])
    with pytest.raises(UnknownFormat) as err:
        parse_file(path)
    msg = str(err.value)
    assert "antwort, frage" in msg and "ShareGPT" in msg and "Alpaca" in msg
    with pytest.raises(UnknownFormat, match="supported formats are"):
        parse_file(path, "dolly")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="unsupported file type"):
        parse_file(tmp_path / "a.txt")


def test_override_format(tmp_path):
    # Rows with both a text and a messages field: detection picks messages, override text.
    rec = {"text": "Ein ganzer Text.", "messages": MESSAGES["messages"]}
    path = _jsonl(tmp_path / "both.jsonl", [rec])
    assert _collect(path)[0] == "messages"
    fmt, detected, good, _ = _collect(path, "text")
    assert (fmt, detected) == ("text", False)
    assert good[0][1].text == "Ein ganzer Text."
    assert good[0][1].metadata["extra"]["messages"] == MESSAGES["messages"]


def test_detect_majority():
    assert detect_format([TEXT, TEXT, ALPACA]) == "text"

"""Importing files into a dataset: all-or-nothing, --skip-bad, batches, both engines."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from core.datasets.errors import ImportFailed
from core.datasets.importers import BATCH, import_file
from core.datasets.models import DatasetSample
from core.datasets.service import create_dataset, get_dataset
from core.db import reading


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _count(engine) -> int:
    with reading(engine) as s:
        return s.scalar(select(func.count()).select_from(DatasetSample))


def test_bad_rows_import_nothing_until_skipped(db_engine, admin, tmp_path):
    ds = create_dataset(db_engine, admin, "imp")
    good = {"instruction": "Was regelt die Satzung?", "output": "Die Gebühren."}
    rows = [good] * (BATCH + 10) + ["{broken", {"instruction": "x"}] + [good] * 3
    path = _write(tmp_path / "alpaca.jsonl", rows)
    with pytest.raises(ImportFailed) as err:
        import_file(db_engine, admin, ds.id, path)
    assert [(e.file, e.line) for e in err.value.errors] == [
        ("alpaca.jsonl", BATCH + 11),
        ("alpaca.jsonl", BATCH + 12),
    ]
    assert "output" in err.value.errors[1].reason
    assert "nothing was imported" in str(err.value) and "--skip-bad" in str(err.value)
    assert _count(db_engine) == 0

    report = import_file(db_engine, admin, ds.id, path, skip_bad=True)
    assert (report.format, report.imported, report.skipped) == ("alpaca", BATCH + 13, 2)
    assert _count(db_engine) == BATCH + 13
    assert get_dataset(db_engine, admin, "imp").counts["pending"] == BATCH + 13
    with reading(db_engine) as s:
        last = s.get(DatasetSample, report.sample_ids[-1])
        assert last.provenance == {
            "source": "import",
            "file": "alpaca.jsonl",
            "line": BATCH + 15,
            "format": "alpaca",
        }
        assert last.source == "import" and last.kind == "chat"

"""Datasets service and frozen versions on both engines (real database, real files)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from core.artifacts import STAGING_PREFIX, verify_manifest
from core.datasets.errors import DatasetError, VersionNotFound
from core.datasets.models import DatasetSample
from core.datasets.service import (
    SampleIn,
    add_samples,
    create_dataset,
    get_dataset,
    get_or_create_dataset,
    list_datasets,
)
from core.datasets.versions import (
    PARQUET_SCHEMA,
    diff_versions,
    freeze,
    get_version,
    list_versions,
)
from core.db import writing
from core.permissions import PermissionDenied
from tests.conftest import principal


def _samples(n: int, status: str = "accepted") -> list[SampleIn]:
    out = []
    for i in range(n):
        if i % 2:
            out.append(
                SampleIn(
                    kind="text",
                    text=f"Satzung Nummer {i} regelt vieles.",
                    provenance={"source": "manual", "n": i},
                    status=status,
                )
            )
        else:
            out.append(
                SampleIn(
                    kind="chat",
                    messages=[
                        {"role": "system", "content": "Du bist hilfreich."},
                        {"role": "user", "content": f"Frage {i}?"},
                        {"role": "assistant", "content": f"Antwort {i}."},
                    ],
                    provenance={"source": "import", "file": "x.jsonl", "line": i + 1},
                    status=status,
                )
            )
    return out


def test_create_add_and_counts(db_engine, admin):
    info = create_dataset(db_engine, admin, "faq", "Fragen")
    ids = add_samples(db_engine, admin, info.id, _samples(4, "pending"))
    assert len(ids) == 4
    again = get_or_create_dataset(db_engine, admin, "faq")
    assert again.id == info.id
    fb = get_or_create_dataset(db_engine, admin, "feedback-demo", kind="feedback")
    assert fb.kind == "feedback" and fb.id != info.id
    got = get_dataset(db_engine, admin, "faq")
    assert got.counts == {"total": 4, "pending": 4, "accepted": 0, "rejected": 0}
    assert [d.name for d in list_datasets(db_engine, admin)] == ["faq", "feedback-demo"]
    with pytest.raises(DatasetError, match="already exists"):
        create_dataset(db_engine, admin, "faq")
    with pytest.raises(DatasetError, match="invalid dataset name"):
        create_dataset(db_engine, admin, "../etc")
    with pytest.raises(PermissionDenied):
        add_samples(db_engine, principal("user"), info.id, _samples(1))


def test_system_message_is_split_off():
    s = SampleIn(
        kind="chat",
        messages=[
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A"},
        ],
    )
    assert s.system == "S" and [m.role for m in s.messages] == ["user", "assistant"]
    with pytest.raises(ValueError, match="assistant"):
        SampleIn(kind="chat", messages=[{"role": "user", "content": "U"}])
    with pytest.raises(ValueError, match="non-empty"):
        SampleIn(kind="text", text="  ")


def test_freeze_is_deterministic_and_immutable(db_engine, admin, settings):
    info = create_dataset(db_engine, admin, "faq")
    add_samples(db_engine, admin, info.id, _samples(20))
    add_samples(db_engine, admin, info.id, _samples(3, "rejected"))
    v1 = freeze(db_engine, admin, info.id, eval_ratio=0.25, seed=7)
    v2 = freeze(db_engine, admin, "faq", eval_ratio=0.25, seed=7)
    assert (v1.number, v2.number) == (1, 2)
    assert v1.path == settings.data_path / "datasets" / "faq" / "v1"
    assert v1.counts == {"total": 20, "train": 15, "eval": 5, "text": 10, "chat": 10}
    for a, b in ((v1.train_path, v2.train_path), (v1.eval_path, v2.eval_path)):
        assert a.read_bytes() == b.read_bytes()
        assert v1.manifest["files"][a.name]["sha256"] == v2.manifest["files"][b.name]["sha256"]
    table = pq.read_table(v1.train_path)
    assert table.schema.equals(PARQUET_SCHEMA)
    chat = next(r for r in table.to_pylist() if r["kind"] == "chat")
    assert chat["messages"][0] == {"role": "system", "content": "Du bist hilfreich."}
    assert chat["text"] is None
    # Another seed gives another split of the same samples.
    v3 = freeze(db_engine, admin, info.id, eval_ratio=0.25, seed=8)
    assert v3.eval_path.read_bytes() != v1.eval_path.read_bytes()
    assert not list(v1.path.parent.glob(f"{STAGING_PREFIX}*"))
    assert verify_manifest(v1.path) == []
    assert {"datasketch", "langid", "pyarrow"} <= set(v1.manifest["library_versions"])
    assert v1.manifest["rows"] == {"train.parquet": 15, "eval.parquet": 5}

    assert get_version(db_engine, admin, "faq@v2").id == v2.id
    assert get_version(db_engine, admin, "faq@latest").number == 3
    assert get_version(db_engine, admin, v1.id).manifest_sha256 == v1.manifest_sha256
    assert [v.number for v in list_versions(db_engine, admin, "faq")] == [3, 2, 1]
    with pytest.raises(VersionNotFound):
        get_version(db_engine, admin, "faq@v9")

    with pytest.raises(Exception, match="immutable"), db_engine.begin() as conn:
        conn.execute(text("UPDATE dataset_versions SET counts = '{}' WHERE id = :i"), {"i": v1.id})
    # Read-only on disk (root ignores the bits, so check them rather than a failing write).
    assert all(not (f.stat().st_mode & 0o222) for f in v1.path.iterdir())


def test_freeze_refuses_empty_and_diff(db_engine, admin):
    info = create_dataset(db_engine, admin, "d")
    add_samples(db_engine, admin, info.id, _samples(2, "pending"))
    with pytest.raises(DatasetError, match="no accepted samples"):
        freeze(db_engine, admin, info.id)
    ids = add_samples(db_engine, admin, info.id, _samples(6))
    v1 = freeze(db_engine, admin, info.id)
    with writing(db_engine) as s:
        s.get(DatasetSample, ids[0]).status = "rejected"
        s.get(DatasetSample, ids[1]).text = "Geänderter Text der Satzung."
    new_ids = add_samples(db_engine, admin, info.id, _samples(1))
    v2 = freeze(db_engine, admin, info.id)
    d = diff_versions(db_engine, admin, v1.ref, v2.ref)
    assert d.added == [str(new_ids[0])]
    assert d.removed == [str(ids[0])]
    assert d.changed == [str(ids[1])]
    assert d.unchanged == 4

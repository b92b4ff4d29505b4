"""Frozen versions: accepted samples → immutable Parquet train/eval files with a manifest.

The folder is built with core.artifacts (a staging folder renamed into place when complete,
a manifest with the sha256 of every file and the library versions); the database row is
added only after the files are complete, so a crash never leaves a half-written version that
a training job could reference. The split is seeded and order-independent: samples are
ranked by sha256(seed:id) and the first round(n * eval_ratio) go to eval, so the same inputs
and seed give byte-identical files, and a sample rarely changes sides between versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from contextlib import suppress
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from core.artifacts import MANIFEST, file_sha256, library_versions, staged_dir, write_manifest
from core.audit import audited
from core.config import get_settings
from core.datasets.errors import DatasetError, DatasetNotFound, VersionNotFound
from core.datasets.models import Dataset, DatasetSample, DatasetVersion
from core.datasets.service import resolve_dataset
from core.db import reading, writing
from core.db.base import utcnow
from core.permissions import Principal, require

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),
        ("text", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
    ]
)
SPLITS = ("train", "eval")
_QUALITY_LIBRARIES = ("datasketch", "langid")


class VersionInfo(BaseModel):
    id: int
    dataset_id: int
    dataset_name: str
    number: int
    name: str | None = None
    path: Path
    train_path: Path
    eval_path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    counts: dict[str, int]
    created_by: str
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.dataset_name}@v{self.number}"


def datasets_root(data_path: Path | None = None) -> Path:
    return (data_path or get_settings().data_path) / "datasets"


def _info(v: DatasetVersion, dataset_name: str) -> VersionInfo:
    path = Path(v.path)
    return VersionInfo(
        id=v.id,
        dataset_id=v.dataset_id,
        dataset_name=dataset_name,
        number=v.number,
        name=v.name,
        path=path,
        train_path=path / "train.parquet",
        eval_path=path / "eval.parquet",
        manifest=v.manifest,
        manifest_sha256=v.manifest_sha256,
        counts=v.counts,
        created_by=v.created_by,
        created_at=v.created_at,
    )


def sample_record(row: Any) -> dict[str, Any]:
    """The Parquet record of a sample (the contract Training reads). A preference pair
    keeps its kind, its conversation ending with the chosen answer, and in `text` the
    rejected one."""
    if row.kind == "text":
        return {"id": str(row.id), "kind": "text", "text": row.text, "messages": None}
    msgs = ([{"role": "system", "content": row.system}] if row.system else []) + [
        {"role": m["role"], "content": m["content"]} for m in row.messages or []
    ]
    if row.kind == "pref":
        return {"id": str(row.id), "kind": "pref", "text": row.text, "messages": msgs}
    return {"id": str(row.id), "kind": "chat", "text": None, "messages": msgs}


def split_rank(seed: int, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()


def split_records(
    records: list[dict[str, Any]], eval_ratio: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    n_eval = round(len(records) * eval_ratio)
    if eval_ratio > 0 and n_eval == 0 and len(records) >= 2:
        n_eval = 1  # a requested eval split is never silently empty
    ranked = sorted(records, key=lambda r: split_rank(seed, r["id"]))
    eval_ids = {r["id"] for r in ranked[:n_eval]}
    train = [r for r in records if r["id"] not in eval_ids]
    evals = [r for r in records if r["id"] in eval_ids]
    return train, evals


def write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    table = pa.Table.from_pylist(records, schema=PARQUET_SCHEMA)
    pq.write_table(table, path, compression="zstd", write_statistics=True)


def _sources(s: Session, dataset_id: int) -> dict[str, Any]:
    by_source = dict(
        s.execute(
            select(DatasetSample.source, func.count())
            .where(DatasetSample.dataset_id == dataset_id, DatasetSample.status == "accepted")
            .group_by(DatasetSample.source)
        ).all()
    )
    files: set[str] = set()
    docs: set[str] = set()
    templates: set[str] = set()
    for (prov,) in s.execute(
        select(DatasetSample.provenance).where(
            DatasetSample.dataset_id == dataset_id, DatasetSample.status == "accepted"
        )
    ):
        if not prov:
            continue
        if prov.get("file"):
            files.add(str(prov["file"]))
        if prov.get("doc_id"):
            docs.add(f"{prov['doc_id']}@{prov.get('revision', '?')}")
        if prov.get("template"):
            templates.add(str(prov["template"]))
    return {
        "by_source": {k: int(v) for k, v in sorted(by_source.items())},
        "import_files": sorted(files),
        "documents": sorted(docs),
        "templates": sorted(templates),
    }


def _make_read_only(path: Path) -> None:
    """Frozen files are read-only and on disk (fsync) before the folder is renamed."""
    for p in path.iterdir():
        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _library_versions() -> dict[str, str]:
    """core.artifacts' list plus the quality libraries that shaped the samples; libraries
    that are not installed are left out."""
    versions = library_versions()
    for lib in _QUALITY_LIBRARIES:
        with suppress(metadata.PackageNotFoundError):
            versions[lib] = metadata.version(lib)
    return {k: v for k, v in versions.items() if v}


def freeze(
    engine: Engine,
    actor: Principal,
    dataset_id: int | str,
    eval_ratio: float = 0.1,
    seed: int = 42,
    name: str | None = None,
) -> VersionInfo:
    """Turn the accepted samples into the next immutable version (Parquet + manifest)."""
    if not 0 <= eval_ratio < 1:
        raise DatasetError(f"eval_ratio must be in [0, 1), got {eval_ratio}")
    with audited(engine, actor, "datasets.freeze", target=str(dataset_id)) as ctx:
        require(actor, "datasets:create")
        from core.datasets.quality.models import QualityThresholds

        final: Path | None = None
        committed = False
        try:
            # Reads, then writes: on SQLite take the write lock first (writing() does).
            with writing(engine) as s:
                d = resolve_dataset(s, dataset_id)
                ctx.target = d.name
                # Takes the write lock (row lock on Postgres, database lock on SQLite) so two
                # concurrent freezes of one dataset cannot pick the same number.
                s.execute(update(Dataset).where(Dataset.id == d.id).values(updated_at=utcnow()))
                number = (
                    s.scalar(
                        select(func.max(DatasetVersion.number)).where(
                            DatasetVersion.dataset_id == d.id
                        )
                    )
                    or 0
                ) + 1
                rows = s.execute(
                    select(
                        DatasetSample.id,
                        DatasetSample.kind,
                        DatasetSample.text,
                        DatasetSample.messages,
                        DatasetSample.system,
                    )
                    .where(DatasetSample.dataset_id == d.id, DatasetSample.status == "accepted")
                    .order_by(DatasetSample.id)
                ).all()
                if not rows:
                    raise DatasetError(
                        f"dataset {d.name!r} has no accepted samples; accept samples in the "
                        "Review page (or `clara dataset review accept`) before freezing"
                    )
                records = [sample_record(r) for r in rows]
                kinds = {"text": 0, "chat": 0}
                for r in records:
                    kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
                train, evals = split_records(records, eval_ratio, seed)
                counts = {"total": len(records), "train": len(train), "eval": len(evals), **kinds}
                created_at = utcnow()
                # A folder left by a crash between rename and commit is replaced: no row
                # references it (the number is not taken).
                final = datasets_root() / d.name / f"v{number}"
                with staged_dir(final, replace=True) as staging:
                    for split, recs in zip(SPLITS, (train, evals), strict=True):
                        write_parquet(recs, staging / f"{split}.parquet")
                    manifest = write_manifest(
                        staging,
                        "dataset-version",
                        format="clara-dataset-version/1",
                        dataset=d.name,
                        dataset_id=d.id,
                        version=number,
                        name=name,
                        created_by=actor.username,
                        created_at=created_at.isoformat(),
                        split={
                            "method": "sha256(seed:id) rank",
                            "eval_ratio": eval_ratio,
                            "seed": seed,
                        },
                        counts=counts,
                        rows={"train.parquet": len(train), "eval.parquet": len(evals)},
                        schema={f.name: str(f.type) for f in PARQUET_SCHEMA},
                        quality_thresholds=QualityThresholds.from_dict(
                            d.thresholds or {}
                        ).to_dict(),
                        thresholds_customised=d.thresholds is not None,
                        sources=_sources(s, d.id),
                        sample_ids_sha256=hashlib.sha256(
                            ",".join(r["id"] for r in records).encode()
                        ).hexdigest(),
                        library_versions=_library_versions(),
                    )
                    manifest_sha = file_sha256(staging / MANIFEST)
                    _make_read_only(staging)
                v = DatasetVersion(
                    dataset_id=d.id,
                    number=number,
                    name=name,
                    path=str(final),
                    manifest=manifest,
                    manifest_sha256=manifest_sha,
                    counts=counts,
                    created_by=actor.username,
                    created_at=created_at,
                )
                s.add(v)
                s.flush()
                ctx.detail.update({"version": number, "id": v.id, "counts": counts})
                info = _info(v, d.name)
            committed = True
        finally:
            if not committed and final is not None and final.exists():
                # Renamed into place, but the row was not committed: nothing references it.
                shutil.rmtree(final, ignore_errors=True)
        return info


def _parse_ref(ref: int | str) -> tuple[int | None, str | None, str | None]:
    if isinstance(ref, int):
        return ref, None, None
    ref = ref.strip()
    if ref.isdigit():
        return int(ref), None, None
    name, _, ver = ref.partition("@")
    return None, name, (ver or "latest")


def get_version(engine: Engine, actor: Principal, version_id_or_ref: int | str) -> VersionInfo:
    """A version by numeric id or by reference `name@v2`, `name@2`, `name@latest`, `name`."""
    require(actor, "datasets:read")
    vid, name, ver = _parse_ref(version_id_or_ref)
    with reading(engine) as s:
        if vid is not None:
            v = s.get(DatasetVersion, vid)
            if v is None:
                raise VersionNotFound(version_id_or_ref)
            return _info(v, s.get(Dataset, v.dataset_id).name)
        try:  # by name, or by the dataset's id like every dataset reference (7@v2)
            d = resolve_dataset(s, name)
        except DatasetNotFound:
            raise VersionNotFound(version_id_or_ref) from None
        q = select(DatasetVersion).where(DatasetVersion.dataset_id == d.id)
        if ver == "latest":
            q = q.order_by(DatasetVersion.number.desc()).limit(1)
        else:
            num = ver[1:] if ver.lower().startswith("v") else ver
            if not num.isdigit():
                raise VersionNotFound(version_id_or_ref)
            q = q.where(DatasetVersion.number == int(num))
        v = s.scalar(q)
        if v is None:
            raise VersionNotFound(version_id_or_ref)
        return _info(v, d.name)


def list_versions(
    engine: Engine, actor: Principal, dataset_id: int | str | None = None
) -> list[VersionInfo]:
    """Versions of one dataset (newest first), or of all datasets when none is given."""
    require(actor, "datasets:read")
    with writing(engine) as s:
        q = select(DatasetVersion, Dataset.name).join(
            Dataset, Dataset.id == DatasetVersion.dataset_id
        )
        if dataset_id is not None:
            d = resolve_dataset(s, dataset_id)
            q = q.where(DatasetVersion.dataset_id == d.id)
        q = q.order_by(Dataset.name, DatasetVersion.number.desc())
        return [_info(v, n) for v, n in s.execute(q).all()]


def read_version(info: VersionInfo, split: str = "all") -> pa.Table:
    """The version's records (verified against the manifest's sha256) as an Arrow table."""
    parts = SPLITS if split == "all" else (split,)
    tables = []
    for sp in parts:
        p = info.path / f"{sp}.parquet"
        expected = info.manifest["files"][p.name]["sha256"]
        if file_sha256(p) != expected:
            raise DatasetError(
                f"{p} does not match its manifest (sha256 differs): the frozen files were "
                "changed on disk; restore them or freeze a new version"
            )
        tables.append(pq.read_table(p, schema=PARQUET_SCHEMA))
    return pa.concat_tables(tables)


class VersionDiff(BaseModel):
    old: str
    new: str
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: int


def diff_versions(
    engine: Engine, actor: Principal, old_ref: int | str, new_ref: int | str
) -> VersionDiff:
    """Samples added, removed and changed (same id, different content) between two versions."""
    old = get_version(engine, actor, old_ref)
    new = get_version(engine, actor, new_ref)

    def index(info: VersionInfo) -> dict[str, str]:
        out = {}
        for rec in read_version(info).to_pylist():
            blob = json.dumps([rec["kind"], rec["text"], rec["messages"]], ensure_ascii=False)
            out[rec["id"]] = hashlib.sha256(blob.encode()).hexdigest()
        return out

    a, b = index(old), index(new)
    key = lambda x: (len(x), x)  # noqa: E731 - numeric-looking ids sort naturally
    added = sorted(set(b) - set(a), key=key)
    removed = sorted(set(a) - set(b), key=key)
    common = set(a) & set(b)
    changed = sorted((i for i in common if a[i] != b[i]), key=key)
    return VersionDiff(
        old=old.ref,
        new=new.ref,
        added=added,
        removed=removed,
        changed=changed,
        unchanged=len(common) - len(changed),
    )

"""The adapter registry: PEFT adapters under data_dir/adapters/<name>/ with a manifest
(core.artifacts: staged folder renamed into place, manifest.json with the sha256 of every
file and the library versions), and their rows. Files are complete before the row exists;
a row never points at half an adapter.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from core.artifacts import MANIFEST as MANIFEST  # re-exported: the adapter's manifest file
from core.artifacts import library_versions as current_library_versions
from core.artifacts import staged_dir, write_manifest
from core.audit import audited
from core.config import Settings, get_settings
from core.db import reading, writing
from core.db.base import utcnow
from core.errors import ClaraError, Conflict, NotFound
from core.permissions import Principal, require
from core.training.models import Adapter, TrainingJob
from core.training.spec import NAME_RE

ADAPTER_FORMAT = "clara-adapter/1"


class AdapterNotFound(NotFound):
    def __init__(self, ref: int | str) -> None:
        super().__init__(f"no adapter {ref!r}; `clara adapters list` shows the registered ones")


class AdapterError(ClaraError, ValueError):
    pass


class AdapterInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    path: Path
    base_model: str
    base_model_fingerprint: str
    method: str
    dataset_version_id: int | None
    dataset_manifest_sha256: str | None
    job_id: int | None
    parent_adapter_id: int | None = None
    metrics: dict[str, Any]
    library_versions: dict[str, Any]
    spec: dict[str, Any] = {}
    created_by: str
    created_at: datetime


def adapters_root(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_path / "adapters"


def check_adapter_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise AdapterError(
            f"adapter name {name!r}: use 1-64 characters of a-z, 0-9, '_' or '-' "
            "(it is also the PEFT adapter name)"
        )
    return name


def _lookup(s, ref: int | str) -> Adapter:
    row = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        row = s.get(Adapter, int(ref))
    if row is None and isinstance(ref, str):
        row = s.scalar(select(Adapter).where(Adapter.name == ref))
    if row is None:
        raise AdapterNotFound(ref)
    return row


def list_adapters(engine: Engine, actor: Principal) -> list[AdapterInfo]:
    require(actor, "adapters:read")
    with reading(engine) as s:
        return [
            AdapterInfo.model_validate(a)
            for a in s.scalars(select(Adapter).order_by(Adapter.id.desc()))
        ]


def get_adapter(engine: Engine, actor: Principal, name_or_id: int | str) -> AdapterInfo:
    require(actor, "adapters:read")
    with reading(engine) as s:
        return AdapterInfo.model_validate(_lookup(s, name_or_id))


def register_adapter(
    engine: Engine,
    actor: Principal,
    *,
    name: str,
    files_dir: Path,
    base_model: str,
    base_model_fingerprint: str,
    method: str,
    dataset_version_id: int | None = None,
    dataset_manifest_sha256: str | None = None,
    job_id: int | None = None,
    job_token: int | None = None,
    parent_adapter_id: int | None = None,
    metrics: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    library_versions: dict[str, Any] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> AdapterInfo:
    """Move a finished PEFT adapter folder into the registry and record it.

    `files_dir` must hold adapter_config.json and the weights. With `job_id`/`job_token` the
    row is only written while that job still holds its lease (fencing): a worker that lost the
    job cannot register a second copy.
    """
    with audited(engine, actor, "adapters.register", target=name) as ctx:
        require(actor, "training:create")
        check_adapter_name(name)
        files_dir = Path(files_dir)
        if not (files_dir / "adapter_config.json").exists():
            raise AdapterError(f"{files_dir} holds no PEFT adapter (adapter_config.json missing)")
        root = adapters_root(settings)
        root.mkdir(parents=True, exist_ok=True)
        final = root / name
        with writing(engine) as s:
            if s.scalar(select(Adapter.id).where(Adapter.name == name)) is not None:
                raise AdapterError(f"an adapter named {name!r} already exists")
        versions = library_versions or current_library_versions()
        # An existing folder without a row was left by a crash after the rename but before
        # the row: no row points at it, so it is replaced.
        # What the manifest and the registry row both record: the adapter's lineage.
        lineage = dict(
            name=name,
            base_model=base_model,
            base_model_fingerprint=base_model_fingerprint,
            method=method,
            dataset_version_id=dataset_version_id,
            dataset_manifest_sha256=dataset_manifest_sha256,
            job_id=job_id,
            parent_adapter_id=parent_adapter_id,
            metrics=metrics or {},
            spec=spec or {},
            library_versions=versions,
            created_by=actor.username,
        )
        with staged_dir(final, replace=True) as staged:
            shutil.copytree(files_dir, staged, dirs_exist_ok=True)
            write_manifest(
                staged,
                "adapter",
                format=ADAPTER_FORMAT,
                created_at=utcnow().isoformat(),
                **lineage,
                **(extra_manifest or {}),
            )
        try:
            with writing(engine) as s:
                if job_id is not None and job_token is not None:
                    job = s.get(TrainingJob, job_id, with_for_update=True)
                    if job is None or job.fencing_token != job_token or job.state != "running":
                        raise AdapterError(
                            f"job {job_id} no longer holds its lease; not registering its adapter"
                        )
                row = Adapter(path=str(final), **lineage)
                s.add(row)
                s.flush()
                if job_id is not None:
                    job = s.get(TrainingJob, job_id)
                    if job is not None:
                        job.adapter_id = row.id
                info = AdapterInfo.model_validate(row)
        except IntegrityError:
            shutil.rmtree(final, ignore_errors=True)
            raise AdapterError(f"an adapter named {name!r} already exists") from None
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        ctx.detail.update({"id": info.id, "job_id": job_id})
        return info


def delete_adapter(engine: Engine, actor: Principal, name_or_id: int | str) -> AdapterInfo:
    """Remove the row, then the files (the row goes first: no row ever points at nothing)."""
    with audited(engine, actor, "adapters.delete", target=str(name_or_id)) as ctx:
        require(actor, "adapters:activate")
        from core.learning.lines import lines_serving

        with writing(engine) as s:
            row = _lookup(s, name_or_id)
            info = AdapterInfo.model_validate(row)
            ctx.target = info.name
            serving = lines_serving(engine, row.id)
            if serving:
                raise Conflict(
                    f"adapter {info.name!r} is the active adapter of line(s) "
                    f"{', '.join(serving)}: activate another one there first "
                    "(`clara learn activate LINE ADAPTER`)"
                )
            s.delete(row)
        path = Path(info.path)
        if path.exists():
            trash = path.with_name(f".deleted-{path.name}-{uuid.uuid4().hex[:8]}")
            path.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        return info


def merged_root(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_path / "merged"


def merge_adapter(
    engine: Engine,
    actor: Principal,
    name: str,
    out_dir: str | Path | None = None,
    *,
    settings: Settings | None = None,
) -> Path:
    """Export base + adapter as full safetensors weights with the tokenizer (for other servers).

    Into `out_dir` (new or empty), or by default data_dir/merged/<adapter>, replacing an
    earlier merge there: callers who may not name server paths (the HTTP API) use that."""
    from core.training.base_model import (
        base_model_fingerprint,
        load_base_model,
        resolve_base_model,
    )

    with audited(engine, actor, "adapters.merge", target=name) as ctx:
        require(actor, "adapters:activate")
        info = get_adapter(engine, actor, name)
        ctx.target = info.name
        if out_dir is None:
            out = merged_root(settings) / info.name
        else:
            out = Path(out_dir).expanduser().resolve()
            if out.exists() and any(out.iterdir()):
                raise AdapterError(f"{out} exists and is not empty; choose a new folder")
        base = resolve_base_model(info.base_model, settings)
        if base_model_fingerprint(base) != info.base_model_fingerprint:
            raise AdapterError(
                f"the base model at {base} is not the one adapter {info.name!r} "
                "was trained on (fingerprint differs)"
            )
        from peft import PeftModel

        model, tokenizer = load_base_model(base, device="cpu")
        merged = PeftModel.from_pretrained(model, str(info.path)).merge_and_unload()
        # Staged next to its place and renamed into it once complete (an empty `out_dir`
        # or an earlier default merge is replaced only then).
        with staged_dir(out, replace=True) as staged:
            merged.save_pretrained(staged, safe_serialization=True)
            tokenizer.save_pretrained(staged)
            (staged / "clara-merge.json").write_text(
                json.dumps(
                    {
                        "adapter": info.name,
                        "adapter_id": info.id,
                        "base_model": info.base_model,
                        "base_model_fingerprint": info.base_model_fingerprint,
                        "dataset_version_id": info.dataset_version_id,
                        "job_id": info.job_id,
                    },
                    indent=2,
                )
            )
        ctx.detail["out_dir"] = str(out)
        return out


def lineage(engine: Engine, actor: Principal, name_or_id: int | str) -> dict[str, Any]:
    """dataset version → job → adapter, following `continue` parents back to the first."""
    require(actor, "adapters:read")
    chain: list[dict[str, Any]] = []
    seen: set[int] = set()
    ref: int | str | None = name_or_id
    with reading(engine) as s:
        while ref is not None:
            try:
                row = _lookup(s, ref)
            except AdapterNotFound:
                if not chain:
                    raise
                # The parent was deleted since: the chain ends with what is known of it.
                chain.append(
                    {
                        "adapter": {"id": ref, "name": "(deleted)"},
                        "job": None,
                        "dataset_version": {},
                    }
                )
                break
            if row.id in seen:
                break
            seen.add(row.id)
            job = s.get(TrainingJob, row.job_id) if row.job_id else None
            version = _version_summary(engine, actor, row.dataset_version_id)
            chain.append(
                {
                    "adapter": {
                        "id": row.id,
                        "name": row.name,
                        "method": row.method,
                        "created_by": row.created_by,
                        "created_at": row.created_at.isoformat(),
                        "metrics": row.metrics,
                        "base_model": row.base_model,
                        "base_model_fingerprint": row.base_model_fingerprint,
                    },
                    "job": None
                    if job is None
                    else {
                        "id": job.id,
                        "state": job.state,
                        "owner": job.owner,
                        "attempts": job.attempts,
                        "started_at": _iso(job.started_at),
                        "finished_at": _iso(job.finished_at),
                    },
                    "dataset_version": version
                    or {
                        "id": row.dataset_version_id,
                        "manifest_sha256": row.dataset_manifest_sha256,
                    },
                }
            )
            ref = row.parent_adapter_id
    return {"adapter": chain[0]["adapter"]["name"], "chain": chain}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _version_summary(engine: Engine, actor: Principal, version_id: int | None) -> dict | None:
    if version_id is None:
        return None
    try:
        from core.datasets.versions import get_version

        v = get_version(engine, actor, version_id)
    except Exception:  # deleted version or no datasets permission: show only the id
        return None
    return {
        "id": v.id,
        "ref": f"{v.dataset_name}@v{v.number}",
        "dataset": v.dataset_name,
        "number": v.number,
        "manifest_sha256": v.manifest_sha256,
        "counts": v.counts,
    }

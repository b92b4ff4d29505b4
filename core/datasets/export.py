"""Export a frozen version as JSONL, Parquet or CSV in the messages, alpaca, sharegpt or text
format, with a LLaMA-Factory `dataset_info.json` entry and an Axolotl dataset snippet next to
the files (so either tool can train on the export as it is).

Chat formats hold conversations only: a version with text samples is refused for them (with
the count) rather than silently dropping or inventing turns; the `text` format takes both
(conversations rendered as role-labelled turns). CSV cells hold nested fields as JSON strings.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel
from sqlalchemy import Engine, select

from core.artifacts import file_sha256, read_manifest, staged_dir, write_manifest
from core.audit import audited
from core.config import get_settings
from core.datasets.errors import DatasetError, ExportError, ExportNotFound
from core.datasets.models import DatasetSample
from core.datasets.versions import SPLITS, VersionInfo, get_version, read_version
from core.db import reading
from core.permissions import Principal, require

EXPORT_FORMATS = ("messages", "alpaca", "sharegpt", "text", "preference")
FILE_TYPES = ("jsonl", "parquet", "csv")
_SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
_NESTED = ("messages", "conversations", "history")


class ExportInfo(BaseModel):
    version: str
    version_id: int
    format: str
    file_type: str
    path: Path
    files: dict[str, dict[str, Any]]
    dataset_info_path: Path
    axolotl_path: Path

    def file(self, split: str) -> Path | None:
        name = f"{split}.{self.file_type}"
        return self.path / name if name in self.files else None


def _alpaca_meta(engine: Engine, ids: list[str]) -> dict[str, dict[str, str]]:
    """Alpaca instruction/input pairs kept at import time, to restore the split on export."""
    out: dict[str, dict[str, str]] = {}
    with reading(engine) as s:
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500] if i.isdigit()]
            for sid, meta in s.execute(
                select(DatasetSample.id, DatasetSample.meta).where(DatasetSample.id.in_(chunk))
            ):
                if meta and isinstance(meta.get("alpaca"), dict):
                    out[str(sid)] = meta["alpaca"]
    return out


def _render_text(rec: dict[str, Any]) -> str:
    if rec["kind"] == "text":
        return rec["text"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in rec["messages"])


def convert_record(
    rec: dict[str, Any], fmt: str, alpaca: dict[str, str] | None = None
) -> dict[str, Any]:
    """One version record → one row of the export format."""
    if fmt == "text":
        return {"text": _render_text(rec)}
    if fmt == "preference":  # TRL's conversational preference format (DPOTrainer)
        if rec["kind"] != "pref":
            raise ExportError(
                f"sample {rec['id']} is no preference pair; format 'preference' holds pairs "
                "only (chosen and rejected answer)"
            )
        msgs = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
        return {
            "prompt": msgs[:-1],
            "chosen": msgs[-1:],
            "rejected": [{"role": "assistant", "content": rec["text"]}],
        }
    if rec["kind"] == "text":
        raise ExportError(
            f"sample {rec['id']} is plain text; format {fmt!r} holds conversations only"
        )
    msgs = rec["messages"]  # a preference pair: its conversation with the chosen answer
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
    turns = msgs[1:] if system is not None else msgs
    if fmt == "messages":
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}
    if fmt == "sharegpt":
        return {
            "conversations": [
                {"from": _SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in msgs
            ]
        }
    # alpaca: the last user/assistant pair is the instruction; earlier pairs the history.
    roles = [m["role"] for m in turns]
    if len(turns) % 2 or roles != ["user", "assistant"] * (len(turns) // 2):
        raise ExportError(
            f"sample {rec['id']} does not alternate user/assistant turns ({', '.join(roles)}); "
            "Alpaca cannot hold it: export as messages or sharegpt"
        )
    user, output = turns[-2]["content"], turns[-1]["content"]
    instruction, inp = user, ""
    if alpaca and f"{alpaca.get('instruction')}\n\n{alpaca.get('input')}" == user:
        instruction, inp = alpaca["instruction"], alpaca["input"]
    row: dict[str, Any] = {
        "instruction": instruction,
        "input": inp,
        "output": output,
        "system": system or "",
        "history": [
            [turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)
        ],
    }
    return row


def _write(rows: list[dict[str, Any]], path: Path, file_type: str) -> None:
    if file_type == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    elif file_type == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")
    else:
        cols = list(rows[0]) if rows else []
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow(
                    {
                        k: json.dumps(v, ensure_ascii=False) if k in _NESTED else v
                        for k, v in r.items()
                    }
                )


def llama_factory_entry(fmt: str, file_name: str) -> dict[str, Any]:
    if fmt == "text":
        return {"file_name": file_name, "columns": {"prompt": "text"}}
    if fmt == "alpaca":
        return {
            "file_name": file_name,
            "formatting": "alpaca",
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "response": "output",
                "system": "system",
                "history": "history",
            },
        }
    if fmt == "preference":  # a ranking dataset: prompt turns, chosen and rejected answer
        return {
            "file_name": file_name,
            "ranking": True,
            "formatting": "sharegpt",
            "columns": {"messages": "prompt", "chosen": "chosen", "rejected": "rejected"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    if fmt == "sharegpt":
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt",
                "system_tag": "system",
            },
        }
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }


def axolotl_entry(fmt: str, path: Path, file_type: str) -> dict[str, Any]:
    ds_type = {"jsonl": "json", "parquet": "parquet", "csv": "csv"}[file_type]
    base: dict[str, Any] = {"path": str(path), "ds_type": ds_type, "split": "train"}
    if fmt == "text":
        return {**base, "type": "completion", "field": "text"}
    if fmt == "alpaca":
        return {**base, "type": "alpaca"}
    if fmt == "preference":  # for `rl: dpo`
        return {
            **base,
            "type": "chat_template.default",
            "field_messages": "prompt",
            "field_chosen": "chosen",
            "field_rejected": "rejected",
            "message_property_mappings": {"role": "role", "content": "content"},
        }
    if fmt == "sharegpt":
        return {
            **base,
            "type": "chat_template",
            "field_messages": "conversations",
            "message_property_mappings": {"role": "from", "content": "value"},
            "roles": {"user": ["human"], "assistant": ["gpt"], "system": ["system"]},
        }
    return {
        **base,
        "type": "chat_template",
        "field_messages": "messages",
        "message_property_mappings": {"role": "role", "content": "content"},
    }


def exports_root() -> Path:
    return get_settings().data_path / "exports"


def export_folder(v: VersionInfo, fmt: str, file_type: str) -> Path:
    """Where `export_version` writes a version's export by default."""
    return exports_root() / f"{v.dataset_name}-v{v.number}" / f"{fmt}-{file_type}"


def export_file(
    engine: Engine,
    actor: Principal,
    version_ref: int | str,
    fmt: str,
    file_type: str,
    name: str,
) -> Path:
    """One file of a version's export made earlier by `export_version` (in its default
    place): a split (`train.jsonl`), `dataset_info.json` or `axolotl.yaml`, checked against
    the export's manifest, so a download is exactly what the export wrote."""
    require(actor, "datasets:export")
    if fmt not in EXPORT_FORMATS or file_type not in FILE_TYPES:
        raise ExportNotFound(
            f"no export format {fmt!r} / file type {file_type!r}; formats are "
            f"{', '.join(EXPORT_FORMATS)}, file types {', '.join(FILE_TYPES)}"
        )
    v = get_version(engine, actor, version_ref)
    folder = export_folder(v, fmt, file_type)
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("version_id") != v.id:
        raise ExportNotFound(f"{v.ref} has not been exported as {fmt}/{file_type}; export it first")
    listed = manifest.get("files") or {}
    if name not in listed:
        raise ExportNotFound(
            f"the export of {v.ref} as {fmt}/{file_type} has no file {name!r}; its files are "
            + ", ".join(sorted(listed))
        )
    path = folder / name
    if not path.is_file() or file_sha256(path) != listed[name]["sha256"]:
        raise DatasetError(
            f"{path} does not match its export manifest (changed or removed on disk); "
            "export the version again"
        )
    return path


def export_version(
    engine: Engine,
    actor: Principal,
    version_ref: int | str,
    fmt: str = "messages",
    file_type: str = "jsonl",
    out_dir: Path | None = None,
) -> ExportInfo:
    """Write the export into `out_dir` (default data_dir/exports/<dataset>-v<N>/<fmt>-<type>):
    a core.artifacts staged folder with a manifest (sha256 of every file, the rows of each
    split), renamed into place, replacing an earlier identical export."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if file_type not in FILE_TYPES:
        raise ExportError(f"unknown file type {file_type!r}; use one of {', '.join(FILE_TYPES)}")
    with audited(
        engine,
        actor,
        "datasets.export",
        target=str(version_ref),
        detail={"format": fmt, "file_type": file_type},
    ) as ctx:
        require(actor, "datasets:export")
        v: VersionInfo = get_version(engine, actor, version_ref)
        ctx.target = v.ref
        if fmt != "text" and v.counts.get("text", 0):
            raise ExportError(
                f"{v.ref} has {v.counts['text']} plain-text sample(s); format {fmt!r} holds "
                "conversations only. Export it as 'text', or freeze a version without them"
            )
        final = Path(out_dir) if out_dir else export_folder(v, fmt, file_type)
        rows: dict[str, int] = {}
        info_entries: dict[str, Any] = {}
        axolotl: dict[str, Any] = {}
        key = f"{v.dataset_name}_v{v.number}".replace("-", "_").replace(".", "_")
        # Replaces an earlier export in the same place only once the new one is complete.
        with staged_dir(final, replace=True) as staging:
            for split in SPLITS:
                recs = read_version(v, split).to_pylist()
                if not recs:
                    continue
                meta = _alpaca_meta(engine, [r["id"] for r in recs]) if fmt == "alpaca" else {}
                name = f"{split}.{file_type}"
                converted = [convert_record(r, fmt, meta.get(r["id"])) for r in recs]
                _write(converted, staging / name, file_type)
                rows[name] = len(converted)
                info_entries[f"{key}_{split}"] = llama_factory_entry(fmt, name)
                entry = axolotl_entry(fmt, final / name, file_type)
                axolotl.setdefault("datasets" if split == "train" else "test_datasets", []).append(
                    entry
                )
            (staging / "dataset_info.json").write_text(
                json.dumps(info_entries, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
            (staging / "axolotl.yaml").write_text(
                f"# Axolotl dataset config for {v.ref} ({fmt}, {file_type}); merge into your "
                "training YAML.\n" + yaml.safe_dump(axolotl, sort_keys=False, allow_unicode=True),
                encoding="utf-8",
            )
            manifest = write_manifest(
                staging,
                "dataset-export",
                version=v.ref,
                version_id=v.id,
                version_manifest_sha256=v.manifest_sha256,
                format=fmt,
                file_type=file_type,
                rows=rows,
            )
        files = {
            name: {"rows": n, "sha256": manifest["files"][name]["sha256"]}
            for name, n in rows.items()
        }
        ctx.detail.update({"path": str(final), "files": files})
        return ExportInfo(
            version=v.ref,
            version_id=v.id,
            format=fmt,
            file_type=file_type,
            path=final,
            files=files,
            dataset_info_path=final / "dataset_info.json",
            axolotl_path=final / "axolotl.yaml",
        )

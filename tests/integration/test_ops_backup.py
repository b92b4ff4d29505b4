"""Backup and restore (issue 14, item 3): `clara admin backup` / `clara admin restore`.

A small workbench (documents with embeddings, a frozen dataset version and its export, an
adapter with lineage on the demo model, a second user) is backed up, its data dir moved away,
and restored into a fresh data dir and a fresh database, on both engines. The restored one is
checked by doing things: the same keyword and vector hits, the same version samples, review,
the adapter listed with its lineage and answering the same as before, the same users signing
in. A backup with one altered byte, a missing file, an extra file or a truncated manifest is
refused before anything is written. Real database, Chroma, models and processes.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.audit import read_audit_log
from core.config import get_settings
from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.vectors import reset_vector_stores
from core.db import current_revision, dispose_engines, get_engine, head_revision, upgrade
from core.login import authenticate
from core.ops.backup import (
    BackupInvalid,
    TargetNotEmpty,
    create_backup,
    restore_backup,
    verify_backup,
)
from core.users import create_user, ensure_admin
from tests.cli_run import clara
from tests.conftest import database_url, link_demo_model

pytestmark = pytest.mark.slow

DOCS = {
    "hund.md": "# Hundesteuer\n\nDie Hundesteuer beträgt 90 Euro im Jahr für den ersten Hund.",
    "baum.md": "# Baumschutz\n\nWer einen Baum fällen will, braucht eine Genehmigung der Stadt.",
    "park.md": "# Parken\n\nAnwohner erhalten einen Parkausweis für ihre Straße im Bürgerbüro.",
    "müll.md": "# Abfall\n\nDie Biotonne wird jede Woche am Dienstag geleert, Papier monatlich.",
}
QUERIES = ("Hundesteuer Euro", "Baum fällen Genehmigung", "Wann wird der Müll abgeholt?")


@pytest.fixture(autouse=True)
def _tiny_demo_model(monkeypatch):
    """The size `shared_demo_model` is built in (else the demo model would be rebuilt)."""
    monkeypatch.setenv("CLARA_DEMO_MODEL_SIZE", "tiny")
    get_settings.cache_clear()


def _switch_to(monkeypatch, data_dir: Path, url: str):
    """Settings of another workbench, as the environment says (core reads them there)."""
    dispose_engines()
    reset_vector_stores()
    monkeypatch.setenv("CLARA_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CLARA_DATABASE_URL", url)
    get_settings.cache_clear()
    return get_settings()


def _build(engine, admin, settings, tmp_path, demo_model: Path) -> None:
    from core.datasets.export import export_version
    from core.datasets.service import SampleIn, add_samples, create_dataset
    from core.datasets.versions import freeze

    link_demo_model(demo_model, settings.data_path)
    settings.auth_secret_value()
    src = tmp_path / "docs"
    src.mkdir()
    for name, text in DOCS.items():
        (src / name).write_text(text, encoding="utf-8")
    report = ingest_paths(
        engine, admin, [src], IngestOptions(chunk_tokens=64, chunk_overlap=8), settings
    )
    assert report.summary()["added"] == len(DOCS) and report.pending_embeddings == 0
    create_user(engine, admin, "ana", "ana-pass-1", "analyst")
    ds = create_dataset(engine, admin, "faq")
    samples = [
        SampleIn(
            kind="chat",
            status="accepted" if k < 6 else "pending",
            messages=[
                {"role": "user", "content": f"Was kostet der {k}. Hund?"},
                {"role": "assistant", "content": f"{90 + k} Euro im Jahr."},
            ],
        )
        for k in range(8)
    ]
    add_samples(engine, admin, ds.id, samples)
    version = freeze(engine, admin, ds.id, eval_ratio=0.25)
    export_version(engine, admin, version.id)
    _register_adapter(engine, admin, settings, tmp_path, version)


def _register_adapter(engine, admin, settings, tmp_path, version) -> None:
    """A LoRA adapter on the demo model with random (not zero) weights: it changes answers,
    so an answer shows that these weights were loaded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.training.adapters import register_adapter
    from core.training.base_model import base_model_fingerprint

    base = settings.data_path / "models" / "demo-llama"
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_" in name:
                weight.normal_(0.0, 1.0)
    files = tmp_path / "adapter-files"
    peft_model.save_pretrained(files)
    register_adapter(
        engine,
        admin,
        name="hund",
        files_dir=files,
        base_model=str(base),
        base_model_fingerprint=base_model_fingerprint(str(base)),
        method="lora",
        dataset_version_id=version.id,
        dataset_manifest_sha256=version.manifest_sha256,
        settings=settings,
    )


def _state(engine, admin, settings) -> dict:
    """What the workbench answers: search hits, version samples, adapters, an answer."""
    from core.corpus.search import search
    from core.datasets.versions import get_version, read_version
    from core.serving.chat import ChatService, engine_from_settings
    from core.serving.engine import GenerationSettings
    from core.training.adapters import lineage, list_adapters

    hits = {
        (mode, q): [
            (h.doc_id, round(h.score, 5)) for h in search(engine, admin, q, settings, mode=mode)
        ]
        for mode in ("keyword", "vector")
        for q in QUERIES
    }
    version = get_version(engine, admin, "faq@v1")
    chain = lineage(engine, admin, "hund")["chain"]
    service = ChatService(engine, engine_from_settings(settings))
    greedy = GenerationSettings(temperature=0.0, max_new_tokens=8)
    ask = [{"role": "user", "content": "Was kostet die Hundesteuer?"}]
    return {
        "hits": hits,
        "samples": read_version(version).to_pylist(),
        "counts": version.counts,
        "adapters": [a.name for a in list_adapters(engine, admin)],
        "lineage": [(c["adapter"]["name"], c["dataset_version"].get("id")) for c in chain],
        "answer": service.reply(admin, ask, adapter="hund", settings=greedy).text(),
        "base_answer": service.reply(admin, ask, settings=greedy).text(),
    }


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_workbench_comes_back_whole_in_a_fresh_data_dir_and_database(
    db_engine, admin, settings, tmp_path, shared_demo_model, monkeypatch
):
    _build(db_engine, admin, settings, tmp_path, shared_demo_model)
    before = _state(db_engine, admin, settings)
    assert before["answer"] != before["base_answer"]  # the adapter's weights matter
    kind = "sqlite" if settings.effective_database_url.startswith("sqlite") else "postgres"

    report = create_backup(db_engine, admin, settings, tmp_path / "backup")
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["engine"] == ("sqlite" if kind == "sqlite" else "postgresql")
    assert manifest["schema_revision"] == head_revision() == report.schema_revision
    assert manifest["vectors"]["count"] == report.vectors > 0
    files = manifest["files"]
    assert "data/auth_secret" in files and "data/adapters/hund/adapter_config.json" in files
    assert "data/datasets/faq/v1/manifest.json" in files  # nested manifests are files too
    assert any(f.startswith("data/exports/faq-v1/") for f in files)
    assert "data/models/demo-llama/config.json" in files  # the linked model's content
    assert not any(f.startswith(("data/chroma/", "data/logs/", "data/clara.db")) for f in files)
    assert {"what": "logs", "why": "log files: not needed to restore (--logs includes them)"} in (
        manifest["excluded"]
    )
    for path in (tmp_path / "backup").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    rows = read_audit_log(db_engine, admin, action_prefix="system.backup").rows
    assert rows.iloc[0].outcome == "ok" and rows.iloc[0].detail["files"] == len(files)

    # The original goes away: nothing of the restored workbench may point back at it.
    (settings.data_path).rename(tmp_path / "original-gone")
    fresh = tmp_path / "restored"
    with database_url(kind, tmp_path / "fresh-db") as url:
        target = _switch_to(monkeypatch, fresh / "data", url)
        backup = verify_backup(tmp_path / "backup")
        actor = backup.principal("admin")
        restored = restore_backup(actor, target, backup)
        assert restored.schema_revision == head_revision() and restored.paths_rebased > 0
        engine = get_engine(target)
        after = _state(engine, actor, target)
        assert after == before

        from core.datasets.review import decide, list_samples
        from core.training.adapters import get_adapter

        assert get_adapter(engine, actor, "hund").path.is_relative_to(target.data_path)
        pending = list_samples(engine, actor, "faq", limit=100).items
        sample = next(s for s in pending if s.status == "pending")
        assert decide(engine, actor, sample.id, "accepted", sample.row_version).status == "accepted"
        assert authenticate(engine, "ana", "ana-pass-1").role == "analyst"
        assert authenticate(engine, "admin", "adminpass1").role == "admin"
        assert (
            target.auth_secret_value()
            == (tmp_path / "original-gone" / "auth_secret").read_text().strip()
        )
        assert stat.S_IMODE((target.data_path / "auth_secret").stat().st_mode) == 0o600
        audit = read_audit_log(engine, actor, action_prefix="system.restore").rows
        assert audit.iloc[0].outcome == "ok" and audit.iloc[0].actor == "admin"
        dispose_engines()


def _small_backup(engine, admin, settings, dest: Path) -> Path:
    """A backup of a workbench with a user, the secret and a file or two (no models)."""
    settings.auth_secret_value()
    create_user(engine, admin, "ana", "ana-pass-1", "analyst")
    notes = settings.data_path / "exports" / "notes"
    notes.mkdir(parents=True)
    (notes / "a.txt").write_text("erste Notiz\n")
    (notes / "b.txt").write_text("zweite Notiz\n")
    create_backup(engine, admin, settings, dest)
    return dest


def _engine_kind(settings) -> str:
    return "sqlite" if settings.effective_database_url.startswith("sqlite") else "postgres"


def _target_is_empty(target) -> bool:
    from core.ops.backup_database import postgres_tables_present

    data = target.data_path
    if data.exists() and any(p.is_file() for p in data.rglob("*")):
        return False
    if _engine_kind(target) == "sqlite":
        return not Path(target.effective_database_url.removeprefix("sqlite:///")).exists()
    return postgres_tables_present(get_engine(target)) == []


def _damage(backup: Path, how: str) -> str:
    """Damage a copy of a backup one way; returns the name restore must report."""
    if how == "altered byte":
        path = backup / "data" / "exports" / "notes" / "a.txt"
        data = bytearray(path.read_bytes())
        data[0] ^= 1
        path.write_bytes(bytes(data))
        return "data/exports/notes/a.txt: sha256 differs"
    if how == "missing file":
        (backup / "data" / "exports" / "notes" / "b.txt").unlink()
        return "data/exports/notes/b.txt: missing"
    if how == "extra file":
        (backup / "data" / "exports" / "notes" / "c.txt").write_text("?")
        return "data/exports/notes/c.txt: not in the manifest"
    manifest = backup / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-40])
    return "manifest.json: sha256 differs from manifest.json.sha256"


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_damaged_backup_is_refused_before_anything_is_written(
    db_engine, admin, settings, tmp_path, monkeypatch
):
    good = _small_backup(db_engine, admin, settings, tmp_path / "backup")
    with database_url(_engine_kind(settings), tmp_path / "fresh-db") as url:
        target = _switch_to(monkeypatch, tmp_path / "restored", url)
        for how in ("altered byte", "missing file", "extra file", "truncated manifest"):
            copy = tmp_path / how.replace(" ", "-")
            shutil.copytree(good, copy)
            expected = _damage(copy, how)
            with pytest.raises(BackupInvalid, match=expected):
                verify_backup(copy)
            assert _target_is_empty(target), how
        # The same through the command line, which verifies before anything else.
        r = clara(target, "admin", "restore", str(tmp_path / "extra-file"))
        assert r.returncode == 1 and "c.txt: not in the manifest" in r.stderr, r.stderr
        assert _target_is_empty(target)
        dispose_engines()


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_non_empty_target_is_refused_and_force_moves_it_aside(
    db_engine, admin, settings, tmp_path, monkeypatch
):
    from core.system import prepare

    backup = verify_backup(_small_backup(db_engine, admin, settings, tmp_path / "backup"))
    kind = _engine_kind(settings)
    with database_url(kind, tmp_path / "fresh-db") as url:
        target = _switch_to(monkeypatch, tmp_path / "restored", url)
        monkeypatch.setenv("CLARA_ADMIN_PASSWORD", "other-admin-1")
        get_settings.cache_clear()
        engine = prepare(get_settings()).engine  # a workbench runs there already
        (target.data_path / "mine.txt").write_text("keep me")
        actor = backup.principal("admin")

        with pytest.raises(TargetNotEmpty, match="not empty|holds tables"):
            restore_backup(actor, target, backup)
        refused = read_audit_log(engine, admin, action_prefix="system.restore").rows
        assert refused.iloc[0].outcome == "failed"
        assert authenticate(engine, "admin", "other-admin-1")  # untouched

        dispose_engines()  # the workbench there is stopped for the restore
        report = restore_backup(actor, target, backup, force=True)
        dispose_engines()
        engine = get_engine(target)
        assert authenticate(engine, "ana", "ana-pass-1").role == "analyst"
        aside = next(target.data_path.glob("replaced-by-restore-*"))
        assert (aside / "mine.txt").read_text() == "keep me"
        assert (aside / "auth_secret").is_file()
        if kind == "sqlite":  # the database file is outside the data dir: moved beside
            moved = next(p for p in report.moved_aside if ".db.replaced-by-restore-" in p)
            assert authenticate(get_engine(url=f"sqlite:///{moved}"), "admin", "other-admin-1")
        else:
            schema = next(p for p in report.moved_aside if p.startswith("schema "))[7:]
            with engine.begin() as conn:
                names = conn.execute(
                    sa.text(f'SELECT username FROM "{schema}".users ORDER BY id')
                ).scalars()
                assert list(names) == ["admin"]
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        dispose_engines()


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_backup_of_an_older_schema_is_upgraded_when_restored(
    settings, tmp_path, monkeypatch, admin
):
    old = "0012_embedding_models"
    engine = get_engine(settings)
    upgrade(engine, old)
    ensure_admin(engine, "adminpass1")
    create_backup(engine, admin, settings, tmp_path / "backup")
    backup = verify_backup(tmp_path / "backup")
    assert backup.manifest["schema_revision"] == old
    with database_url(_engine_kind(settings), tmp_path / "fresh-db") as url:
        target = _switch_to(monkeypatch, tmp_path / "restored", url)
        report = restore_backup(backup.principal("admin"), target, backup)
        assert (report.backup_schema_revision, report.schema_revision) == (old, head_revision())
        restored = get_engine(target)
        assert current_revision(restored) == head_revision()
        assert authenticate(restored, "admin", "adminpass1").role == "admin"
        dispose_engines()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_commands_need_system_backup_and_answer_json(
    db_engine, admin, settings, tmp_path, monkeypatch
):
    create_user(db_engine, admin, "ana", "ana-pass-1", "analyst")
    settings.auth_secret_value()
    dest = tmp_path / "backup"
    r = clara(settings, "admin", "backup", str(dest), user="ana")
    assert r.returncode == 4 and "system:backup" in r.stderr and not dest.exists()
    denied = read_audit_log(db_engine, admin, action_prefix="system.backup").rows
    assert (denied.iloc[0].actor, denied.iloc[0].outcome) == ("ana", "denied")

    r = clara(settings, "admin", "backup", str(dest), "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["path"] == str(dest) and made["engine"] == "sqlite" and made["files"] >= 2

    fresh = tmp_path / "restored"  # the default layout: the database inside the data dir
    target = _switch_to(monkeypatch, fresh, f"sqlite:///{fresh / 'clara.db'}")
    r = clara(target, "admin", "restore", str(dest), user="ana")
    assert r.returncode == 4 and "system:backup" in r.stderr and _target_is_empty(target)
    r = clara(target, "admin", "restore", str(dest), user="nobody")
    assert r.returncode == 4 and "not an enabled user of the backup" in r.stderr
    r = clara(target, "admin", "restore", str(dest), "--json")
    assert r.returncode == 0, r.stderr
    restored = json.loads(r.stdout)
    assert restored["schema_revision"] == head_revision() and restored["files"] >= 1
    r = clara(target, "admin", "restore", str(dest))
    assert r.returncode == 1 and "--force" in r.stderr
    assert authenticate(get_engine(target), "ana", "ana-pass-1")
    dispose_engines()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_vectors_move_through_chroma_s_client_into_and_out_of_a_server(
    db_engine, admin, settings, tmp_path, monkeypatch
):
    from core.corpus.search import search
    from tests.chroma_server import running_chroma_server

    src = tmp_path / "docs"
    src.mkdir()
    for name, text in list(DOCS.items())[:3]:
        (src / name).write_text(text, encoding="utf-8")
    opts = IngestOptions(chunk_tokens=64, chunk_overlap=8)
    ingest_paths(db_engine, admin, [src], opts, settings)
    query = QUERIES[1]
    before = [h.doc_id for h in search(db_engine, admin, query, settings, mode="vector")]
    create_backup(db_engine, admin, settings, tmp_path / "embedded-backup")

    with running_chroma_server(tmp_path / "chroma-server") as chroma_url:
        monkeypatch.setenv("CLARA_CHROMA_URL", chroma_url)
        fresh = tmp_path / "restored"
        target = _switch_to(monkeypatch, fresh, f"sqlite:///{fresh / 'clara.db'}")
        backup = verify_backup(tmp_path / "embedded-backup")
        restore_backup(backup.principal("admin"), target, backup)
        engine = get_engine(target)
        assert [h.doc_id for h in search(engine, admin, query, target, mode="vector")] == before
        assert not (fresh / "chroma").exists()  # into the server, not the data dir

        again = create_backup(engine, admin, target, tmp_path / "server-backup")
        manifest = verify_backup(tmp_path / "server-backup").manifest
        assert manifest["vectors"]["store"] == "server"
        assert again.vectors == backup.manifest["vectors"]["count"] > 0
        with pytest.raises(TargetNotEmpty, match="Chroma server"):
            restore_backup(backup.principal("admin"), target, backup, force=True)
        dispose_engines()


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_restore_that_fails_midway_puts_back_what_was_there(
    db_engine, admin, settings, tmp_path, monkeypatch
):
    from core.system import prepare

    backup = verify_backup(_small_backup(db_engine, admin, settings, tmp_path / "backup"))
    kind = _engine_kind(settings)
    # Changed after it was verified: the database part is read last, after the files.
    section = backup.manifest["database"]
    name = section["file"] if kind == "sqlite" else section["tables"]["users"]["file"]
    damaged = tmp_path / "backup" / "database" / name
    data = bytearray(damaged.read_bytes())
    data[-2] ^= 1
    damaged.write_bytes(bytes(data))
    with database_url(kind, tmp_path / "fresh-db") as url:
        target = _switch_to(monkeypatch, tmp_path / "restored", url)
        monkeypatch.setenv("CLARA_ADMIN_PASSWORD", "other-admin-1")
        get_settings.cache_clear()
        prepare(get_settings())
        (target.data_path / "mine.txt").write_text("keep me")
        before = sorted(p.relative_to(target.data_path) for p in target.data_path.rglob("*"))
        dispose_engines()

        with pytest.raises(BackupInvalid, match="changed since it was verified"):
            restore_backup(backup.principal("admin"), target, backup, force=True)
        after = sorted(p.relative_to(target.data_path) for p in target.data_path.rglob("*"))
        assert after == before and (target.data_path / "mine.txt").read_text() == "keep me"
        engine = get_engine(target)
        assert authenticate(engine, "admin", "other-admin-1")
        failed = read_audit_log(engine, admin, action_prefix="system.restore").rows
        assert failed.iloc[0].outcome == "failed"
        dispose_engines()

"""`clara admin migrate` (issue 14, item 4): a workbench on its embedded defaults (SQLite in the
data dir, embedded Chroma) is moved to a fresh PostgreSQL schema and a real `chroma run`
server by the real CLI, then used through the new settings: searches answer with the same
documents and scores, the dataset keeps its samples and reviews, users sign in, the audit log
is the same rows plus the move's own, new rows get fresh ids, and an adapter keeps its
lineage. The source file is byte for byte what it was; a target that already holds something
is refused, and --force fills only what it can fill without changing anything."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.config import Settings, get_settings
from core.permissions import PermissionDenied, Principal
from tests.chroma_server import running_chroma_server
from tests.cli_run import clara
from tests.conftest import database_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DOCS = {
    "hundesteuer": "Die Hundesteuer wird jährlich im Voraus fällig. Für jeden weiteren Hund "
    "steigt der Satz. Blindenhunde sind von der Hundesteuer befreit.",
    "baumschutz": "Wer einen Baum fällen will, braucht eine Genehmigung nach der "
    "Baumschutzsatzung. Ersatzpflanzungen können verlangt werden.",
    "parkausweis": "Anwohner erhalten einen Parkausweis für ihre Zone. Stellplätze für "
    "Besucher gibt es an den Parkplätzen am Markt.",
    "abfall": "Die Müllabfuhr holt Restmüll alle zwei Wochen ab. Sperrmüll wird auf Antrag "
    "abgeholt, Grünschnitt im Frühjahr.",
    "hochzeit": "Die Anmeldung der Eheschließung erfolgt beim Standesamt des Wohnorts. "
    "Mitzubringen sind Ausweis und Geburtsurkunde.",
    "ausweis": "Einen Personalausweis beantragen Sie persönlich im Bürgerbüro mit einem "
    "biometrischen Passbild.",
}
QUERIES = ["Hundesteuer für zwei Hunde", "Darf ich einen Baum fällen?", "Müll abholen"]
MODES = ("keyword", "vector", "hybrid")


@dataclass
class Workbench:
    settings: Settings
    searches: dict[tuple[str, str], list[tuple[str, float, dict]]]
    saved: list[str]
    samples: list[dict]
    lineage: dict
    api_key: str


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory) -> Iterator[str]:
    with running_chroma_server(tmp_path_factory.mktemp("chroma-server")) as url:
        yield url


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Iterator[Path]:
    """This process's environment for the module: the embedded defaults in a data dir."""
    data = tmp_path_factory.mktemp("workbench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLARA_DATA_DIR", str(data))
        mp.setenv("CLARA_ENV", "testing")
        mp.setenv("CLARA_ADMIN_PASSWORD", "adminpass1")
        get_settings.cache_clear()
        yield data
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def workbench(data_dir, tmp_path_factory) -> Workbench:
    """Documents ingested and embedded, a saved search, a scored and reviewed dataset with a
    frozen version, an adapter with its job, a user with an API key and sign-ins, and
    the audit rows all of that wrote; what the tests compare is read before the move."""
    from core.api_keys import create_api_key
    from core.corpus.embedding import embed_pending
    from core.corpus.ingest import IngestOptions, ingest_paths
    from core.corpus.search import SearchRequest, run_saved_search, save_search
    from core.datasets.review import decide, list_samples
    from core.datasets.scoring import score_dataset
    from core.datasets.service import add_samples, create_dataset
    from core.datasets.versions import freeze
    from core.login import AuthenticationFailed, authenticate
    from core.system import prepare
    from core.training.adapters import lineage, register_adapter
    from core.training.jobs import submit_sleep_job
    from core.users import create_user, principal_for

    settings = get_settings()
    engine = prepare(settings).engine
    admin = principal_for(engine, "admin")
    create_user(engine, admin, "ana", "anapass123", "analyst", full_name="Ana Lyst")

    src = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (src / f"{name}.md").write_text(f"# {name.title()}\n\n{text}\n", encoding="utf-8")
    options = IngestOptions(embed=False, chunk_tokens=48, chunk_overlap=8)
    ingest_paths(engine, admin, [src], options, settings)
    assert embed_pending(engine, admin, settings) >= len(DOCS)
    save_search(engine, admin, "hund", SearchRequest(query="Hundesteuer", mode="hybrid", k=3))

    ds = create_dataset(engine, admin, "faq", "Fragen der Bürger")
    add_samples(engine, admin, ds.id, [_sample(k) for k in range(1, 9)])
    score_dataset(engine, admin, "faq")
    page = list_samples(engine, admin, "faq", sort="id_asc", limit=100)
    for view, decision in zip(page.items, ["accepted"] * 5 + ["rejected"] * 2, strict=False):
        decide(engine, admin, view.id, decision, view.row_version, note=f"{decision} by test")
    version = freeze(engine, admin, ds.id, eval_ratio=0.25)

    job = submit_sleep_job(engine, admin, name="lineage-job", settings=settings)
    files = tmp_path_factory.mktemp("adapter")
    (files / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    register_adapter(
        engine, admin, name="faq-lora", files_dir=files, base_model="demo-llama",
        base_model_fingerprint="f" * 64, method="lora", dataset_version_id=version.id,
        dataset_manifest_sha256=version.manifest_sha256, job_id=job.id,
        metrics={"eval_loss": 1.25, "train_loss": 0.1 + 0.2}, settings=settings,
    )  # fmt: skip

    _, key = create_api_key(engine, admin, "notebook", username="ana")
    authenticate(engine, "ana", "anapass123", "127.0.0.1")
    with pytest.raises(AuthenticationFailed):  # a login_throttle row
        authenticate(engine, "ana", "wrong-password", "10.0.0.9")

    return Workbench(
        settings=settings,
        searches=_searches(engine, admin, settings),
        saved=[r.doc_id for r in run_saved_search(engine, admin, "hund", settings=settings)],
        samples=_samples(engine, admin),
        lineage=lineage(engine, admin, "faq-lora"),
        api_key=key,
    )


def _sample(k: int):
    from core.datasets.service import SampleIn

    return SampleIn(
        kind="chat",
        messages=[
            {"role": "user", "content": f"Wie hoch ist die Hundesteuer für {k} Hunde?"},
            {"role": "assistant", "content": f"Für {k} Hunde sind es {90 * k} Euro im Jahr."},
        ],
        provenance={"source": "test", "k": k},
        metadata={"rating": None, "weight": k / 3, "tags": ["hund", "steuer"]},
    )


def _searches(engine, actor, settings) -> dict:
    from core.corpus.search import search

    return {
        (q, mode): [
            (r.doc_id, r.score, r.raw_scores)
            for r in search(engine, actor, q, settings, mode=mode, k=5)
        ]
        for q in QUERIES
        for mode in MODES
    }


def _samples(engine, actor) -> list[dict]:
    from core.datasets.review import list_samples

    page = list_samples(engine, actor, "faq", sort="id_asc", limit=100)
    return [v.model_dump() for v in page.items]


def _audit_rows(engine) -> list[dict]:
    from core.db.models import AuditEntry

    with engine.connect() as conn:
        rows = conn.execute(sa.select(AuditEntry.__table__).order_by(AuditEntry.id)).mappings()
        return [dict(r) for r in rows]


def _source_sha256(settings: Settings) -> str:
    """Of the database file and its write-ahead log (where SQLite puts writes first)."""
    digest = hashlib.sha256()
    for name in ("clara.db", "clara.db-wal"):
        path = settings.data_path / name
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()


def _release_source() -> None:
    """Close this process's connections, so SQLite folds its WAL into the file before the
    file's hash is taken (the hash then says what the database holds)."""
    from core.db import dispose_engines

    dispose_engines()


@dataclass
class Moved:
    report: dict
    url: str
    settings: Settings
    source_audit: list[dict]
    sha_before: str
    sha_after: str


@pytest.fixture(scope="module")
def moved(workbench, chroma_url, tmp_path_factory) -> Iterator[Moved]:
    """The real `clara admin migrate` to a fresh PostgreSQL schema and the server, and the
    settings a restarted workbench would then have (same data dir, the two new URLs)."""
    from core.db import get_engine

    source_audit = _audit_rows(get_engine(workbench.settings))
    _release_source()
    before = _source_sha256(workbench.settings)
    with database_url("postgres", tmp_path_factory.mktemp("pg")) as url:
        r = clara(
            workbench.settings, "admin", "migrate", "--to", url, "--chroma-to", chroma_url,
            "--json",
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        after = _source_sha256(workbench.settings)
        settings = _settings(workbench.settings.data_path, url, chroma_url)
        yield Moved(json.loads(r.stdout), url, settings, source_audit, before, after)


def _settings(data: Path, database_url: str, chroma_url: str | None = None) -> Settings:
    return Settings(
        _env_file=None, data_dir=data, database_url=database_url, chroma_url=chroma_url,
        env="testing",
    )  # fmt: skip


def test_the_copy_is_verified_and_the_source_file_is_unchanged(moved, workbench):
    report = moved.report
    assert report["ok"] and moved.sha_before == moved.sha_after
    tables = {t["table"]: t for t in report["tables"]}
    for name in ("users", "audit_log", "corpus_documents", "corpus_terms", "corpus_term_docs",
                 "dataset_samples", "dataset_versions", "adapters", "login_throttle"):  # fmt: skip
        t = tables[name]
        assert t["ok"] and t["source_rows"] == t["target_rows"] > 0, t
        assert t["added"] == t["source_rows"] and t["source_sha256"] == t["target_sha256"]
    # The migrations insert the roles themselves: kept, as they equal the source's.
    assert tables["roles"]["added"] == 0 and tables["roles"]["target_rows"] == 5
    assert "alembic_version" not in tables
    [chunks] = report["collections"]
    assert chunks["name"] == "clara_chunks" and chunks["ok"]
    assert chunks["source_count"] == chunks["target_count"] == chunks["added"] > len(DOCS)
    assert chunks["max_embedding_difference"] < 1e-6
    assert report["set_afterwards"] == {
        "CLARA_DATABASE_URL": moved.url,  # no password to mask here
        "CLARA_CHROMA_URL": moved.settings.chroma_url,
    }


def test_the_new_stores_answer_as_the_old_ones_did(moved, workbench):
    from core.api_keys import resolve_api_key
    from core.corpus.search import run_saved_search
    from core.login import authenticate
    from core.system import prepare
    from core.training.adapters import lineage
    from core.users import principal_for

    engine = prepare(moved.settings).engine
    assert engine.dialect.name == "postgresql"
    admin = principal_for(engine, "admin")
    after = _searches(engine, admin, moved.settings)
    for key, hits in workbench.searches.items():
        assert hits and [h[0] for h in after[key]] == [h[0] for h in hits], key
        for (_, score, raw), (_, old_score, old_raw) in zip(after[key], hits, strict=True):
            assert score == pytest.approx(old_score, abs=1e-5), key
            assert raw == pytest.approx(old_raw, abs=1e-5), key
    saved = run_saved_search(engine, admin, "hund", settings=moved.settings)
    assert [r.doc_id for r in saved] == workbench.saved and workbench.saved

    assert {"accepted", "rejected"} <= {s["status"] for s in workbench.samples}
    assert _samples(engine, admin) == workbench.samples  # reviews, scores, times alike
    with engine.connect() as conn:  # a JSON null stays one (not an SQL NULL)
        kept = conn.execute(sa.text("SELECT thresholds IS NULL, thresholds::text FROM datasets"))
        assert kept.one() == (False, "null")
    [step] = workbench.lineage["chain"]
    assert step["job"]["id"] and step["dataset_version"]["id"]
    assert lineage(engine, admin, "faq-lora") == workbench.lineage
    assert authenticate(engine, "ana", "anapass123", "127.0.0.1").role == "analyst"
    assert resolve_api_key(engine, workbench.api_key).username == "ana"


def test_the_audit_log_moves_whole_and_ids_continue(moved, workbench):
    from core.audit import record
    from core.db import get_engine
    from core.users import create_user, principal_for

    engine = get_engine(moved.settings)
    rows = _audit_rows(engine)
    copied, own = rows[: len(moved.source_audit)], rows[len(moved.source_audit)]
    assert copied == moved.source_audit  # ids, times (to the microsecond) and JSON alike
    assert (own["action"], own["actor"], own["outcome"]) == ("system.migrate", "admin", "ok")
    assert own["id"] == copied[-1]["id"] + 1 == moved.report["audit_id"]
    assert own["detail"]["rows"] > 0 and own["detail"]["vectors"] > 0

    admin = principal_for(engine, "admin")
    with engine.connect() as conn:
        top = conn.execute(sa.text("SELECT max(id) FROM users")).scalar()
    assert create_user(engine, admin, "neu", "neupass123", "user").id == top + 1
    record(engine, "admin", "test.after_move")
    assert _audit_rows(engine)[-1]["id"] > own["id"]


def test_a_target_that_holds_something_is_refused_and_left_as_it_was(moved, workbench, chroma_url):
    from core.db import get_engine

    target = _audit_rows(get_engine(moved.settings))
    plain = clara(workbench.settings, "admin", "migrate", "--to", moved.url)
    assert plain.returncode == 1 and "the target database is not empty" in plain.stderr
    # --force refuses too: the target's audit log holds the move's own row, which the
    # source lacks (and since the refusal above, the source holds another under its id).
    forced = clara(workbench.settings, "admin", "migrate", "--to", moved.url, "--force")
    assert forced.returncode == 1, forced.stderr
    assert "table audit_log: the target's row (" in forced.stderr
    assert "nothing was changed" in forced.stderr
    assert _audit_rows(get_engine(moved.settings)) == target

    vectors = clara(workbench.settings, "admin", "migrate", "--chroma-to", chroma_url)
    assert vectors.returncode == 1 and "holds" in vectors.stderr and "--force" in vectors.stderr
    # With --force a collection that holds only the source's vectors is completed: here it
    # is complete already, so nothing is added, and the whole collection is verified again.
    resumed = clara(
        workbench.settings, "admin", "migrate", "--chroma-to", chroma_url, "--force", "--json"
    )
    assert resumed.returncode == 0, resumed.stderr
    [chunks] = json.loads(resumed.stdout)["collections"]
    assert chunks["ok"] and chunks["added"] == 0 and chunks["target_count"] > 0

    # Refusals are recorded in the workbench's own log (the target got nothing).
    rows = _audit_rows(get_engine(workbench.settings))[len(moved.source_audit) :]
    assert [(r["action"], r["outcome"]) for r in rows] == [("system.migrate", "failed")] * 3 + [
        ("system.migrate", "ok")
    ]


def test_force_fills_a_schema_made_beforehand(workbench, tmp_path):
    """`clara db upgrade` against the target made our tables and inserted the roles: only
    --force fills it; the roles stay as they are (identical to the source's)."""
    with database_url("postgres", tmp_path) as url:
        made = clara(_settings(tmp_path, url), "db", "upgrade")
        assert made.returncode == 0, made.stderr
        plain = clara(workbench.settings, "admin", "migrate", "--to", url)
        assert plain.returncode == 1 and "not empty" in plain.stderr
        forced = clara(workbench.settings, "admin", "migrate", "--to", url, "--force", "--json")
        assert forced.returncode == 0, forced.stderr
        report = json.loads(forced.stdout)
        tables = {t["table"]: t for t in report["tables"]}
        assert report["ok"] and report["force"]
        assert (tables["roles"]["added"], tables["roles"]["target_rows"]) == (0, 5)
        assert tables["users"]["added"] == tables["users"]["source_rows"] > 0


def test_a_difference_after_the_copy_rolls_everything_back(tmp_path):
    """Postgres keeps JSON numbers as decimals: a float from 1e16 up comes back as an
    integer. The checksums see it, and the target is left without a single table."""
    from core.audit import record
    from core.db import get_engine
    from core.ops.migrate_store import MigrationMismatch, migrate_store
    from core.system import prepare
    from core.users import principal_for

    source = _settings(tmp_path / "data", f"sqlite:///{tmp_path / 'data' / 'clara.db'}")
    engine = prepare(source).engine
    record(engine, "admin", "test.big_number", detail={"count": 1e16})
    admin = principal_for(engine, "admin")
    with database_url("postgres", tmp_path) as url:
        with pytest.raises(MigrationMismatch) as caught:
            migrate_store(engine, admin, source, to=url)
        bad = [t.table for t in caught.value.report.tables if not t.ok]
        assert bad == ["audit_log"]
        assert sa.inspect(get_engine(url=url)).get_table_names() == []
    last = _audit_rows(engine)[-1]
    assert (last["action"], last["outcome"]) == ("system.migrate", "failed")
    assert "audit_log" in last["detail"]["error"]


def test_only_an_admin_may_move_the_stores(workbench):
    from core.db import get_engine
    from core.ops.migrate_store import migrate_store

    engine = get_engine(workbench.settings)
    analyst = Principal("ana", "analyst")
    with pytest.raises(PermissionDenied):
        migrate_store(engine, analyst, workbench.settings, to="postgresql://x@127.0.0.1:1/x")
    last = _audit_rows(engine)[-1]
    assert (last["actor"], last["action"], last["outcome"]) == ("ana", "system.migrate", "denied")
    assert last["target"] == "postgresql://x@127.0.0.1:1/x"

"""An embedding model adapted to the corpus (core.corpus.embed_tune): pairs built from a small
corpus and accepted dataset samples, a tiny real "embed-tune" job run by the worker through
the real queue, its registry row and lineage, switching the corpus to it (`use_embedding_model`,
what `clara corpus embed --all --model` calls) and searching with it, the ONNX backend built
from it, and spec errors naming the field. Real database (both engines), real model, real
Chroma; training runs a couple of steps on a handful of pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from core.artifacts import read_manifest, verify_manifest
from core.corpus.embed_tune import (
    DEFAULT_SOURCES,
    SOURCES,
    EmbeddingModelNotFound,
    EmbedTuneError,
    build_pairs,
    embed_tune_spec,
    find_headings,
    get_embedding_model,
    list_embedding_models,
    split_first_sentence,
    submit_embed_tune,
    use_embedding_model,
)
from core.corpus.embedders import Embedder, base_model_location, embedding_identity, get_embedder
from core.corpus.embedding import embed_pending, pending_count
from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.models import Chunk
from core.corpus.search import search
from core.corpus.vectors import get_vector_store
from core.datasets.service import SampleIn, add_samples, create_dataset
from core.permissions import PermissionDenied
from core.training.jobs import get_job
from core.training.models import TrainingMetric
from core.training.spec import SpecError
from tests.conftest import principal

DOCS = {
    "hundesteuer": (
        "# Hundesteuersatzung\n\n## § 1 Steuerpflicht\n\nWer einen Hund im Stadtgebiet hält, "
        "zahlt Hundesteuer an die Stadt. Die Steuer wird jährlich im Voraus fällig und ist bis "
        "zum 15. Februar zu zahlen.\n\n## § 2 Steuersatz\n\nDie Steuer beträgt für den ersten "
        "Hund 96 Euro im Jahr. Für jeden weiteren Hund werden 120 Euro erhoben, für einen "
        "gefährlichen Hund 600 Euro.\n"
    ),
    "baumschutz": (
        "# Baumschutzsatzung\n\n## § 1 Geschützte Bäume\n\nGeschützt sind Bäume mit einem "
        "Stammumfang von mindestens 80 Zentimetern, gemessen in einem Meter Höhe. Obstbäume "
        "sind ausgenommen.\n\n## § 2 Genehmigung\n\nWer einen geschützten Baum fällen will, "
        "braucht eine Genehmigung der Stadt. Der Antrag ist schriftlich mit einem Lageplan "
        "einzureichen.\n"
    ),
    "winterdienst": (
        "# Merkblatt Winterdienst\n\nWann muss ich den Gehweg räumen?\n\nAnlieger räumen den "
        "Gehweg werktags bis 7 Uhr und sonntags bis 9 Uhr von Schnee frei. Bei Glätte ist mit "
        "Sand oder Splitt zu streuen; Streusalz ist verboten.\n"
    ),
    "abfall": (
        "# Abfallgebühren\n\n## Restmüll\n\nDie Gebühr für eine Restmülltonne mit 120 Litern "
        "beträgt 180 Euro im Jahr. Die Tonne wird alle zwei Wochen geleert.\n\n## Biotonne\n\n"
        "Die Biotonne kostet 60 Euro im Jahr. Gartenabfälle dürfen in kleinen Mengen hinein.\n"
    ),
}
TINY = {"max_steps": 2, "batch_size": 4, "validation_fraction": 0.2}


def _ingest(engine, admin, settings, tmp_path: Path) -> int:
    src = tmp_path / "docs"
    src.mkdir()
    for name, text in DOCS.items():
        (src / f"{name}.md").write_text(text, encoding="utf-8")
    ingest_paths(
        engine, admin, [src], IngestOptions(embed=False, chunk_tokens=48, chunk_overlap=8), settings
    )
    return pending_count(engine, admin)


def _chunk_of(engine, doc_id: str, index: int = 0) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(Chunk.id).where(Chunk.doc_id == doc_id, Chunk.chunk_index == index)
        ).scalar_one()


# Pairs -----------------------------------------------------------------------------------


def test_headings_and_first_sentences():
    text = "# Titel\n\nEinleitung ohne Punkt\n\n§ 3 Gebühren\nDie Gebühr beträgt 5 Euro.\n"
    heads = [h for h, _s, _e in find_headings(text)]
    assert heads == ["Titel", "Einleitung ohne Punkt", "§ 3 Gebühren"]
    assert find_headings("ein Satz, der umbricht\nund weitergeht.")[:1] == []
    first, rest = split_first_sentence(
        "Wer einen Hund hält, zahlt Hundesteuer an die Stadt. Die Steuer wird jährlich im "
        "Voraus fällig und ist im Februar zu zahlen."
    )
    assert first == "Wer einen Hund hält, zahlt Hundesteuer an die Stadt."
    assert rest.startswith("Die Steuer wird jährlich")
    # A chunk after the first may begin inside a sentence: that piece is not a question.
    mid = split_first_sentence(
        "im Voraus fällig. Die Steuer beträgt 96 Euro im Jahr für den ersten Hund. Weitere "
        "Hunde kosten mehr, gefährliche Hunde deutlich mehr als alle anderen.",
        mid_text=True,
    )
    assert mid is not None and mid[0].startswith("Die Steuer beträgt 96 Euro")


def test_pairs_from_the_corpus_and_accepted_samples(db_engine, admin, settings, tmp_path):
    _ingest(db_engine, admin, settings, tmp_path)
    ds = create_dataset(db_engine, admin, "fragen")
    target = _chunk_of(db_engine, "baumschutz", 0)
    question = "Brauche ich eine Erlaubnis, um eine alte Eiche zu fällen?"
    add_samples(
        db_engine,
        admin,
        ds.id,
        [
            SampleIn(
                kind="chat",
                messages=[
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": "Ja, eine Genehmigung der Stadt."},
                ],
                provenance={"source": "corpus", "doc_id": "baumschutz", "chunk_index": 0},
                status="accepted",
            ),
            SampleIn(  # not accepted: not used
                kind="chat",
                messages=[
                    {"role": "user", "content": "Was kostet die Biotonne im Jahr?"},
                    {"role": "assistant", "content": "60 Euro."},
                ],
                provenance={"source": "corpus", "doc_id": "abfall", "chunk_index": 0},
            ),
        ],
    )
    spec = {"name": "t", "validation_fraction": 0.25, "seed": 7, "sources": list(SOURCES)}
    pairs = build_pairs(db_engine, admin, spec)
    everything = pairs.train + pairs.validation
    sources = {p.source for p in everything}
    assert sources == {"titles", "headings", "sentences", "samples"}
    assert pairs.documents == len(DOCS) and pairs.chunks == pending_count(db_engine, admin)
    sample_pairs = [p for p in everything if p.source == "samples"]
    assert [(p.anchor, p.chunk_id) for p in sample_pairs] == [(question, target)]
    assert "Was kostet die Biotonne im Jahr?" not in {p.anchor for p in everything}
    assert ("Hundesteuersatzung", "hundesteuer") in {(p.anchor, p.doc_id) for p in everything}
    assert "§ 2 Steuersatz" in {p.anchor for p in everything if p.source == "headings"}
    # Deduplicated, held back by chunk, counted, deterministic for a seed.
    keys = [(p.anchor.casefold(), p.chunk_id) for p in everything]
    assert len(keys) == len(set(keys))
    assert pairs.validation and not {p.chunk_id for p in pairs.validation} & {
        p.chunk_id for p in pairs.train
    }
    assert {p.chunk_id for p in pairs.validation} <= {cid for cid, _t in pairs.pool}
    assert sum(pairs.counts.values()) == len(everything)
    again = build_pairs(db_engine, admin, spec)
    assert (again.train, again.validation) == (pairs.train, pairs.validation)
    other = build_pairs(db_engine, admin, {**spec, "seed": 8})
    assert [p.anchor for p in other.train] != [p.anchor for p in pairs.train]
    only_titles = build_pairs(db_engine, admin, {"name": "t", "sources": ["titles"]})
    assert {p.source for p in only_titles.train + only_titles.validation} == {"titles"}
    default = build_pairs(db_engine, admin, {"name": "t"})
    assert {p.source for p in default.train + default.validation} == set(DEFAULT_SOURCES)
    assert pairs.corpus_sha256 == again.corpus_sha256 and len(pairs.corpus_sha256) == 64


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "ok", "epochs": 0}, "epochs"),
        ({"name": "ok", "epoch": 2}, "epoch"),
        ({"name": "Not A Name"}, "name"),
        ({"name": "base"}, "name"),
        ({"name": "ok", "sources": ["titles", "nope"]}, "sources.1"),
        ({"name": "ok", "batch_size": 1}, "batch_size"),
        ({"name": "ok", "learning_rate": 0}, "learning_rate"),
        ({"epochs": 1}, "name"),
    ],
)
def test_bad_spec_names_the_field(data, field):
    with pytest.raises(SpecError) as err:
        embed_tune_spec(data)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    if field == "epoch":
        assert "did you mean 'epochs'" in str(err.value)


# The job, the registry, switching and search ---------------------------------------------------


def _run_worker(settings, engine) -> None:
    from workers.trainer import Worker

    Worker(settings, engine=engine, once=True, kinds=("embed-tune",), log=lambda m: None).run()


def test_tune_job_registers_and_the_corpus_switches_to_it(db_engine, admin, settings, tmp_path):
    chunks = _ingest(db_engine, admin, settings, tmp_path)
    for role in ("auditor", "analyst"):
        with pytest.raises(PermissionDenied):
            submit_embed_tune(db_engine, principal(role), {"name": "x"}, settings)
    trainer = principal("trainer", "trainer1")
    job_id = submit_embed_tune(db_engine, trainer, {"name": "city-v1", **TINY}, settings)
    with pytest.raises(SpecError) as taken:
        submit_embed_tune(db_engine, admin, {"name": "city-v1"}, settings)
    assert taken.value.field == "name"
    assert get_job(db_engine, admin, job_id).state == "queued"  # nothing ran here

    _run_worker(settings, db_engine)
    job = get_job(db_engine, admin, job_id)
    assert job.state == "succeeded", job.error
    assert (job.kind, job.step, job.max_steps) == ("embed-tune", 2, 2)
    with db_engine.connect() as conn:
        phases = set(
            conn.execute(
                sa.select(TrainingMetric.phase).where(TrainingMetric.job_id == job_id)
            ).scalars()
        )
    assert {"eval_before", "eval_after", "train"} <= phases

    # Registered with its lineage; files and manifest agree.
    (m,) = list_embedding_models(db_engine, admin, settings)
    assert (m.name, m.job_id, m.active, m.created_by) == ("city-v1", job_id, False, "trainer1")
    assert m.base_model == base_model_location(settings) and len(m.base_model_fingerprint) == 64
    assert (m.corpus_documents, m.corpus_chunks) == (len(DOCS), chunks)
    assert m.spec["max_steps"] == 2 and m.pairs["train"] >= 2 and m.pairs["validation"] >= 1
    for phase in ("validation_before", "validation_after"):
        assert set(m.metrics[phase]) == {"recall@1", "recall@5", "recall@10", "mrr@10"}
    assert m.metrics["steps"] == 2 and m.library_versions["sentence-transformers"]
    assert Path(m.path) == settings.data_path / "models" / "embeddings" / "city-v1"
    assert verify_manifest(Path(m.path)) == []
    manifest = read_manifest(Path(m.path))
    assert manifest["kind"] == "embedding-model" and manifest["job_id"] == job_id
    assert get_embedding_model(db_engine, admin, m.id, settings).name == "city-v1"
    with pytest.raises(EmbeddingModelNotFound):
        get_embedding_model(db_engine, admin, "nope", settings)

    # The corpus on the base model first, then switched to the tuned one.
    embed_pending(db_engine, admin, settings)
    base_identity = embedding_identity(settings)
    assert search(db_engine, admin, "Hundesteuer", settings, mode="vector", k=3)
    with pytest.raises(PermissionDenied):
        use_embedding_model(db_engine, principal("auditor"), settings, "city-v1")
    with pytest.raises(EmbeddingModelNotFound):
        use_embedding_model(db_engine, admin, settings, "nope")
    identity, pending = use_embedding_model(db_engine, admin, settings, "city-v1")
    assert identity == "sentence-transformers:tuned city-v1" != base_identity
    assert pending == chunks == pending_count(db_engine, admin)
    store = get_vector_store(settings)
    assert store.count() == 0 and store.recorded_embedding(fresh=True) == identity
    assert get_embedding_model(db_engine, admin, "city-v1", settings).active
    assert embed_pending(db_engine, admin, settings) == chunks

    # Search encodes queries with the model the corpus was embedded with: the tuned one.
    emb = get_embedder(settings)
    assert emb.location == m.path
    tuned = Embedder(m.path)
    cid = _chunk_of(db_engine, "winterdienst")
    with db_engine.connect() as conn:
        text = conn.execute(sa.select(Chunk.text).where(Chunk.id == cid)).scalar_one()
    stored = store.collection.get(ids=[str(cid)], include=["embeddings"])["embeddings"][0]
    assert np.allclose(stored, tuned.encode([text])[0], atol=1e-4)
    hits = search(
        db_engine, admin, "Wann muss der Gehweg geräumt werden?", settings, mode="vector", k=2
    )
    assert hits and "winterdienst" in {h.doc_id for h in hits}
    # The vector score is the cosine of the tuned model's query vector (not the base's).
    question = "Wann muss der Gehweg geräumt werden?"
    got = store.collection.get(include=["embeddings", "metadatas"])
    doc_of = np.asarray([meta["doc_id"] for meta in got["metadatas"]])
    vectors = np.asarray(got["embeddings"])
    tuned_sim = (vectors @ tuned.encode_query(question))[doc_of == hits[0].doc_id].max()
    base_sim = (vectors @ Embedder(base_model_location(settings)).encode_query(question))[
        doc_of == hits[0].doc_id
    ].max()
    assert hits[0].raw_scores["vector"] == pytest.approx(float(tuned_sim), abs=1e-3)
    assert abs(float(base_sim) - float(tuned_sim)) > 1e-3

    # And back to the base model.
    identity, _ = use_embedding_model(db_engine, admin, settings, "base")
    assert identity == base_identity and get_embedder(settings).location != m.path
    assert not get_embedding_model(db_engine, admin, "city-v1", settings).active


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_tuning_an_empty_corpus_is_refused(db_engine, admin, settings):
    with pytest.raises(EmbedTuneError, match="no chunks"):
        submit_embed_tune(db_engine, admin, {"name": "empty"}, settings)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_embedding_model_setting_takes_precedence(db_engine, admin, settings, monkeypatch):
    from core.config import get_settings

    monkeypatch.setenv("CLARA_EMBEDDING_MODEL", base_model_location(settings))
    get_settings.cache_clear()
    with pytest.raises(EmbedTuneError, match="CLARA_EMBEDDING_MODEL"):
        use_embedding_model(db_engine, admin, get_settings(), "base")


def test_worker_kinds_take_embed_tune():
    from core.training.models import JOB_KINDS
    from workers.trainer import parse_kinds

    assert "embed-tune" in JOB_KINDS  # `clara up`'s worker (all kinds) runs it
    assert parse_kinds("embed-tune") == ("embed-tune",)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_onnx_backend_builds_from_the_tuned_model(db_engine, admin, settings, tmp_path):
    """The int8 ONNX model of a tuned model is its own folder, built from the tuned model's
    files (its manifest names them), and agrees with the tuned model."""
    from core.config import get_settings
    from core.corpus.onnx_embedder import ensure_onnx_model, onnx_model_dir, source_fingerprint

    _ingest(db_engine, admin, settings, tmp_path)
    submit_embed_tune(db_engine, admin, {"name": "city-onnx", **TINY, "max_steps": 1}, settings)
    _run_worker(settings, db_engine)
    m = get_embedding_model(db_engine, admin, "city-onnx", settings)
    use_embedding_model(db_engine, admin, settings, "city-onnx")
    onnx = settings.model_copy(update={"embedding_backend": "onnx"})
    folder = ensure_onnx_model(onnx)
    assert (
        folder
        == onnx_model_dir(onnx)
        == settings.data_path / "models" / ("tuned-city-onnx-onnx-int8")
    )
    manifest = read_manifest(folder)
    assert manifest["source"] == str(Path(m.path).resolve())
    assert manifest["source_sha256"] == source_fingerprint(Path(m.path))
    assert embedding_identity(onnx) == "onnx-int8:tuned city-onnx"
    texts = [DOCS["winterdienst"], DOCS["abfall"]]
    got = get_embedder(onnx).encode(texts)
    want = Embedder(m.path).encode(texts)
    assert (got * want).sum(axis=1).min() > 0.95
    get_settings.cache_clear()

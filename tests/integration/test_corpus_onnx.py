"""The int8 ONNX embedding backend, built from the packaged all-MiniLM-L6-v2: agreement with
the sentence-transformers model on the German sample corpus, the configuration switch, the
guard against mixing vectors of two backends in one collection, and the error paths.

The int8 model is built once per run (shared_build) and copied into each test's data dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.artifacts import MANIFEST, verify_manifest
from core.config import ConfigError, get_settings, load_settings
from core.corpus.chunking import Chunker, load_tokenizer
from core.corpus.embedders import Embedder, get_embedder, model_location
from core.corpus.embedding import embed_pending, pending_count, reset_embeddings
from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.onnx_embedder import (
    OnnxBackendUnavailable,
    OnnxEmbedder,
    build_onnx_model,
    ensure_onnx_model,
    onnx_model_dir,
    source_fingerprint,
)
from core.corpus.readers import SourceDocument, read_file
from core.corpus.sample import SAMPLE_DIR, SAMPLE_EXCLUDE
from core.corpus.search import search
from core.corpus.vectors import EmbeddingMismatch, get_vector_store, reset_vector_stores
from tests.conftest import ROOT, shared_build

QUESTIONS = ROOT / "bench" / "data" / "search_questions.jsonl"

# Measured on this corpus (bench/RESULTS.md, "ONNX embedding backend"): mean cosine 0.98,
# question→chunk recall@10 0.86. The wish (recall@10 ≥ 0.95) is NOT met by dynamic
# int8 quantization of this model; these bounds guard against regressions of what it does.
MIN_MEAN_COSINE = 0.97
MIN_COSINE = 0.94
MIN_RECALL_AT_10 = 0.80


def _source() -> Path:
    return Path(model_location(load_settings())).resolve()


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory) -> Path:
    return shared_build(
        tmp_path_factory, "minilm-onnx-int8", lambda d: build_onnx_model(_source(), d)
    )


@pytest.fixture(scope="module")
def torch_model() -> Embedder:
    return Embedder(str(_source()))


@pytest.fixture(scope="module")
def onnx_model(onnx_folder) -> OnnxEmbedder:
    return OnnxEmbedder(onnx_folder)


@pytest.fixture(scope="module")
def sample_chunks() -> list[str]:
    """The sample corpus chunked like ingest does (the embedding model's tokenizer, 240/32)."""
    chunker = Chunker(load_tokenizer(str(_source())))
    texts = []
    for path in sorted(SAMPLE_DIR.rglob("*")):
        rel = path.relative_to(SAMPLE_DIR).as_posix()
        if not path.is_file() or any(Path(rel).match(p) or rel == p for p in SAMPLE_EXCLUDE):
            continue
        for doc in read_file(path):
            if isinstance(doc, SourceDocument):
                texts.extend(c.text for c in chunker.split(doc.text))
    assert len(texts) > 200
    return texts


@pytest.fixture(scope="module")
def both_vectors(sample_chunks, torch_model, onnx_model):
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines()]
    return {
        "torch": torch_model.encode(sample_chunks),
        "onnx": onnx_model.encode(sample_chunks),
        "torch_q": np.stack([torch_model.encode_query(q) for q in questions]),
        "onnx_q": np.stack([onnx_model.encode_query(q) for q in questions]),
    }


def _use_onnx_folder(settings, onnx_folder: Path) -> Path:
    """Put the shared build where the backend looks for it in this test's data dir."""
    target = onnx_model_dir(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(onnx_folder, target)
    return target


def _switch(monkeypatch, backend: str):
    monkeypatch.setenv("CLARA_EMBEDDING_BACKEND", backend)
    get_settings.cache_clear()
    reset_vector_stores()
    return get_settings()


# The model itself ------------------------------------------------------------------------------


def test_manifest_and_tokenisation_follow_the_source_model(onnx_folder, onnx_model, torch_model):
    manifest = json.loads((onnx_folder / MANIFEST).read_text())
    assert manifest["source_sha256"] == source_fingerprint(_source())
    assert manifest["pooling"] == "mean_tokens" and manifest["normalize"] is True
    assert manifest["max_seq_length"] == 256 == onnx_model.max_seq_length
    assert onnx_model.dimension == torch_model.dimension == 384
    assert manifest["check_min_cosine"] >= 0.95 and manifest["fused"] is True
    assert manifest["kind"] == "onnx-embedder" and manifest["source"] == str(_source())
    assert verify_manifest(onnx_folder) == []  # sha256 of every file, the int8 model's among them
    assert (onnx_folder / "model_int8.onnx").stat().st_size < 30e6  # int8: ~23 MB, fp32 ~90
    texts = [
        "  Baumfällung im Außenbereich: Genehmigung nötig?  ",
        "§ 35 BauGB",
        "Grünschnitt " * 400,  # truncated at max_seq_length
    ]
    ours = onnx_model._tokenizer.encode_batch(onnx_model._prepare(texts))
    theirs = torch_model.model.tokenize(texts)["input_ids"].numpy()
    assert np.array_equal(np.array([e.ids for e in ours]), theirs)


def test_cosine_agreement_on_german_sample_chunks(both_vectors):
    cos = (both_vectors["torch"] * both_vectors["onnx"]).sum(axis=1)
    assert cos.mean() >= MIN_MEAN_COSINE, cos.mean()
    assert cos.min() >= MIN_COSINE, cos.min()
    norms = np.linalg.norm(both_vectors["onnx"], axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)
    qcos = (both_vectors["torch_q"] * both_vectors["onnx_q"]).sum(axis=1)
    assert qcos.mean() >= MIN_MEAN_COSINE, qcos.mean()


def test_query_vector_equals_batch_vector(onnx_model, sample_chunks):
    one = onnx_model.encode_query(sample_chunks[0])
    batch = onnx_model.encode(sample_chunks[:8])[0]
    # Dynamic quantization scales activations per run: a text's vector depends a little on
    # the texts batched with it (measured 0.98 here), unlike the torch model's.
    assert float(one @ batch) > 0.96


def test_top10_neighbour_recall_against_the_full_model(both_vectors):
    def recall(a: np.ndarray, b: np.ndarray) -> float:
        top_a, top_b = np.argsort(-a, axis=1)[:, :10], np.argsort(-b, axis=1)[:, :10]
        return float(
            np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_b, strict=True)])
        )

    r = recall(
        both_vectors["torch_q"] @ both_vectors["torch"].T,
        both_vectors["onnx_q"] @ both_vectors["onnx"].T,
    )
    assert r >= MIN_RECALL_AT_10, r


# Configuration and the vector store ----------------------------------------------------------


DOCS = {
    "hund.md": "---\ntitle: Hundesteuer\n---\nDie Hundesteuer beträgt jährlich 96 Euro je Hund.",
    "baum.md": "---\ntitle: Baumschutz\n---\nEine Eiche darf nur mit Genehmigung gefällt werden.",
    "abfall.md": "---\ntitle: Abfall\n---\nDie Biotonne wird alle zwei Wochen geleert.",
}


def _vector_top(engine, admin, settings, query: str) -> str:
    hits = search(engine, admin, query, settings, mode="vector", k=3)
    return hits[0].doc_id


def test_switch_backend_refuses_mixing_until_reembedded(
    db_engine, admin, settings, tmp_path, monkeypatch, onnx_folder
):
    src = tmp_path / "docs"
    src.mkdir()
    for name, text in DOCS.items():
        (src / name).write_text(text, encoding="utf-8")
    ingest_paths(db_engine, admin, [src / "hund.md", src / "baum.md"], IngestOptions(), settings)
    assert type(get_embedder(settings)) is Embedder
    store = get_vector_store(settings)
    assert store.recorded_embedding(fresh=True) == "sentence-transformers:packaged all-MiniLM-L6-v2"
    assert _vector_top(db_engine, admin, settings, "Steuer für meinen Hund") == "hund"

    folder = _use_onnx_folder(settings, onnx_folder)
    onnx = _switch(monkeypatch, "onnx")
    emb = get_embedder(onnx)
    assert isinstance(emb, OnnxEmbedder) and emb.location == str(folder)
    # Neither a query nor new vectors of the other backend reach the torch collection.
    with pytest.raises(EmbeddingMismatch, match="clara corpus embed --all"):
        search(db_engine, admin, "Steuer für meinen Hund", onnx, mode="vector")
    with pytest.raises(EmbeddingMismatch, match="sentence-transformers"):
        ingest_paths(db_engine, admin, [src / "abfall.md"], IngestOptions(), onnx)
    assert pending_count(db_engine, admin) > 0  # the new document waits, keyword-searchable

    assert reset_embeddings(db_engine, admin, onnx) == pending_count(db_engine, admin)
    assert get_vector_store(onnx).count() == 0
    embed_pending(db_engine, admin, onnx)
    assert pending_count(db_engine, admin) == 0
    assert get_vector_store(onnx).recorded_embedding(fresh=True).startswith("onnx-int8:")
    assert _vector_top(db_engine, admin, onnx, "Steuer für meinen Hund") == "hund"
    assert _vector_top(db_engine, admin, onnx, "Wann wird die Biotonne abgeholt?") == "abfall"

    back = _switch(monkeypatch, "torch")
    with pytest.raises(EmbeddingMismatch, match="onnx-int8"):
        search(db_engine, admin, "Eiche fällen", back, mode="vector")
    # Keyword search does not depend on vectors.
    assert search(db_engine, admin, "Eiche", back, mode="keyword")[0].doc_id == "baum"


def test_setting_is_validated():
    assert load_settings().embedding_backend == "torch"
    assert load_settings(embedding_backend=" ONNX ").embedding_backend == "onnx"
    with pytest.raises(ConfigError, match="CLARA_EMBEDDING_BACKEND: must be one of torch or onnx"):
        load_settings(embedding_backend="tensorflow")


@pytest.mark.slow
def test_cli_build_and_reembed(db_engine, admin, settings, tmp_path, onnx_folder):
    src = tmp_path / "hund.md"
    src.write_text(DOCS["hund.md"], encoding="utf-8")
    ingest_paths(db_engine, admin, [src], IngestOptions(), settings)
    _use_onnx_folder(settings, onnx_folder)
    env = {
        **os.environ,
        "CLARA_DATA_DIR": str(settings.data_path),
        "CLARA_DATABASE_URL": settings.effective_database_url,
        "CLARA_ENV": "testing",
        "CLARA_ADMIN_PASSWORD": "adminpass1",
        "CLARA_EMBEDDING_BACKEND": "onnx",
    }

    def clara(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", "corpus", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    built = clara("build-onnx", "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["folder"] == str(onnx_model_dir(settings))
    out = clara("embed", "--all", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"embedded": 1, "pending": 0}
    reset_vector_stores()
    assert get_vector_store(load_settings(embedding_backend="onnx")).count() == 1


# Error paths ---------------------------------------------------------------------------------


@pytest.fixture
def plain_settings(data_dir, monkeypatch):
    """A data dir and no database: these paths fail before any database is used."""
    monkeypatch.setenv("CLARA_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CLARA_ENV", "testing")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_missing_onnxruntime_names_what_to_do(plain_settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    onnx = _switch(monkeypatch, "onnx")
    with pytest.raises(OnnxBackendUnavailable, match="pip install onnxruntime"):
        get_embedder(onnx)


def test_failed_build_says_what_to_do_and_leaves_nothing(plain_settings, tmp_path, monkeypatch):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in _source().iterdir():
        if f.is_file():
            (broken / f.name).symlink_to(f)
    (broken / "1_Pooling").symlink_to(_source() / "1_Pooling")
    (broken / "model.safetensors").unlink()
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    monkeypatch.setenv("CLARA_EMBEDDING_MODEL", str(broken))
    onnx = _switch(monkeypatch, "onnx")
    with pytest.raises(OnnxBackendUnavailable, match="CLARA_EMBEDDING_BACKEND=torch") as err:
        ensure_onnx_model(onnx)
    assert "build-onnx --force" in str(err.value)
    models = onnx_model_dir(onnx).parent
    assert not onnx_model_dir(onnx).exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_unsupported_module_is_refused(plain_settings, tmp_path, monkeypatch):
    odd = tmp_path / "odd-model"
    shutil.copytree(_source(), odd, ignore=shutil.ignore_patterns("model.safetensors"))
    modules = json.loads((odd / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (odd / "modules.json").write_text(json.dumps(modules))
    (odd / "model.safetensors").symlink_to(_source() / "model.safetensors")
    monkeypatch.setenv("CLARA_EMBEDDING_MODEL", str(odd))
    onnx = _switch(monkeypatch, "onnx")
    with pytest.raises(OnnxBackendUnavailable, match="Dense.*not supported"):
        ensure_onnx_model(onnx)

"""Quality scoring runs over a dataset: in process, and as a "score" job of the one queue that
`clara worker` runs in a child process (real worker, real child, both engines)."""

from __future__ import annotations

import threading
import time

import pytest

from core.datasets.errors import DatasetError
from core.datasets.models import DatasetSample
from core.datasets.scoring import (
    cancel_scoring,
    execute_run,
    get_scoring_run,
    score_dataset,
    start_scoring,
)
from core.datasets.service import SampleIn, add_samples, create_dataset, set_thresholds
from core.db import reading
from core.training.jobs import get_job
from workers.trainer import Worker

GOOD = (
    "Die Abfallgebührensatzung der Stadt regelt, wie die Gebühren für die Abfuhr von "
    "Restmüll, Biomüll und Sperrmüll berechnet werden und wann sie fällig sind."
)


def _text(t: str, **kw) -> SampleIn:
    return SampleIn(kind="text", text=t, provenance={"source": "manual"}, **kw)


def test_scores_reasons_and_cross_dataset_duplicates(db_engine, admin):
    other = create_dataset(db_engine, admin, "other")
    (other_id,) = add_samples(db_engine, admin, other.id, [_text(GOOD)])
    ds = create_dataset(db_engine, admin, "mine")
    ids = add_samples(
        db_engine,
        admin,
        ds.id,
        [
            _text("Kurz."),
            _text(GOOD),  # copy of the other dataset's sample
            _text(
                "Schreiben Sie an info@example.org, wenn Sie Fragen zur Satzung der Stadt "
                "haben, wir antworten schnell."
            ),
            SampleIn(
                kind="chat",
                messages=[
                    {"role": "user", "content": "Wann wird der Sperrmüll in der Stadt abgeholt?"},
                    {
                        "role": "assistant",
                        "content": "Der Sperrmüll wird auf Anmeldung zweimal im "
                        "Jahr kostenlos abgeholt.",
                    },
                ],
            ),
        ],
    )
    seen = []
    run = score_dataset(db_engine, admin, "mine", progress=lambda d, t: seen.append((d, t)))
    assert run.status == "done" and run.done == 4 and seen[-1] == (4, 4)
    assert run.stats["tokenizer"] == "regex (fallback)"
    with reading(db_engine) as s:
        rows = {r.id: r for r in s.query(DatasetSample).filter(DatasetSample.dataset_id == ds.id)}
        assert "too_short" in rows[ids[0]].reasons and rows[ids[0]].score < 0.5
        assert rows[ids[1]].duplicate_of == f"other#{other_id}"
        assert "exact_duplicate" in rows[ids[1]].reasons
        pii = rows[ids[2]]
        assert "pii_email" in pii.reasons and pii.reason_codes.count(",pii_email,") == 1
        start, end, reason = next(sp for sp in pii.flagged_spans if sp[2] == "pii_email")
        assert pii.text[start:end] == "info@example.org"
        chat = rows[ids[3]]
        assert chat.score is not None and chat.token_count > 10
        assert all(0.0 <= r.score <= 1.0 for r in rows.values())


def test_thresholds_per_dataset(db_engine, admin):
    ds = create_dataset(db_engine, admin, "t")
    add_samples(db_engine, admin, ds.id, [_text(GOOD)])
    set_thresholds(db_engine, admin, ds.id, {"min_chars": 500})
    score_dataset(db_engine, admin, ds.id)
    with reading(db_engine) as s:
        row = s.query(DatasetSample).one()
        assert row.reasons == ["too_short"]
    with pytest.raises(DatasetError, match="min_chars"):
        set_thresholds(db_engine, admin, ds.id, {"min_chars": -1})
    with pytest.raises(DatasetError, match="min_charz"):
        set_thresholds(db_engine, admin, ds.id, {"min_charz": 3})


def test_background_run_is_a_score_job_of_the_worker(db_engine, admin, settings):
    ds = create_dataset(db_engine, admin, "bg")
    add_samples(db_engine, admin, ds.id, [_text(GOOD + f" Absatz {i}.") for i in range(300)])
    run = start_scoring(db_engine, admin, ds.id)
    assert run.status == "queued" and run.total == 300 and run.job_id
    job = get_job(db_engine, admin, run.job_id)
    assert job.kind == "score" and job.state == "queued"
    time.sleep(0.2)
    # Queued is not stale: a run waits for a worker as long as it takes.
    with pytest.raises(DatasetError, match="being scored already"):
        start_scoring(db_engine, admin, ds.id)
    # A worker limited to training does not take it; one for scoring does.
    Worker(settings, engine=db_engine, once=True, kinds=("sft",), log=lambda m: None).run()
    assert get_job(db_engine, admin, run.job_id).state == "queued"
    Worker(settings, engine=db_engine, once=True, kinds=("score",), log=lambda m: None).run()
    info = get_scoring_run(db_engine, admin, run.id)
    assert info.status == "done", info.error
    assert info.done == 300
    job = get_job(db_engine, admin, run.job_id)
    assert job.state == "succeeded" and (job.step, job.max_steps) == (300, 300)
    with reading(db_engine) as s:
        assert s.query(DatasetSample).filter(DatasetSample.score.is_(None)).count() == 0


def test_resumed_run_keeps_finished_batches_and_still_finds_duplicates(db_engine, admin):
    """A killed worker's run resumes: scores of committed batches stay (not rewritten),
    the rest is scored, and a duplicate of an already scored sample is still found."""
    ds = create_dataset(db_engine, admin, "resume")
    texts = [GOOD + f" Absatz {i}." for i in range(300)] + [GOOD + " Absatz 3."]
    ids = add_samples(db_engine, admin, ds.id, [_text(t) for t in texts])
    run = start_scoring(db_engine, admin, ds.id)
    stop = threading.Event()
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        stop.set()  # as if the worker asked it to stop after the first batch

    assert execute_run(db_engine, run.id, progress, stop=stop, resume=True) == ("stopped", None)
    assert seen == [256]
    with reading(db_engine) as s:
        first = {
            r.id: r.scored_at
            for r in s.query(DatasetSample).filter(DatasetSample.score.isnot(None))
        }
    assert len(first) == 256
    assert get_scoring_run(db_engine, admin, run.id).status == "running"
    # The next attempt (a new process after the kill) resumes the run.
    assert execute_run(db_engine, run.id, resume=True) == ("done", None)
    info = get_scoring_run(db_engine, admin, run.id)
    assert info.status == "done" and info.done == 301
    with reading(db_engine) as s:
        rows = {r.id: (r.scored_at, r.score, r.duplicate_of) for r in s.query(DatasetSample)}
    assert all(rows[i][0] == at for i, at in first.items())  # not scored twice
    assert all(score is not None for _at, score, _dup in rows.values())
    assert rows[ids[-1]][2] == str(ids[3])


def test_cancel_a_queued_run_ends_run_and_job(db_engine, admin):
    ds = create_dataset(db_engine, admin, "cq")
    add_samples(db_engine, admin, ds.id, [_text(GOOD)])
    run = start_scoring(db_engine, admin, ds.id)
    cancel_scoring(db_engine, admin, run.id)
    assert get_scoring_run(db_engine, admin, run.id).status == "cancelled"
    assert get_job(db_engine, admin, run.job_id).state == "cancelled"
    # A new run can start at once.
    again = start_scoring(db_engine, admin, ds.id)
    # Its job cancelled elsewhere (Training page): the run shows it, and does not block.
    from core.training.queue import request_cancel

    request_cancel(db_engine, again.job_id)
    assert get_scoring_run(db_engine, admin, again.id).status == "cancelled"
    third = start_scoring(db_engine, admin, ds.id)
    assert third.id != again.id


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_base_model_tokenizer_counts_tokens(db_engine, admin, tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from core.config import get_settings

    # A character-level tokenizer: its token count is easy to predict and differs from the
    # library's regex fallback.
    vocab = {c: i for i, c in enumerate(["<unk>", *sorted(set(GOOD))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(
        tmp_path / "base"
    )
    monkeypatch.setenv("CLARA_BASE_MODEL", str(tmp_path / "base"))
    get_settings.cache_clear()
    ds = create_dataset(db_engine, admin, "tok")
    add_samples(db_engine, admin, ds.id, [_text(GOOD)])
    run = score_dataset(db_engine, admin, ds.id)
    assert run.stats["tokenizer"] == f"base model {tmp_path / 'base'}"
    with reading(db_engine) as s:
        assert s.query(DatasetSample).one().token_count == len(GOOD)

    monkeypatch.setenv("CLARA_BASE_MODEL", str(tmp_path / "missing"))
    get_settings.cache_clear()
    run = score_dataset(db_engine, admin, ds.id)
    assert run.stats["tokenizer"] == "regex (fallback)"


LONG = (
    "Die Friedhofssatzung der Stadt Bergheim regelt die Nutzung der städtischen Friedhöfe, "
    "die Vergabe von Grabstätten, die Ruhezeiten, die Gestaltung der Grabmale und die Pflege "
    "der Gräber durch die Nutzungsberechtigten. Bestattungen finden werktags statt und "
    "müssen beim Friedhofsamt angemeldet werden, das auch über Ausnahmen entscheidet. Die "
    "Ruhezeit beträgt für Erdbestattungen zwanzig Jahre und für Urnen fünfzehn Jahre; danach "
    "kann das Nutzungsrecht auf Antrag verlängert werden, sofern der Platz nicht benötigt wird."
)


def test_cross_dataset_near_duplicate_from_stored_signatures(db_engine, admin):
    from core.datasets.quality import QualityThresholds
    from core.datasets.scoring import _reference, minhash_key

    other = create_dataset(db_engine, admin, "other")
    (oid,) = add_samples(db_engine, admin, other.id, [_text(LONG)])
    score_dataset(db_engine, admin, other.id)
    with reading(db_engine) as s:
        stored = s.get(DatasetSample, oid)
        assert stored.minhash and stored.signals["minhash_key"] == minhash_key(QualityThresholds())
    mine = create_dataset(db_engine, admin, "mine")
    (mid,) = add_samples(db_engine, admin, mine.id, [_text(LONG[:-1] + " und Ende.")])
    texts, hashes, sigs = _reference(db_engine, mine.id, minhash_key(QualityThresholds()))
    assert texts == [] and [r for r, _ in sigs] == [f"other#{oid}"]
    score_dataset(db_engine, admin, mine.id)
    with reading(db_engine) as s:
        row = s.get(DatasetSample, mid)
        assert "near_duplicate" in row.reasons and row.duplicate_of == f"other#{oid}"


def test_scoring_waits_out_a_writer_that_holds_the_lock_past_the_busy_timeout(
    db_engine, admin, monkeypatch
):
    """Issue 10 item 11: the scoring writer read-then-wrote with a plain BEGIN, so another
    process's write made it fail at once with 'database is locked' (and the run with it)."""
    if db_engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    import core.db.engine as db_engine_module
    from tests.integration.test_corpus_hardening_locks import Holder

    ds = create_dataset(db_engine, admin, "locked")
    add_samples(db_engine, admin, ds.id, [_text(GOOD + f" Fall {i}.") for i in range(5)])
    monkeypatch.setattr(db_engine_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    db_engine.dispose()  # new connections get the short busy timeout
    holder = Holder(db_engine.url.database, seconds=2.5)
    try:
        run = score_dataset(db_engine, admin, ds.id)
    finally:
        holder.wait()
    assert run.status == "done", run.error
    assert run.done == 5

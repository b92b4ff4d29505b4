"""`clara corpus embed-tune | embed-models | embed-model`: an embedding model adapted to the
corpus (core.corpus.embed_tune). Switching the corpus to one is `clara corpus embed --all
--model NAME` (cli/corpus.py)."""

from __future__ import annotations

import time

import typer

from cli.common import CliFailure, console, context, print_json, print_rows
from cli.corpus import _progress, corpus_app


def _figures(metrics: dict, phase: str) -> str:
    f = metrics.get(f"validation_{phase}") or {}
    if not f:
        return ""
    return f"R@5 {f.get('recall@5', 0):.2f} MRR {f.get('mrr@10', 0):.2f}"


@corpus_app.command("embed-tune")
def embed_tune(
    name: str = typer.Argument(..., help="name of the tuned model (a-z, 0-9, '_', '-')"),
    epochs: int = typer.Option(1, help="passes over the training pairs"),
    max_steps: int = typer.Option(0, "--max-steps", help="stop after this many steps (0: epochs)"),
    batch_size: int = typer.Option(16, "--batch-size", help="pairs per batch (in-batch negatives)"),
    learning_rate: float = typer.Option(3e-5, "--learning-rate"),
    sources: str = typer.Option(
        "titles,headings,samples",
        help="where pairs come from, comma-separated: titles, headings, sentences (a chunk's "
        "first sentence → the rest), samples (accepted dataset samples whose provenance names "
        "a document)",
    ),
    max_pairs: int = typer.Option(1600, "--max-pairs", help="training pairs at most"),
    seed: int = typer.Option(42),
    wait: bool = typer.Option(False, "--wait", help="wait (progress bar) until a worker ran it"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Queue an "embed-tune" job: fine-tune the embedding model on the corpus (for `clara
    worker`, e.g. `clara worker --kinds embed-tune`)."""
    from core.corpus.embed_tune import get_embedding_model, submit_embed_tune
    from core.training.jobs import get_job

    ctx = context()
    spec = {
        "name": name,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "sources": [s.strip() for s in sources.split(",") if s.strip()],
        "max_pairs": max_pairs,
        "seed": seed,
    }
    job_id = submit_embed_tune(ctx.engine, ctx.user, spec, ctx.settings)
    job = get_job(ctx.engine, ctx.user, job_id)
    with _progress(wait and not json_out) as progress:
        while wait and job.state in ("queued", "running"):
            if progress and job.state == "running" and job.max_steps:
                progress("tuning", job.step, job.max_steps, f"job {job_id}")
            time.sleep(1.0)
            job = get_job(ctx.engine, ctx.user, job_id)
    if wait and job.state != "succeeded":
        raise CliFailure(f"embed-tune job {job_id} {job.state}: {job.error or 'see its log'}")
    model = get_embedding_model(ctx.engine, ctx.user, name, ctx.settings) if wait else None
    if json_out:
        print_json({"job_id": job_id, "state": job.state, "model": model})
    elif model is not None:
        console.print(
            f"embed-tune job {job_id}: tuned embedding model {model.name!r} registered "
            f"({_figures(model.metrics, 'before')} → {_figures(model.metrics, 'after')} on "
            f"held-back pairs); switch the corpus to it with `clara corpus embed --all "
            f"--model {model.name}`"
        )
    else:
        console.print(f"embed-tune job {job_id}: {job.state} (`clara worker` runs it)")


@corpus_app.command("embed-models")
def embed_models(json_out: bool = typer.Option(False, "--json")) -> None:
    """Tuned embedding models with their lineage (* marks the one the corpus uses)."""
    from core.corpus.embed_tune import list_embedding_models

    ctx = context()
    rows = list_embedding_models(ctx.engine, ctx.user, ctx.settings)
    print_rows(
        rows,
        json_out,
        ["", "id", "name", "job", "docs", "pairs", "before", "after", "created"],
        lambda m: [
            "*" if m.active else "",
            m.id,
            m.name,
            m.job_id,
            m.corpus_documents,
            m.pairs.get("train"),
            _figures(m.metrics, "before"),
            _figures(m.metrics, "after"),
            m.created_at.strftime("%Y-%m-%d %H:%M"),
        ],
    )


@corpus_app.command("embed-model")
def embed_model(
    ref: str = typer.Argument(..., help="name or id"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """One tuned embedding model: lineage, spec, pairs and validation figures."""
    from core.corpus.embed_tune import get_embedding_model

    ctx = context()
    m = get_embedding_model(ctx.engine, ctx.user, ref, ctx.settings)
    if json_out:
        print_json(m)
        return
    for label, value in [
        ("name", m.name + ("  (the corpus uses it)" if m.active else "")),
        ("path", m.path),
        ("base model", m.base_model),
        ("job", m.job_id),
        ("corpus", f"{m.corpus_documents} documents, {m.corpus_chunks} chunks"),
        ("corpus sha256", m.corpus_sha256),
        ("pairs", m.pairs),
        ("validation before", m.metrics.get("validation_before")),
        ("validation after", m.metrics.get("validation_after")),
        ("steps / seconds", f"{m.metrics.get('steps')} / {m.metrics.get('seconds')}"),
        ("spec", m.spec),
        ("created", f"{m.created_at:%Y-%m-%d %H:%M} by {m.created_by}"),
    ]:
        console.print(f"[bold]{label}:[/] {value}", soft_wrap=True)

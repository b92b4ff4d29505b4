"""`clara corpus ...`: ingest, search, show, stats, delete, embed, build-onnx, load-sample,
searches."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.common import (
    EXIT_FAILED,
    CliFailure,
    app,
    console,
    context,
    err_console,
    print_json,
    print_rows,
    stage_progress,
)

corpus_app = typer.Typer(help="Documents: ingest, search, inspect, delete.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


def _progress(enabled: bool):
    return stage_progress(enabled, labels={"files": "ingesting", "embedding": "embedding"})


def _print_report(report, json_out: bool, exit_on_failure: bool = True) -> None:
    if json_out:
        print_json(report.to_dict())
    else:
        s = report.summary()
        console.print(
            f"files: {s['files']}   added: [bold]{s['added']}[/]   updated: {s['updated']}   "
            f"unchanged: {s['unchanged']}   failed files: {s['failed_files']}   "
            f"partial: {s['partial_files']}   embedded chunks: {s['embedded']}   "
            f"pending embeddings: {s['pending_embeddings']}   ({s['seconds']} s)"
        )
        _print_links(report.links)
        for f in report.files:
            for w in f.warnings:
                err_console.print(f"[yellow]warning:[/] {f.path}: {w}")
        for f in report.failed_files:
            label = "[red]failed[/]" if f.status == "failed" else "[yellow]partly failed[/]"
            for p in f.problems:
                err_console.print(f"{label} {f.path}: {p}")
        if report.embed_job_id is not None:
            console.print(
                f"embeddings: job {report.embed_job_id} queued for the worker; keyword and "
                "graph search find the new documents now, vector search once it has run. "
                f"Follow it with `clara corpus embed --wait` or `clara train show "
                f"{report.embed_job_id}`."
            )
    if not report.ok and exit_on_failure:
        raise typer.Exit(EXIT_FAILED)


def _print_links(links) -> None:
    if not (links.resolved or links.unresolved or links.resolved_earlier):
        return
    console.print(
        f"links: {links.resolved} resolved, {links.unresolved} unresolved"
        + (
            f", {links.resolved_earlier} of earlier ingests resolved now"
            if links.resolved_earlier
            else ""
        )
    )
    if links.unresolved:
        err_console.print(
            f"[yellow]warning:[/] {links.unresolved} links name no document in the corpus; "
            "they are kept and resolve when their target is ingested (--link-key chooses "
            "how links are matched). The first ones:"
        )
        for u in links.first_unresolved:
            err_console.print(f"  {u['src']} → {u['ref']!r}: {u['reason']}", markup=False)


@corpus_app.command("ingest")
def ingest(
    paths: list[str] = typer.Argument(..., help="files or folders (folders recursively)"),
    type_: str | None = typer.Option(
        None, "--type", help="document_type for documents without one"
    ),
    domain: str | None = typer.Option(None, help="domain for documents without one"),
    map_: str | None = typer.Option(
        None,
        "--map",
        help="column mapping for jsonl/json/csv/parquet, e.g. "
        "text=body,title=headline,id=key,links=refs",
    ),
    glob: list[str] = typer.Option([], "--glob", help="only files matching (repeatable)"),
    exclude: list[str] = typer.Option([], "--exclude", help="skip files matching (repeatable)"),
    no_embed: bool = typer.Option(
        False, "--no-embed", help="leave embeddings pending, queue nothing (`clara corpus embed`)"
    ),
    wait: bool = typer.Option(
        False, "--wait", help="wait (progress bar) until the worker has embedded the new chunks"
    ),
    inline: bool = typer.Option(
        False, "--inline", help="embed here, in this process, instead of queuing a job"
    ),
    link_key: str = typer.Option(
        "auto",
        "--link-key",
        help="how link values name documents: id, filename, title, alias (e.g. rm(1)), or "
        "auto (each in that order: id, filename, alias, title)",
    ),
    chunk_tokens: int = typer.Option(240, help="chunk size in embedding-model tokens"),
    chunk_overlap: int = typer.Option(32, help="overlap between chunks in tokens"),
    max_doc_mb: float = typer.Option(10.0, help="largest single document / line in MB"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Ingest files and folders; prints a per-file report, exit code 1 if anything failed.

    Returns once the documents are keyword- and graph-searchable; their embeddings are an
    "embed" job for `clara worker` (started by `clara up`): --wait follows it, --inline
    embeds in this process instead, --no-embed leaves them pending."""
    from core.corpus.embedding import start_embedding
    from core.corpus.ingest import IngestError, IngestOptions, ingest_paths

    if sum((no_embed, wait, inline)) > 1:
        raise CliFailure("choose one of --no-embed, --wait and --inline")
    ctx = context()
    try:
        opts = IngestOptions(
            document_type=type_,
            domain=domain,
            mapping=map_,
            globs=glob,
            exclude=exclude,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            max_document_bytes=int(max_doc_mb * 1024 * 1024),
            embed=inline,
            link_key=link_key,
        )
        with _progress(not json_out) as progress:
            report = ingest_paths(ctx.engine, ctx.user, paths, opts, ctx.settings, progress)
    except (IngestError, ValueError) as err:
        raise CliFailure(str(err)) from None
    queued = not (no_embed or inline) and report.pending_embeddings > 0
    if queued:
        report.embed_job_id = start_embedding(ctx.engine, ctx.user, ctx.settings)
    if not (queued and wait):
        _print_report(report, json_out)
        return
    if not json_out:  # the report first: the wait may be long
        _print_report(report, json_out, exit_on_failure=False)
    outcome: dict | None = None
    try:
        outcome = _wait_for_embedding(ctx, report.embed_job_id, json_out)
    finally:  # one JSON document, with the job's outcome when the wait got one
        if json_out:
            print_json({**report.to_dict(), **({"embedding": outcome} if outcome else {})})
    if not json_out:
        _print_embedding(outcome, json_out=False)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _wait_for_embedding(ctx, job_id: int, json_out: bool) -> dict:
    """Follow an embed job to its end (progress bar) and return its outcome; fail clearly
    when it failed or when no worker is there to run it."""
    from core.corpus.embedding import NoEmbedWorker, pending_count, wait_for_embedding

    try:
        with _progress(not json_out) as progress:
            job = wait_for_embedding(ctx.engine, ctx.user, job_id, progress)
    except NoEmbedWorker as err:
        raise CliFailure(str(err)) from None
    if job is not None and job.state != "succeeded":
        raise CliFailure(f"embed job {job_id} {job.state}: {job.error or 'see its log'}")
    return {
        "job_id": job_id,
        "state": job.state if job else None,
        "pending": pending_count(ctx.engine, ctx.user),
    }


def _print_embedding(outcome: dict, json_out: bool) -> None:
    if json_out:
        print_json(outcome)
    else:
        console.print(
            f"embed job {outcome['job_id']}: {outcome['state'] or '?'}; "
            f"{outcome['pending']} pending"
        )


@corpus_app.command("load-sample")
def load_sample_cmd(
    no_embed: bool = typer.Option(False, "--no-embed"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Ingest the sample corpus (examples/corpus: German municipal documents)."""
    from core.corpus.sample import load_sample, sample_available

    if not sample_available():
        raise CliFailure("the sample corpus (examples/corpus) is not part of this installation")
    ctx = context()
    with _progress(not json_out) as progress:
        report = load_sample(
            ctx.engine, ctx.user, ctx.settings, embed=not no_embed, progress=progress
        )
    _print_report(report, json_out)


@corpus_app.command("embed")
def embed(
    batch_size: int = typer.Option(256, help="chunks per batch"),
    all_chunks: bool = typer.Option(
        False,
        "--all",
        help="re-embed every chunk with the configured model and backend (after changing "
        "CLARA_EMBEDDING_MODEL or CLARA_EMBEDDING_BACKEND): clears the vector store first",
    ),
    queue: bool = typer.Option(
        False, "--queue", help="queue an embed job for `clara worker` and return at once"
    ),
    wait: bool = typer.Option(
        False, "--wait", help="queue an embed job and wait (progress bar) until a worker ran it"
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="with --all: switch the corpus to this tuned embedding model (`clara corpus "
        "embed-models`), or back to the configured one with `base`",
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Compute the pending embeddings: here and now (default), or as a job for the worker."""
    from core.corpus.embedders import get_embedder
    from core.corpus.embedding import (
        embed_pending,
        embedding_job,
        pending_count,
        reset_embeddings,
        start_embedding,
    )

    ctx = context()
    user = ctx.user
    if model is not None and not all_chunks:
        raise CliFailure("--model switches the model of every chunk: use it with --all")
    if model is not None:
        from core.corpus.embed_tune import use_embedding_model

        identity, _pending = use_embedding_model(ctx.engine, user, ctx.settings, model)
        if not json_out:
            console.print(f"the corpus now uses {identity}; every chunk is re-embedded")
    elif all_chunks:
        get_embedder(ctx.settings)  # a model that cannot load must not cost the old vectors
        reset_embeddings(ctx.engine, user, ctx.settings)
    if queue or wait:
        job_id = start_embedding(ctx.engine, user, ctx.settings, batch_size=batch_size)
        if wait:
            _print_embedding(_wait_for_embedding(ctx, job_id, json_out), json_out)
            return
        job = embedding_job(ctx.engine, user)
        left = pending_count(ctx.engine, user)
        if json_out:
            print_json({"job_id": job_id, "state": job.state if job else None, "pending": left})
        else:
            console.print(f"embed job {job_id}: {job.state if job else '?'}; {left} pending")
        return
    with _progress(not json_out) as progress:
        n = embed_pending(ctx.engine, user, ctx.settings, batch_size=batch_size, progress=progress)
    left = pending_count(ctx.engine, user)
    if json_out:
        print_json({"embedded": n, "pending": left})
    else:
        console.print(f"embedded {n} chunks; {left} pending")


@corpus_app.command("build-onnx")
def build_onnx(
    force: bool = typer.Option(False, "--force", help="rebuild even if it is up to date"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Build the int8 ONNX model of the embedding model (CLARA_EMBEDDING_BACKEND=onnx builds
    it on first use otherwise) into the data dir."""
    import json

    from core.artifacts import MANIFEST
    from core.corpus.onnx_embedder import ensure_onnx_model

    ctx = context()

    def say(msg: str) -> None:
        if not json_out:
            err_console.print(msg)

    folder = ensure_onnx_model(ctx.settings, force=force, progress=say)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if json_out:
        print_json({"folder": str(folder), **manifest})
    else:
        console.print(
            f"int8 ONNX model: {folder} (cosine against the source model on the check "
            f"sentences ≥ {manifest.get('check_min_cosine')}; built {manifest.get('built_at')}). "
            "Use it with CLARA_EMBEDDING_BACKEND=onnx, then `clara corpus embed --all`."
        )


def _parse_weights(spec: str | None) -> dict[str, float] | None:
    if not spec:
        return None
    out = {}
    for part in spec.split(","):
        if "=" not in part:
            raise CliFailure(f"--weights {spec!r}: write vector=0.35,graph=0.1,keyword=0.55")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise CliFailure(f"--weights: {v!r} is not a number") from None
    return out


@corpus_app.command("search")
def search_cmd(
    query: str = typer.Argument("", help="the question or keywords"),
    mode: str = typer.Option("hybrid", help="keyword | vector | graph | hybrid"),
    k: int = typer.Option(10, "--k", "-k", help="number of results"),
    filter_: list[str] = typer.Option(
        [],
        "--filter",
        help="KEY=VALUE: document_type, domain, date_from, date_to or a metadata key (repeatable)",
    ),
    weights: str | None = typer.Option(
        None, help="vector=0.35,graph=0,keyword=0.65 (the defaults)"
    ),
    fusion: str = typer.Option("weighted", help="weighted | rrf"),
    seed: list[str] = typer.Option([], "--seed", help="graph mode: expand from these ids"),
    hops: int = typer.Option(1, help="graph expansion depth (1-4)"),
    save: str | None = typer.Option(None, help="also save this search under a name"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Search the corpus; every result shows its per-mode scores."""
    from pydantic import ValidationError

    from core.corpus.documents import DocumentFilters
    from core.corpus.search import SearchRequest, save_search, search

    ctx = context()
    user = ctx.user
    try:
        req = SearchRequest(
            query=query,
            mode=mode,
            k=k,
            fusion=fusion,
            seed_ids=seed,
            hops=hops,
            filters=DocumentFilters.parse(filter_),
            **({"weights": w} if (w := _parse_weights(weights)) else {}),
        )
    except (ValidationError, ValueError) as err:
        raise CliFailure(_one_line(err)) from None
    if not query and not seed:
        raise CliFailure("give a query (or --seed ids with --mode graph)")
    results = search(ctx.engine, user, req, ctx.settings)
    if save:
        save_search(ctx.engine, user, save, req)
    if json_out:
        print_json([r.model_dump(mode="json") for r in results])
        return
    if not results:
        console.print("no results")
        return
    t = Table(
        "#", "score", "doc_id", "title", "keyword", "vector", "graph", "snippet", show_lines=False
    )
    for r in results:
        t.add_row(
            str(r.rank),
            f"{r.score:.3f}",
            r.doc_id,
            r.title[:50],
            *(
                f"{r.scores[m]:.2f}" if m in r.scores else "-"
                for m in ("keyword", "vector", "graph")
            ),
            r.snippet[:120],
        )
    console.print(t)


def _one_line(err: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e.get("loc", ()))
        return f"{loc}: {e.get('msg', 'invalid')}".removeprefix(": ")
    return str(err)


@corpus_app.command("show")
def show(
    doc_id: str,
    json_out: bool = typer.Option(False, "--json"),
    chunks: bool = typer.Option(False, "--chunks", help="also list the chunks"),
) -> None:
    """Show one document: metadata, text and related documents."""
    from core.corpus.documents import (
        get_document,
        iter_chunks,
        related_documents,
    )

    ctx = context()
    user = ctx.user
    doc = get_document(ctx.engine, user, doc_id)
    related = related_documents(ctx.engine, user, doc_id, ctx.settings)
    chunk_list = list(iter_chunks(ctx.engine, user, [doc_id])) if chunks else []
    if json_out:
        print_json(
            {
                "document": doc,
                "related": related["edges"],
                **({"chunks": chunk_list} if chunks else {}),
            }
        )
        return
    console.print(f"[bold]{doc.title}[/bold]  ({doc.doc_id}, revision {doc.revision})")
    console.print(
        f"type: {doc.document_type}  domain: {doc.domain}  date: {doc.date}  "
        f"source: {doc.source_path}"
    )
    console.print(f"sha256: {doc.sha256}  ingested: {doc.ingested_at:%Y-%m-%d %H:%M:%S}")
    if doc.metadata:
        console.print(f"metadata: {doc.metadata}", markup=False)
    console.rule()
    console.print(doc.text, markup=False, highlight=False)
    console.rule()
    t = Table("from", "relation", "to", "evidence")
    for e in related["edges"]:
        if doc_id in (e["src"], e["dst"]):
            t.add_row(e["src"], e["type"], e["dst"], e["evidence"][:60])
    console.print(t)
    for c in chunk_list:
        console.print(
            f"[{c.chunk_index}] {c.start_char}-{c.end_char} ({c.token_count} tokens)", markup=False
        )


@corpus_app.command("stats")
def stats(json_out: bool = typer.Option(False, "--json")) -> None:
    """Counts: documents, chunks, pending embeddings, edges, per type and domain."""
    from core.corpus.documents import corpus_stats

    ctx = context()
    s = corpus_stats(ctx.engine, ctx.user)
    if json_out:
        print_json(s)
        return
    for key in (
        "documents",
        "chunks",
        "embedded_chunks",
        "pending_embeddings",
        "edges",
        "unresolved_links",
        "characters",
    ):
        console.print(f"{key}: {s[key]}")
    for group in ("by_document_type", "by_domain", "by_edge_type"):
        console.print(f"{group}: " + ", ".join(f"{k}={v}" for k, v in s[group].items()))


@corpus_app.command("delete")
def delete(doc_id: str, yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")) -> None:
    """Delete a document from the database, keyword, vector and graph indexes."""
    from core.corpus.documents import get_document
    from core.corpus.store_writes import delete_document

    ctx = context()
    # Permission first, the question after: nobody confirms what they may not do.
    user = ctx.allowed("corpus:ingest", "corpus.delete", doc_id)
    get_document(ctx.engine, user, doc_id)
    if not yes and not typer.confirm(f"Delete {doc_id} from all indexes?"):
        raise CliFailure("not deleted")
    delete_document(ctx.engine, user, doc_id, ctx.settings)
    console.print(f"deleted {doc_id}")


@corpus_app.command("searches")
def searches(json_out: bool = typer.Option(False, "--json")) -> None:
    """List saved searches."""
    from core.corpus.search import list_saved_searches

    ctx = context()
    rows = list_saved_searches(ctx.engine, ctx.user)
    print_rows(
        rows,
        json_out,
        ["name", "mode", "query", "k", "by"],
        lambda r: (
            r.name,
            r.request.mode,
            r.request.query[:60],
            str(r.request.k),
            r.created_by,
        ),
        data=[r.model_dump(mode="json") for r in rows],
    )


def offer_sample(ctx) -> None:
    """`clara up` on an empty corpus: load the sample corpus if the user wants it.

    CLARA_LOAD_SAMPLE=yes|no decides without asking; otherwise a terminal is asked and a
    non-interactive start leaves the corpus empty (the Corpus page offers a button).
    Embeddings are left pending: the Corpus page computes them in the background.
    """
    import sys

    from core.corpus.documents import corpus_stats
    from core.corpus.sample import load_sample, sample_available
    from core.permissions import SYSTEM

    choice = ctx.settings.load_sample
    if choice == "no" or not sample_available():
        return
    if corpus_stats(ctx.engine, SYSTEM)["documents"]:
        return
    if choice == "ask":
        if not sys.stdin.isatty():
            return
        if not typer.confirm(
            "The corpus is empty. Load the sample corpus (≈60 German documents)?", default=True
        ):
            return
    report = load_sample(ctx.engine, SYSTEM, ctx.settings, embed=False)
    console.print(
        f"sample corpus: {report.added} documents added "
        f"({report.pending_embeddings} chunks wait for embeddings)"
    )

"""Corpus: ingest (upload, or a server folder for admins), browse, search, read documents,
and pick documents for the Datasets page.

One render function per tab; the rules that turn form values into core arguments are in
core.corpus.forms."""

import datetime as dt
import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.corpus.documents import (
    DocumentFilters,
    DocumentNotFound,
    corpus_stats,
    document_revisions,
    facet_values,
    get_document,
    list_documents,
    related_documents,
)
from core.corpus.embedding import embedding_job, start_embedding
from core.corpus.forms import (
    FormError,
    add_to_selection,
    document_filters,
    ingest_options,
    page_count,
    page_offset,
    search_request,
)
from core.corpus.ingest import IngestError, ingest_server_folder, ingest_uploads
from core.corpus.link_keys import LINK_KEYS
from core.corpus.sample import load_sample, sample_available
from core.corpus.search import (
    DEFAULT_WEIGHTS,
    PAGE_VECTOR_WAIT_S,
    SearchRequest,
    list_saved_searches,
    save_search,
    search_response,
)
from ui import session

PAGE_SIZE = 25
UPLOAD_TYPES = ["txt", "md", "html", "htm", "pdf", "jsonl", "json", "csv", "parquet"]
user = session.require_principal()
engine, cfg = session.engine(), session.settings()
st.session_state.setdefault("selection_documents", [])
st.session_state.setdefault("corpus_results", [])
st.session_state.setdefault("corpus_report", None)


@st.fragment(run_every=3)
def _status() -> None:
    s = corpus_stats(engine, user)
    c = st.columns(5)
    c[0].metric("Documents", s["documents"])
    c[1].metric("Chunks", s["chunks"])
    c[2].metric("Pending embeddings", s["pending_embeddings"])
    c[3].metric("Relations", s["edges"])
    c[4].metric("Selected for datasets", len(st.session_state["selection_documents"]))
    job = embedding_job(engine, user)
    if s["pending_embeddings"]:
        done, total = s["chunks"] - s["pending_embeddings"], s["chunks"]
        where = ""
        if job is not None and job.state == "running":
            where = f" (embed job {job.id}: {job.done}/{job.total or '?'} in the background)"
        elif job is not None and job.state == "queued":
            where = f" (embed job {job.id} waits for a worker)"
        st.progress(
            done / total if total else 0.0, text=f"Embeddings: {done}/{total} chunks{where}"
        )
        st.caption(
            f"{s['pending_embeddings']} chunks wait for embeddings. Keyword and graph search "
            "already find these documents; vector search covers the embedded chunks."
        )
    if job is not None and job.state == "failed":
        st.error(f"Embedding failed (job {job.id}): {job.error}")


def _start_embedding(*, after_failure: bool = True) -> None:
    """Queue an embed job for the worker (one at a time); nothing runs in this process.
    Automatically (`after_failure=False`) not again after a failed one: the button does."""
    if not user.can("corpus:ingest"):
        return
    last = embedding_job(engine, user)
    if last is not None and last.state == "failed" and not after_failure:
        return
    start_embedding(engine, user, cfg)


def _progress_callback(bar):
    def update(stage: str, done: int, total: int | None, detail: str) -> None:
        frac = (done / total) if total else 0.0
        bar.progress(min(1.0, frac), text=f"{stage}: {done}/{total or '?'} {detail}")

    return update


def _select(doc_ids: list[str]) -> None:
    """Add documents to the page-to-page selection (kept in order, without repeats)."""
    st.session_state["selection_documents"] = add_to_selection(
        st.session_state["selection_documents"], doc_ids
    )


def _show_report(report: dict) -> None:
    s = report["summary"]
    msg = (
        f"{s['files']} files: {s['added']} added, {s['updated']} updated, "
        f"{s['unchanged']} unchanged, {s['failed_files']} failed, "
        f"{s['partial_files']} partly failed."
    )
    (st.success if not (s["failed_files"] or s["partial_files"]) else st.warning)(msg)
    problems = [
        {"file": f["path"], "status": f["status"], "problem": p}
        for f in report["files"]
        for p in f["problems"]
    ]
    warnings = [{"file": f["path"], "warning": w} for f in report["files"] for w in f["warnings"]]
    links = report.get("links") or {}
    if links.get("resolved") or links.get("unresolved") or links.get("resolved_earlier"):
        st.caption(
            f"Links: {links['resolved']} resolved, {links['unresolved']} unresolved"
            + (
                f", {links['resolved_earlier']} of earlier ingests resolved now"
                if links.get("resolved_earlier")
                else ""
            )
            + ". Unresolved links are kept and resolve when their target is ingested."
        )
    if links.get("first_unresolved"):
        st.dataframe(
            pd.DataFrame(links["first_unresolved"]),
            hide_index=True,
            width="stretch",
            key="corpus_report_unresolved",
        )
    if problems:
        st.dataframe(
            pd.DataFrame(problems),
            hide_index=True,
            width="stretch",
            key="corpus_report_problems",
        )
    if warnings:
        st.dataframe(
            pd.DataFrame(warnings),
            hide_index=True,
            width="stretch",
            key="corpus_report_warnings",
        )


def render_sample_offer() -> None:
    """On an empty corpus: offer the sample corpus; its report shows in this very run."""
    stats_now = corpus_stats(engine, user)
    if not (stats_now["documents"] == 0 and user.can("corpus:ingest") and sample_available()):
        return
    sample_box = st.empty()
    with sample_box.container():
        st.info(
            "The corpus is empty. Load the sample corpus (about 60 German municipal "
            "documents) to try search and dataset building."
        )
        load_clicked = st.button("Load sample corpus", key="corpus_load_sample", type="primary")
    if load_clicked:
        with sample_box.container():
            bar = st.progress(0.0, text="loading the sample corpus")
            report = load_sample(engine, user, cfg, embed=False, progress=_progress_callback(bar))
        # Shown in this run, below: no rerun that a busy machine would delay.
        st.session_state["corpus_report"] = report.to_dict()
        sample_box.empty()
        _start_embedding()


def _filters_ui(prefix: str, facets: dict[str, list[str]]) -> DocumentFilters:
    c1, c2, c3, c4 = st.columns(4)
    types = c1.multiselect("Document type", facets["document_type"], key=f"{prefix}_types")
    domains = c2.multiselect("Domain", facets["domain"], key=f"{prefix}_domains")
    date_from = c3.date_input(
        "From", value=None, key=f"{prefix}_from", min_value=dt.date(1900, 1, 1)
    )
    date_to = c4.date_input("To", value=None, key=f"{prefix}_to", min_value=dt.date(1900, 1, 1))
    meta_raw = st.text_input(
        "Metadata (key=value, comma separated)",
        key=f"{prefix}_meta",
        placeholder="zustaendig=Umweltamt",
    )
    filters, warnings = document_filters(types, domains, date_from, date_to, meta_raw)
    for warning in warnings:
        st.warning(warning)
    return filters


def render_search_tab(facets: dict[str, list[str]]) -> None:
    query = st.text_input(
        "Search", key="corpus_query", placeholder="z. B. Wie hoch ist die Hundesteuer?"
    )
    c1, c2, c3 = st.columns([2, 2, 1])
    mode = c1.radio(
        "Mode", ["hybrid", "keyword", "vector", "graph"], horizontal=True, key="corpus_mode"
    )
    fusion = c2.radio(
        "Fusion",
        ["weighted", "rrf"],
        horizontal=True,
        key="corpus_fusion",
        help="weighted: normalised scores × weights; rrf: reciprocal rank fusion",
    )
    k = c3.number_input("Results", 1, 100, 10, key="corpus_k")
    w1, w2, w3 = st.columns(3)
    weights = {
        "vector": w1.slider(
            "Vector weight", 0.0, 1.0, DEFAULT_WEIGHTS["vector"], 0.05, key="corpus_w_vector"
        ),
        "graph": w2.slider(
            "Graph weight", 0.0, 1.0, DEFAULT_WEIGHTS["graph"], 0.05, key="corpus_w_graph"
        ),
        "keyword": w3.slider(
            "Keyword weight", 0.0, 1.0, DEFAULT_WEIGHTS["keyword"], 0.05, key="corpus_w_keyword"
        ),
    }
    with st.expander("Filters"):
        filters = _filters_ui("corpus_search", facets)
    saved = list_saved_searches(engine, user)
    if st.button("Search", key="corpus_search_btn", type="primary"):
        try:
            req = search_request(query, mode, k, weights, fusion, filters)
        except FormError as err:
            st.error(str(err))
        else:
            with st.spinner("Searching…"):
                # Never waits for pending embeddings: vectors that are not ready are skipped.
                resp = search_response(engine, user, req, cfg, vector_wait_s=PAGE_VECTOR_WAIT_S)
            st.session_state["corpus_results"] = [r.model_dump() for r in resp.results]
            st.session_state["corpus_search_info"] = {
                "modes": resp.modes,
                "skipped": resp.skipped,
                "notes": resp.notes,
                "seconds": resp.seconds,
            }
            st.session_state["corpus_last_request"] = req.model_dump(mode="json")
    info = st.session_state.get("corpus_search_info")
    if info and st.session_state.get("corpus_last_request"):
        for skipped_mode, why in info["skipped"].items():
            st.info(
                f"{skipped_mode.capitalize()} search was skipped: {why}. "
                f"These results come from {', '.join(info['modes']) or 'no mode'}; "
                "search again in a moment for vectors."
            )
        for note in info["notes"]:
            st.caption(f"Note: {note}.")
    results = st.session_state["corpus_results"]
    if results:
        _render_results(results)
    elif st.session_state.get("corpus_last_request"):
        st.info("No results. Try other words, the hybrid mode or fewer filters.")
    if saved:
        st.caption("Saved searches: " + ", ".join(s.name for s in saved))


def _render_results(results: list[dict]) -> None:
    rows = [
        {
            "#": r["rank"],
            "doc_id": r["doc_id"],
            "title": r["title"],
            "score": round(r["score"], 3),
            **{m: r["scores"].get(m) for m in ("keyword", "vector", "graph")},
            "snippet": r["snippet"],
            "related via": r["related_via"],
        }
        for r in results
    ]
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="stretch",
        key="corpus_results_table",
        column_config={"snippet": st.column_config.TextColumn(width="large")},
    )
    ids = [r["doc_id"] for r in results]
    c1, c2 = st.columns([3, 1])
    picked = c1.multiselect("Select results for a dataset", ids, default=ids, key="corpus_pick")
    if c2.button("Add to selection", key="corpus_add_selection"):
        _select(picked)
        st.success(
            f"{len(st.session_state['selection_documents'])} documents selected; "
            "open the Datasets page to turn them into samples."
        )
    c1, c2 = st.columns([3, 1])
    open_id = c1.selectbox("Open a result", ids, key="corpus_open_result")
    if c2.button("Open document", key="corpus_open_btn"):
        st.session_state["corpus_doc_id"] = open_id
        st.info(f"Showing {open_id} in the Document tab.")
    c1, c2 = st.columns([3, 1])
    name = c1.text_input("Save this search as", key="corpus_save_name")
    if c2.button("Save search", key="corpus_save_btn") and name.strip():
        req = SearchRequest(**st.session_state["corpus_last_request"])
        save_search(engine, user, name, req)
        st.success(f"Saved as {name!r}; the Datasets page can build from it.")


def render_browse_tab(facets: dict[str, list[str]]) -> None:
    with st.expander("Filters", expanded=False):
        bfilters = _filters_ui("corpus_browse", facets)
    title_part = st.text_input("Title contains", key="corpus_browse_title")
    bfilters = bfilters.model_copy(update={"title_contains": title_part or None})
    _, total = list_documents(engine, user, 0, 1, bfilters)
    pages = page_count(total, PAGE_SIZE)
    c1, c2 = st.columns([1, 3])
    page_no = c1.number_input("Page", 1, pages, 1, key="corpus_browse_page")
    frame, total = list_documents(
        engine, user, page_offset(page_no, PAGE_SIZE), PAGE_SIZE, bfilters
    )
    c2.caption(f"{total} documents · page {int(page_no)} of {pages}")
    st.dataframe(frame, hide_index=True, width="stretch", key="corpus_browse_table")
    if len(frame):
        c1, c2, c3 = st.columns([3, 1, 1])
        bid = c1.selectbox("Document", list(frame["doc_id"]), key="corpus_browse_open")
        if c2.button("Open", key="corpus_browse_open_btn"):
            st.session_state["corpus_doc_id"] = bid
            st.info(f"Showing {bid} in the Document tab.")
        if c3.button("Select page", key="corpus_browse_select"):
            _select(list(frame["doc_id"]))


def _graph_figure(rel: dict) -> go.Figure:
    nodes = rel["nodes"]
    pos = {rel["center"]: (0.0, 0.0)}
    ring = [n for n in nodes if n["doc_id"] != rel["center"]]
    for i, n in enumerate(ring):
        angle = 2 * math.pi * i / max(1, len(ring))
        r = 1.0 * n["hops"]
        pos[n["doc_id"]] = (r * math.cos(angle), r * math.sin(angle))
    fig = go.Figure()
    for e in rel["edges"]:
        if e["src"] in pos and e["dst"] in pos:
            (x0, y0), (x1, y1) = pos[e["src"]], pos[e["dst"]]
            fig.add_trace(
                go.Scatter(
                    x=[x0, x1],
                    y=[y0, y1],
                    mode="lines",
                    hoverinfo="text",
                    text=e["type"],
                    line={"width": 1, "color": "#999"},
                    showlegend=False,
                )
            )
    fig.add_trace(
        go.Scatter(
            x=[pos[n["doc_id"]][0] for n in nodes],
            y=[pos[n["doc_id"]][1] for n in nodes],
            mode="markers+text",
            text=[n["doc_id"] for n in nodes],
            textposition="top center",
            hovertext=[n["title"] for n in nodes],
            hoverinfo="text",
            marker={
                "size": [18 if n["doc_id"] == rel["center"] else 11 for n in nodes],
                "color": ["#d62728" if n["doc_id"] == rel["center"] else "#1f77b4" for n in nodes],
            },
            showlegend=False,
        )
    )
    fig.update_layout(
        height=420,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"visible": False},
        yaxis={"visible": False},
    )
    return fig


def render_document_tab() -> None:
    doc_id = st.text_input("Document id", key="corpus_doc_id")
    if not doc_id:
        return
    try:
        doc = get_document(engine, user, doc_id.strip())
    except DocumentNotFound as err:
        st.error(str(err))
        return
    st.subheader(doc.title)
    st.caption(
        f"{doc.doc_id} · revision {doc.revision} · {doc.document_type or '-'}"
        f" · {doc.domain or '-'} · {doc.date or 'no date'}"
    )
    if st.button("Add to selection", key="corpus_doc_select"):
        _select([doc.doc_id])
    c1, c2 = st.columns([3, 2])
    with c1:
        # Plain text on purpose: documents may contain markup that must not render.
        st.text(doc.text)
    with c2:
        st.markdown("**Metadata**")
        st.json(
            {
                "source_path": doc.source_path,
                "sha256": doc.sha256,
                "ingested_at": doc.ingested_at.isoformat(),
                **doc.metadata,
            },
            expanded=False,
        )
        st.markdown("**Related documents**")
        hops = st.radio("Hops", [1, 2], horizontal=True, key="corpus_doc_hops")
        rel = related_documents(engine, user, doc.doc_id, cfg, hops=int(hops))
        if len(rel["nodes"]) > 1:
            st.plotly_chart(_graph_figure(rel), key="corpus_doc_graph")
            st.dataframe(
                pd.DataFrame([n for n in rel["nodes"] if n["doc_id"] != doc.doc_id]),
                hide_index=True,
                width="stretch",
                key="corpus_doc_related",
            )
        else:
            st.caption("No related documents.")
        revs = document_revisions(engine, user, doc.doc_id)
        if len(revs) > 1:
            st.markdown("**Revisions**")
            st.dataframe(revs, hide_index=True, key="corpus_doc_revisions")


def _ingested(run) -> None:
    """Run an ingest with a progress bar; its report goes to the top of the page."""
    bar = st.progress(0.0, text="ingesting")
    try:
        report = run(_progress_callback(bar))
    except (IngestError, ValueError) as err:
        st.error(str(err))
    else:
        st.session_state["corpus_report"] = report.to_dict()
        _start_embedding()
        st.success("Ingested: the report is at the top of the page.")


def render_ingest_tab() -> None:
    if not user.can("corpus:ingest"):
        st.info("You may search and read; ingesting needs the corpus:ingest permission.")
        return
    c1, c2, c3, c4 = st.columns(4)
    itype = c1.text_input("Document type (default)", key="corpus_ingest_type")
    idomain = c2.text_input("Domain (default)", key="corpus_ingest_domain")
    imap = c3.text_input(
        "Column mapping (tabular files)",
        key="corpus_ingest_map",
        placeholder="text=body,title=headline,id=key,links=refs",
    )
    ikey = c4.selectbox(
        "Links name documents by",
        LINK_KEYS,
        key="corpus_ingest_link_key",
        help="auto tries id, file name, alias (e.g. rm(1)) and title in turn",
    )
    uploads = st.file_uploader(
        "Files", accept_multiple_files=True, key="corpus_uploads", type=UPLOAD_TYPES
    )
    if st.button("Ingest uploaded files", key="corpus_ingest_upload_btn", disabled=not uploads):
        opts = ingest_options(itype, idomain, imap, link_key=ikey)
        files = [(u.name, u.getvalue()) for u in uploads]
        _ingested(lambda progress: ingest_uploads(engine, user, files, opts, cfg, progress))
    if user.can("corpus:ingest_server_path"):
        st.divider()
        c1, c2 = st.columns([3, 1])
        folder = c1.text_input("Folder on the server", key="corpus_ingest_path")
        pattern = c2.text_input("Glob", key="corpus_ingest_glob", placeholder="*.md")
        if st.button("Ingest folder", key="corpus_ingest_path_btn", disabled=not folder):
            opts = ingest_options(itype, idomain, imap, pattern, link_key=ikey)
            _ingested(
                lambda progress: ingest_server_folder(engine, user, folder, opts, cfg, progress)
            )
    pending_now = corpus_stats(engine, user)["pending_embeddings"]
    last = embedding_job(engine, user)
    idle = pending_now and not (last is not None and last.active)
    if idle and st.button("Compute pending embeddings", key="corpus_embed_btn"):
        _start_embedding()
        st.rerun()


# The page ---------------------------------------------------------------------------------

st.title("Corpus")
# The status row is drawn into this box at the end of the script, so that it shows what the
# actions of this run (ingest, selection) changed, not the state before them.
status_box = st.container()
if corpus_stats(engine, user)["pending_embeddings"] and user.can("corpus:ingest"):
    _start_embedding(after_failure=False)  # e.g. after `clara up` loaded the sample
render_sample_offer()
# Filled at the end of the script, like the status row: an ingest further down in this run
# shows its report here at once.
report_box = st.container()
tab_search, tab_browse, tab_doc, tab_ingest = st.tabs(["Search", "Browse", "Document", "Ingest"])
facets = facet_values(engine, user)
with tab_search:
    render_search_tab(facets)
with tab_browse:
    render_browse_tab(facets)
with tab_doc:
    render_document_tab()
with tab_ingest:
    render_ingest_tab()
# Last, so that they show what this run's actions did (see status_box, report_box).
with status_box:
    _status()
if st.session_state["corpus_report"]:
    with report_box, st.expander("Last ingest report", expanded=True):
        _show_report(st.session_state["corpus_report"])

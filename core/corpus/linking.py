"""Graph edges made at ingest: the links a document declares (matched to documents by id,
file name, title or alias; core.corpus.link_keys), citations found by name in the text of
other documents (mentions), and the copy of the edges in Neo4j."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Engine

from core.config import Settings
from core.corpus.graph import (
    GraphEdge,
    MentionFinder,
    RelationalGraphStore,
    document_names,
    get_graph_stores,
)
from core.corpus.ingest_report import LinkReport
from core.corpus.link_keys import KeyIndex, is_document_link
from core.corpus.models import Document, Edge, LinkRef
from core.corpus.readers import SourceDocument
from core.db.engine import retry_on_lock, write_transaction

# How many unresolved links an ingest report names one by one.
MAX_LISTED_UNRESOLVED = 20


def link_ref_rows(doc: SourceDocument, link_key: str) -> list[dict[str, str]]:
    """The links a document declares (link columns, hyperlinks), as they are written, for
    `resolve_links`; links that leave the corpus (web addresses, anchors) are not kept."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for ref, etype, origin in doc.links:
        ref = ref.strip()[:500]
        if is_document_link(ref):
            rows.setdefault(
                (ref, etype),
                {
                    "src": doc.doc_id,
                    "ref": ref,
                    "type": etype,
                    "origin": origin[:32],
                    "link_key": link_key,
                },
            )
    return list(rows.values())


def resolve_links(engine: Engine, changed: list[str]) -> tuple[LinkReport, list[str]]:
    """Turn the waiting links (`corpus_link_refs`) whose target is now in the corpus into
    edges; the others stay, to resolve at the ingest that brings their target.

    Returns the report for the documents of this ingest (`changed`: resolved, unresolved,
    the first unresolved ones and why) plus the links of earlier ingests resolved now, and
    the sources that gained edges (for the Neo4j copy).
    """
    report = LinkReport()
    index = KeyIndex()
    if not changed:  # no new ids, titles or aliases: nothing waiting can resolve now
        with engine.connect() as conn:
            report.unresolved_total = conn.execute(
                sa.select(sa.func.count()).select_from(LinkRef)
            ).scalar_one()
        return report, []
    with engine.connect() as conn:
        refs = conn.execute(
            sa.select(
                LinkRef.id,
                LinkRef.src,
                LinkRef.ref,
                LinkRef.type,
                LinkRef.origin,
                LinkRef.link_key,
            ).order_by(LinkRef.id)
        ).all()
        if not refs:
            return report, []
        index.add_all(
            conn.execute(
                sa.select(Document.doc_id, Document.title, Document.source_path, Document.metadata_)
            ).tuples()
        )
    changed_set = set(changed)
    edges: list[GraphEdge] = []
    done: list[int] = []
    for ref_id, src, ref, etype, origin, link_key in refs:
        ours = src in changed_set
        found = index.resolve(ref, link_key)
        if found.target is None:
            report.unresolved_total += 1
            if ours:
                report.unresolved += 1
                if len(report.first_unresolved) < MAX_LISTED_UNRESOLVED:
                    report.first_unresolved.append(
                        {"src": src, "ref": ref, "link_key": link_key, "reason": found.reason}
                    )
            continue
        done.append(ref_id)
        if ours:
            report.resolved += 1
        else:
            report.resolved_earlier += 1
        if found.target != src:  # a link to itself resolves, but is no relation
            edges.append(GraphEdge(src, found.target, etype, origin, ref[:200]))
    if done:

        def write() -> None:
            with write_transaction(engine, what="resolving links") as conn:
                RelationalGraphStore(engine).add_edges(edges, conn=conn)
                for i in range(0, len(done), 500):
                    conn.execute(sa.delete(LinkRef).where(LinkRef.id.in_(done[i : i + 500])))

        retry_on_lock(write, what="resolving links")
    return report, sorted({e.src for e in edges} - changed_set)


# A name found in more than this share of the scanned documents (and in at least
# BOILERPLATE_MIN_DOCS of them) is boilerplate, not a citation: a letter whose first line,
# and so its title, is the city's letterhead would otherwise be "cited" by every document
# that names the city, and turn into a hub that drags itself into every graph search.
BOILERPLATE_SHARE = 1 / 3
BOILERPLATE_MIN_DOCS = 10


def _without_boilerplate(edges: list[GraphEdge], scanned: int) -> list[GraphEdge]:
    sources: dict[tuple[str, str], set[str]] = {}
    for e in edges:
        sources.setdefault((e.dst, e.evidence), set()).add(e.src)
    limit = max(BOILERPLATE_MIN_DOCS, scanned * BOILERPLATE_SHARE)
    common = {name for name, srcs in sources.items() if len(srcs) > limit}
    return [e for e in edges if (e.dst, e.evidence) not in common]


def declared_names(meta: dict | None) -> list[str]:
    """The short names a document declares for itself (metadata `short_name`, `aliases`)."""
    meta = meta or {}
    aliases = meta.get("aliases") or []
    names = [aliases] if isinstance(aliases, str) else list(aliases)
    if meta.get("short_name"):
        names.append(meta["short_name"])
    return [str(n) for n in names if isinstance(n, str | int)]


def link_mentions(engine: Engine, changed: list[str], corpus_was_empty: bool) -> int:
    """Add `cites` edges for documents whose text names another document.

    New or changed documents are matched against every name; older documents only against
    the names of the new ones (skipped on a first load, where there are none).
    """
    if not changed:
        return 0
    finder, new_names = MentionFinder(), MentionFinder()
    changed_set = set(changed)
    with engine.connect() as conn:
        for doc_id, title, meta in conn.execute(
            sa.select(Document.doc_id, Document.title, Document.metadata_)
        ):
            names = document_names(doc_id, title, declared_names(meta))
            finder.add(doc_id, names)
            if doc_id in changed_set:
                new_names.add(doc_id, names)
    edges: list[GraphEdge] = []

    def scan(ids: list[str] | None, names: MentionFinder) -> None:
        found: list[GraphEdge] = []
        scanned = 0
        with engine.connect() as conn:
            stmt = sa.select(Document.doc_id, Document.text).execution_options(yield_per=200)
            if ids is not None:
                for i in range(0, len(ids), 500):
                    part = ids[i : i + 500]
                    for doc_id, text in conn.execute(stmt.where(Document.doc_id.in_(part))):
                        scanned += 1
                        found.extend(
                            GraphEdge(doc_id, t, "cites", "mention", w)
                            for t, w in names.find(text, doc_id).items()
                        )
            else:
                for doc_id, text in conn.execute(stmt):
                    if doc_id not in changed_set:
                        scanned += 1
                        found.extend(
                            GraphEdge(doc_id, t, "cites", "mention", w)
                            for t, w in names.find(text, doc_id).items()
                        )
        edges.extend(_without_boilerplate(found, scanned))

    scan(changed, finder)
    if not corpus_was_empty:
        scan(None, new_names)
    if edges:

        def write() -> None:
            with write_transaction(engine, what="linking references") as conn:
                RelationalGraphStore(engine).add_edges(edges, conn=conn)

        retry_on_lock(write, what="linking references")
    return len(edges)


def mirror_to_neo4j(engine: Engine, settings: Settings, changed: list[str]) -> str | None:
    """Copy the edges of changed documents to Neo4j, when one is configured; returns what
    went wrong (the relational edges remain the record), or None."""
    _rel, neo = get_graph_stores(engine, settings)
    if neo is None or not changed:
        return None
    rel = RelationalGraphStore(engine)
    try:
        neo.ensure_documents(changed)
        with engine.connect() as conn:
            for i in range(0, len(changed), 500):
                part = changed[i : i + 500]
                rows = conn.execute(
                    sa.select(Edge.src, Edge.dst, Edge.type, Edge.origin, Edge.evidence).where(
                        Edge.src.in_(part)
                    )
                ).all()
                by_src: dict[str, list[GraphEdge]] = {d: [] for d in part}
                for r in rows:
                    by_src[r[0]].append(GraphEdge(*r))
                for src, edges in by_src.items():
                    neo.replace_edges(src, edges)
        # Incoming mention edges of older documents changed too.
        neo.add_edges([e for d in changed for e in rel.edges_of(d)])
    except Exception as err:
        return f"graph mirror failed: {err}"
    return None

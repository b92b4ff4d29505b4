"""Graph edges made at ingest: the links a document declares, citations found by name in
the text of other documents (mentions), and the copy of the edges in Neo4j."""

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
    link_target_id,
)
from core.corpus.models import Document, Edge
from core.corpus.readers import SourceDocument
from core.db.engine import retry_on_lock, write_transaction


def explicit_edges(doc: SourceDocument) -> list[GraphEdge]:
    """Edges of the links a document declares (link columns, hyperlinks), without self-links."""
    edges = []
    for ref, etype, origin in doc.links:
        target = link_target_id(ref)
        if target and target != doc.doc_id:
            edges.append(GraphEdge(doc.doc_id, target, etype, origin, ref[:200]))
    return edges


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
            aliases = (meta or {}).get("aliases") or []
            names = document_names(doc_id, title, aliases if isinstance(aliases, list) else [])
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

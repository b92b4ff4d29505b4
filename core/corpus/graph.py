"""Relations between documents: typed edges, reference extraction and two graph stores.

`RelationalGraphStore` keeps edges in our own `corpus_edges` table and walks them with a
recursive SQL query (the embedded default, both engines). `Neo4jGraphStore` mirrors them
into Neo4j through the official driver when CLARA_GRAPH_URI is set. Both implement
`GraphStore`; tests/integration/test_corpus_graph_contract.py runs one suite against each.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from core.config import Settings
from core.corpus.models import Document, Edge

EDGE_TYPES = ("links_to", "cites", "part_of", "supersedes")
MAX_HOPS = 4


@dataclass(frozen=True)
class GraphEdge:
    src: str
    dst: str
    type: str
    origin: str = ""
    evidence: str = ""


@dataclass(frozen=True)
class Neighbour:
    doc_id: str
    hops: int
    via: str  # the edge type of the last step
    from_doc: str  # the document this one was reached from


class GraphStore(Protocol):
    def replace_edges(
        self, src: str, edges: list[GraphEdge], conn: Connection | None = None
    ) -> None: ...
    def add_edges(self, edges: list[GraphEdge], conn: Connection | None = None) -> None: ...
    def delete_document(self, doc_id: str, conn: Connection | None = None) -> None: ...
    def neighbours(
        self, doc_ids: list[str], hops: int = 1, types: list[str] | None = None, limit: int = 200
    ) -> list[Neighbour]: ...
    def edges_of(self, doc_id: str) -> list[GraphEdge]: ...
    def count_edges(self) -> int: ...


def _check_hops(hops: int) -> int:
    if not 1 <= int(hops) <= MAX_HOPS:
        raise ValueError(f"hops must be between 1 and {MAX_HOPS}")
    return int(hops)


_WALK = """
WITH RECURSIVE walk(doc_id, depth, via, from_doc) AS (
    SELECT CAST(d.doc_id AS TEXT), 0, CAST('' AS TEXT), CAST('' AS TEXT)
    FROM corpus_documents d WHERE d.doc_id IN :seeds
    UNION
    SELECT CAST(CASE WHEN e.src = w.doc_id THEN e.dst ELSE e.src END AS TEXT),
           w.depth + 1, CAST(e.type AS TEXT), w.doc_id
    FROM walk w
    JOIN corpus_edges e ON (e.src = w.doc_id OR e.dst = w.doc_id)
    JOIN corpus_documents n ON n.doc_id = CASE WHEN e.src = w.doc_id THEN e.dst ELSE e.src END
    WHERE w.depth < :hops {type_filter}
)
SELECT doc_id, depth, via, from_doc FROM walk
WHERE depth > 0 AND doc_id NOT IN :seeds
ORDER BY depth, doc_id
LIMIT :raw_limit
"""


class RelationalGraphStore:
    """Edges in `corpus_edges`; neighbourhoods by a recursive CTE (undirected walk)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _run(self, conn: Connection | None, fn) -> None:
        if conn is not None:
            fn(conn)
        else:
            from core.db.engine import retry_on_lock, write_transaction

            def write() -> None:
                with write_transaction(self.engine, what="graph") as c:
                    fn(c)

            retry_on_lock(write, what="graph")

    def add_edges(self, edges: list[GraphEdge], conn: Connection | None = None) -> None:
        rows = unique_edge_rows(edges)
        if not rows:
            return

        def go(c: Connection) -> None:
            existing = set(
                c.execute(
                    sa.select(Edge.src, Edge.dst, Edge.type).where(
                        Edge.src.in_({r["src"] for r in rows})
                    )
                ).tuples()
            )
            new = [r for r in rows if (r["src"], r["dst"], r["type"]) not in existing]
            if new:
                c.execute(sa.insert(Edge), new)

        self._run(conn, go)

    def replace_edges(
        self, src: str, edges: list[GraphEdge], conn: Connection | None = None
    ) -> None:
        def go(c: Connection) -> None:
            c.execute(sa.delete(Edge).where(Edge.src == src))
            rows = unique_edge_rows(e for e in edges if e.src == src)
            if rows:
                c.execute(sa.insert(Edge), rows)

        self._run(conn, go)

    def delete_document(self, doc_id: str, conn: Connection | None = None) -> None:
        self._run(conn, lambda c: c.execute(sa.delete(Edge).where(Edge.src == doc_id)))

    def neighbours(
        self, doc_ids: list[str], hops: int = 1, types: list[str] | None = None, limit: int = 200
    ) -> list[Neighbour]:
        if not doc_ids:
            return []
        hops = _check_hops(hops)
        sql = _WALK.format(type_filter="AND e.type IN :types" if types else "")
        stmt = sa.text(sql).bindparams(sa.bindparam("seeds", expanding=True))
        params = {"seeds": list(doc_ids), "hops": hops, "raw_limit": max(1, limit) * 20}
        if types:
            stmt = stmt.bindparams(sa.bindparam("types", expanding=True))
            params["types"] = list(types)
        best: dict[str, Neighbour] = {}
        with self.engine.connect() as c:
            for doc_id, depth, via, from_doc in c.execute(stmt, params):
                if doc_id not in best:
                    best[doc_id] = Neighbour(doc_id, int(depth), via, from_doc)
        return list(best.values())[:limit]

    def degrees(self, doc_ids: list[str]) -> dict[str, int]:
        """Edges at each document, either direction (edges to documents not ingested
        included, as in `mean_degree`: both by index alone, no join)."""
        if not doc_ids:
            return {}
        ends = sa.union_all(
            sa.select(Edge.src.label("doc")).where(Edge.src.in_(doc_ids)),
            sa.select(Edge.dst.label("doc")).where(Edge.dst.in_(doc_ids)),
        ).subquery()
        with self.engine.connect() as c:
            rows = c.execute(sa.select(ends.c.doc, sa.func.count()).group_by(ends.c.doc))
            return {doc: int(n) for doc, n in rows}

    def mean_degree(self) -> float:
        """Edges per document, both ends counted (edges to documents not ingested included:
        an estimate that needs no join)."""
        with self.engine.connect() as c:
            edges = c.execute(sa.select(sa.func.count()).select_from(Edge)).scalar_one()
            docs = c.execute(sa.select(sa.func.count()).select_from(Document)).scalar_one()
        return 2 * edges / docs if docs else 0.0

    def edges_of(self, doc_id: str) -> list[GraphEdge]:
        present = sa.select(Document.doc_id)
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(Edge.src, Edge.dst, Edge.type, Edge.origin, Edge.evidence)
                .where(sa.or_(Edge.src == doc_id, Edge.dst == doc_id))
                .where(Edge.dst.in_(present))
                .order_by(Edge.type, Edge.src, Edge.dst)
            ).all()
        return [GraphEdge(*r) for r in rows]

    def count_edges(self) -> int:
        with self.engine.connect() as c:
            return c.execute(
                sa.select(sa.func.count())
                .select_from(Edge)
                .where(Edge.dst.in_(sa.select(Document.doc_id)))
            ).scalar_one()


class Neo4jGraphStore:
    """The same contract on a Neo4j server (official driver, Cypher)."""

    def __init__(self, uri: str, user: str, password: str, database: str | None = None) -> None:
        from neo4j import GraphDatabase

        self.driver = GraphDatabase.driver(uri, auth=(user, password))
        self.database = database
        with self.driver.session(database=self.database) as s:
            s.run(
                "CREATE CONSTRAINT clara_doc_id IF NOT EXISTS "
                "FOR (d:ClaraDocument) REQUIRE d.doc_id IS UNIQUE"
            ).consume()

    def close(self) -> None:
        self.driver.close()

    def _write(self, query: str, **params) -> None:
        with self.driver.session(database=self.database) as s:
            s.execute_write(lambda tx: tx.run(query, **params).consume())

    def ensure_documents(self, doc_ids: Iterable[str]) -> None:
        self._write(
            "UNWIND $ids AS id MERGE (d:ClaraDocument {doc_id: id}) SET d.present = true",
            ids=list(doc_ids),
        )

    def add_edges(self, edges: list[GraphEdge], conn: Connection | None = None) -> None:
        rows = unique_edge_rows(edges)
        if rows:
            self._write(
                "UNWIND $rows AS r "
                "MERGE (a:ClaraDocument {doc_id: r.src}) SET a.present = true "
                "MERGE (b:ClaraDocument {doc_id: r.dst}) "
                "MERGE (a)-[e:RELATES {type: r.type}]->(b) "
                "SET e.origin = r.origin, e.evidence = r.evidence",
                rows=rows,
            )

    def replace_edges(
        self, src: str, edges: list[GraphEdge], conn: Connection | None = None
    ) -> None:
        self._write(
            "MERGE (a:ClaraDocument {doc_id: $src}) SET a.present = true "
            "WITH a OPTIONAL MATCH (a)-[e:RELATES]->() DELETE e",
            src=src,
        )
        self.add_edges([e for e in edges if e.src == src])

    def delete_document(self, doc_id: str, conn: Connection | None = None) -> None:
        self._write(
            "MATCH (a:ClaraDocument {doc_id: $id}) SET a.present = false "
            "WITH a OPTIONAL MATCH (a)-[e:RELATES]->() DELETE e",
            id=doc_id,
        )

    def neighbours(
        self, doc_ids: list[str], hops: int = 1, types: list[str] | None = None, limit: int = 200
    ) -> list[Neighbour]:
        if not doc_ids:
            return []
        hops = _check_hops(hops)  # validated int: variable-length bounds cannot be parameters
        query = (
            f"MATCH p = (s:ClaraDocument)-[:RELATES*1..{hops}]-(n:ClaraDocument) "
            "WHERE s.doc_id IN $seeds AND s.present = true AND n.present = true "
            "AND NOT n.doc_id IN $seeds "
            "AND all(x IN nodes(p) WHERE x.present = true) "
            "AND ($types IS NULL OR all(r IN relationships(p) WHERE r.type IN $types)) "
            "WITH n, p ORDER BY length(p) "
            "WITH n, collect(p)[0] AS p "
            "RETURN n.doc_id AS doc_id, length(p) AS hops, last(relationships(p)).type AS via, "
            "nodes(p)[-2].doc_id AS from_doc ORDER BY hops, doc_id LIMIT $limit"
        )
        with self.driver.session(database=self.database) as s:
            records = s.run(query, seeds=list(doc_ids), types=types, limit=limit).data()
        return [Neighbour(r["doc_id"], int(r["hops"]), r["via"], r["from_doc"]) for r in records]

    def edges_of(self, doc_id: str) -> list[GraphEdge]:
        query = (
            "MATCH (a:ClaraDocument)-[e:RELATES]->(b:ClaraDocument) "
            "WHERE (a.doc_id = $id OR b.doc_id = $id) AND a.present = true AND b.present = true "
            "RETURN a.doc_id AS src, b.doc_id AS dst, e.type AS type, e.origin AS origin, "
            "e.evidence AS evidence ORDER BY type, src, dst"
        )
        with self.driver.session(database=self.database) as s:
            return [
                GraphEdge(r["src"], r["dst"], r["type"], r["origin"] or "", r["evidence"] or "")
                for r in s.run(query, id=doc_id).data()
            ]

    def count_edges(self) -> int:
        with self.driver.session(database=self.database) as s:
            rec = s.run(
                "MATCH (a:ClaraDocument)-[e:RELATES]->(b:ClaraDocument) "
                "WHERE a.present = true AND b.present = true "
                "RETURN count(e) AS n"
            ).single()
            return int(rec["n"]) if rec else 0


def unique_edge_rows(edges: Iterable[GraphEdge]) -> list[dict[str, str]]:
    seen: dict[tuple[str, str, str], dict[str, str]] = {}
    for e in edges:
        if e.src == e.dst or not e.dst:
            continue
        seen.setdefault(
            (e.src, e.dst, e.type),
            {
                "src": e.src,
                "dst": e.dst[:255],
                "type": e.type,
                "origin": e.origin[:32],
                "evidence": e.evidence[:500],
            },
        )
    return list(seen.values())


_neo4j: dict[str, Neo4jGraphStore] = {}


def get_graph_stores(
    engine: Engine, settings: Settings
) -> tuple[RelationalGraphStore, Neo4jGraphStore | None]:
    """The relational store (always: it is the record of edges) and Neo4j when configured."""
    rel = RelationalGraphStore(engine)
    if not settings.graph_uri:
        return rel, None
    store = _neo4j.get(settings.graph_uri)
    if store is None:
        store = _neo4j[settings.graph_uri] = Neo4jGraphStore(
            settings.graph_uri,
            settings.graph_user,
            settings.graph_password.get_secret_value(),
            settings.graph_database,
        )
    return rel, store


def query_store(engine: Engine, settings: Settings) -> GraphStore:
    rel, neo = get_graph_stores(engine, settings)
    return neo or rel


# Reference extraction ---------------------------------------------------------------------

_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_NAME_TOKEN = re.compile(r"\w+")
_PAREN = re.compile(r"\(([^()]{3,80})\)")
# A bracketed legal citation ("(§ 35 BauGB)", "(Art. 15 DSGVO)") is how other documents
# cite a text; any other bracketed words ("(erweitert)", "(Stand 2024)") are common words
# that would link every page that happens to use them.
_CITATION = re.compile(r"^\s*(§|art\.|artikel\s)", re.I)


def name_tokens(text: str) -> tuple[str, ...]:
    folded = unicodedata.normalize("NFC", text).lower().translate(_TRANSLIT)
    return tuple(_NAME_TOKEN.findall(folded.replace("_", " ")))


def document_names(doc_id: str, title: str, aliases: Iterable[str] = ()) -> set[tuple[str, ...]]:
    """Names by which other documents cite this one: id, title, the short names it declares
    (`aliases`) and a bracketed legal citation in its title, never other bracketed words."""
    names: set[tuple[str, ...]] = set()

    def add(raw: str, strict: bool) -> None:
        toks = name_tokens(raw)
        if not toks:
            return
        if len(toks) == 1 and len(toks[0]) < 8:  # one short word: too common to be a citation
            return
        if strict and not _CITATION.match(raw):
            return
        if sum(len(t) for t in toks) >= (5 if "§" in raw else 8):
            names.add(toks)

    add(doc_id.replace("-", " "), False)
    add(title, False)
    for inner in _PAREN.findall(title):
        add(inner, True)
    for alias in aliases:
        add(str(alias), False)
    return names


class MentionFinder:
    """Finds the names of other documents in a text by token n-gram lookup (no regex soup)."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, ...], set[str]] = {}
        # first token → the lengths of the names that start with it, longest first
        self.starts: dict[str, list[int]] = {}

    def add(self, doc_id: str, names: Iterable[tuple[str, ...]]) -> None:
        for n in names:
            self.names.setdefault(n, set()).add(doc_id)
            lengths = self.starts.setdefault(n[0], [])
            if len(n) not in lengths:
                lengths.append(len(n))
                lengths.sort(reverse=True)

    def find(self, text: str, exclude: str) -> dict[str, str]:
        """doc_id → the matched words, for unambiguous names of documents other than `exclude`."""
        toks = name_tokens(text)
        found: dict[str, str] = {}
        starts, names = self.starts, self.names
        for i, tok in enumerate(toks):
            lengths = starts.get(tok)
            if not lengths:
                continue
            for n in lengths:
                owners = names.get(tuple(toks[i : i + n]))
                if owners and len(owners) == 1:
                    (owner,) = owners
                    if owner != exclude and owner not in found:
                        found[owner] = " ".join(toks[i : i + n])
        return found

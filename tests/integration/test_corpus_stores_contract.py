"""Contract suites for the index adapters, run against every implementation available.

VectorStore: Chroma embedded (PersistentClient) and a real Chroma server that this module
starts itself (`chroma run`). GraphStore: the relational store on SQLite and Postgres, and
Neo4j when CLARA_TEST_NEO4J_URI points at a server.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from core.corpus.graph import GraphEdge, Neo4jGraphStore, RelationalGraphStore
from core.corpus.models import Document
from core.corpus.vectors import ChromaVectorStore
from core.db.base import utcnow
from tests.chroma_server import running_chroma_server

# Vector stores -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    with running_chroma_server(tmp_path_factory.mktemp("chroma-server")) as url:
        yield url


@pytest.fixture(params=["embedded", "server"])
def vector_store(request, tmp_path):
    name = f"contract_{uuid.uuid4().hex[:8]}"
    if request.param == "embedded":
        return ChromaVectorStore.embedded(tmp_path / "chroma", name)
    return ChromaVectorStore.server(request.getfixturevalue("chroma_server"), name)


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_vector_store_contract(vector_store):
    vecs = np.stack(
        [_unit([1, 0, 0, 0]), _unit([0.9, 0.1, 0, 0]), _unit([0, 1, 0, 0]), _unit([0, 0, 1, 0])]
    )
    metas = [
        {"doc_id": "a", "chunk_index": 0, "domain": "bauen", "date": 20230101, "m.k": "1"},
        {"doc_id": "a", "chunk_index": 1, "domain": "bauen", "date": 20230101, "m.k": "1"},
        {"doc_id": "b", "chunk_index": 0, "domain": "umwelt", "date": 20250101, "m.k": "2"},
        {"doc_id": "c", "chunk_index": 0, "domain": "umwelt", "date": 20240101},
    ]
    vector_store.upsert(["1", "2", "3", "4"], vecs, metas)
    assert vector_store.count() == 4
    hits = vector_store.query(_unit([1, 0.05, 0, 0]), 3)
    assert [h.doc_id for h in hits[:2]] == ["a", "a"] and hits[0].similarity > 0.99
    assert hits[0].similarity >= hits[1].similarity >= hits[2].similarity
    # Filters run inside the store.
    only = vector_store.query(_unit([1, 0, 0, 0]), 4, {"domain": {"$in": ["umwelt"]}})
    assert {h.doc_id for h in only} == {"b", "c"}
    dated = vector_store.query(
        _unit([1, 0, 0, 0]), 4, {"$and": [{"date": {"$gte": 20240101}}, {"m.k": {"$eq": "2"}}]}
    )
    assert [h.doc_id for h in dated] == ["b"]
    # Upsert replaces, delete by document removes every chunk of it.
    vector_store.upsert(["4"], _unit([1, 0, 0, 0])[None, :], [{**metas[3], "chunk_index": 5}])
    assert vector_store.count() == 4
    top = vector_store.query(_unit([1, 0, 0, 0]), 1, {"doc_id": "c"})
    assert top[0].chunk_index == 5
    vector_store.delete_documents(["a"])
    assert vector_store.count() == 2 and vector_store.document_ids("a") == []
    vector_store.delete_ids(["3"])
    assert vector_store.document_ids("b") == [] and vector_store.count() == 1
    assert vector_store.query(_unit([0, 0, 0, 1]), 0) == []


# Graph stores ------------------------------------------------------------------------------


DOCS = ["a", "b", "c", "d", "e"]


def test_graph_store_contract_relational(db_engine):
    with db_engine.begin() as c:
        c.execute(
            sa.insert(Document),
            [
                {
                    "doc_id": d,
                    "revision": 1,
                    "title": d,
                    "text": d,
                    "sha256": "0" * 64,
                    "ingested_at": utcnow(),
                    "metadata_": {},
                }
                for d in DOCS
            ],
        )

    def remove(doc_id: str) -> None:
        # The relational store's record of documents is the documents table itself.
        with db_engine.begin() as c:
            c.execute(sa.delete(Document).where(Document.doc_id == doc_id))

    _graph_contract(RelationalGraphStore(db_engine), remove)


def test_graph_store_contract_neo4j():
    uri = os.environ.get("CLARA_TEST_NEO4J_URI")
    if not uri:
        pytest.skip("CLARA_TEST_NEO4J_URI is not set: no Neo4j server to test against")
    store = Neo4jGraphStore(
        uri,
        os.environ.get("CLARA_TEST_NEO4J_USER", "neo4j"),
        os.environ.get("CLARA_TEST_NEO4J_PASSWORD", ""),
    )
    try:
        with store.driver.session() as s:
            s.run("MATCH (n:ClaraDocument) DETACH DELETE n").consume()
        store.ensure_documents(DOCS)
        _graph_contract(store, lambda _doc_id: None)
    finally:
        with store.driver.session() as s:
            s.run("MATCH (n:ClaraDocument) DETACH DELETE n").consume()
        store.close()


def _graph_contract(g, remove) -> None:
    g.add_edges(
        [
            GraphEdge("a", "b", "links_to", "links"),
            GraphEdge("b", "c", "cites", "mention"),
            GraphEdge("c", "d", "part_of"),
            GraphEdge("a", "ghost", "links_to"),
            GraphEdge("a", "b", "links_to", "links"),
        ]
    )  # duplicate: stored once
    assert g.count_edges() == 3  # the edge to a document that does not exist is not counted
    one = {n.doc_id: n for n in g.neighbours(["a"], hops=1)}
    assert set(one) == {"b"} and one["b"].via == "links_to" and one["b"].from_doc == "a"
    two = {n.doc_id: n.hops for n in g.neighbours(["a"], hops=2)}
    assert two == {"b": 1, "c": 2}
    three = {n.doc_id: n.hops for n in g.neighbours(["a"], hops=3)}
    assert three == {"b": 1, "c": 2, "d": 3}
    # Undirected walk, seeds excluded, type filter.
    assert {n.doc_id for n in g.neighbours(["d"], hops=1)} == {"c"}
    assert {n.doc_id for n in g.neighbours(["b", "c"], hops=1)} == {"a", "d"}
    assert {n.doc_id for n in g.neighbours(["a"], hops=3, types=["links_to"])} == {"b"}
    assert {(e.src, e.dst, e.type) for e in g.edges_of("b")} == {
        ("a", "b", "links_to"),
        ("b", "c", "cites"),
    }
    g.replace_edges("a", [GraphEdge("a", "e", "cites")])
    assert {n.doc_id for n in g.neighbours(["a"], hops=1)} == {"e"}
    # A deleted document is neither reachable nor a bridge between others.
    g.delete_document("c")
    remove("c")
    assert g.neighbours(["d"], hops=3) == []
    assert {n.doc_id for n in g.neighbours(["b"], hops=3)} == set()
    assert g.edges_of("d") == [] and g.count_edges() == 1
    with pytest.raises(ValueError):
        g.neighbours(["a"], hops=9)

"""The keyword index, the one place where SQLite and Postgres differ for the corpus.

SQLite: an FTS5 table whose rows hold Snowball-German stems (PyStemmer), ranked by BM25
with the title column weighted above the body. Postgres: a weighted tsvector column with a
GIN index, built by the server's own text search configuration ('german' by default,
'simple' when the server lacks it), ranked by ts_rank_cd. Both take OR semantics over the
query's content words with prefix matching, so a question need not contain every word of a
document and "Hundesteuer" still finds "Hundesteuersatzung".
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import REGCONFIG

from core.corpus.models import Document
from core.corpus.text import GERMAN_STOPWORDS, MIN_PREFIX_STEM, query_terms, stemmed_text, tokens

# Title matches count this many times a body match (BM25 column weight / tsvector weight A).
TITLE_WEIGHT = 4.0
# Very long bodies are indexed up to here (Postgres refuses tsvectors over 1 MB).
MAX_INDEXED_CHARS = 400_000
LANGUAGES = {
    "de": "german",
    "en": "english",
    "fr": "french",
    "it": "italian",
    "es": "spanish",
    "nl": "dutch",
}

_FTS = sa.table("corpus_fts", sa.column("rowid"), sa.column("title"), sa.column("body"))


def text_search_config(language: str) -> str:
    return LANGUAGES.get(language, "simple")


def create_keyword_index(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        # Rows hold stems already; unicode61 only splits on spaces then. prefix= builds
        # prefix indexes so "stem*" queries stay fast on large corpora.
        conn.exec_driver_sql(
            "CREATE VIRTUAL TABLE corpus_fts USING fts5("
            "title, body, tokenize='unicode61 remove_diacritics 0', prefix='4 6')"
        )
    else:
        conn.exec_driver_sql("ALTER TABLE corpus_documents ADD COLUMN search_vector tsvector")
        conn.exec_driver_sql(
            "CREATE INDEX ix_corpus_documents_search ON corpus_documents USING GIN (search_vector)"
        )


def drop_keyword_index(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("DROP TABLE IF EXISTS corpus_fts")
    else:
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_corpus_documents_search")


def _pg_config(conn: Connection, language: str) -> str:
    cfg = text_search_config(language)
    key = (str(conn.engine.url), cfg)
    cached = _PG_CONFIGS.get(key)
    if cached is None:
        found = conn.execute(
            sa.text("SELECT count(*) FROM pg_ts_config WHERE cfgname = :c"), {"c": cfg}
        ).scalar_one()
        cached = cfg if found else "simple"
        _PG_CONFIGS[key] = cached
    return cached


_PG_CONFIGS: dict[tuple[str, str], str] = {}


def index_document(conn: Connection, pk: int, title: str, body: str, language: str = "de") -> None:
    body = body[:MAX_INDEXED_CHARS]
    if conn.dialect.name == "sqlite":
        stemmer = text_search_config(language)
        conn.execute(sa.text("DELETE FROM corpus_fts WHERE rowid = :id"), {"id": pk})
        conn.execute(
            sa.text("INSERT INTO corpus_fts(rowid, title, body) VALUES (:id, :t, :b)"),
            {"id": pk, "t": stemmed_text(title, stemmer), "b": stemmed_text(body, stemmer)},
        )
    else:
        conn.execute(
            sa.text(
                "UPDATE corpus_documents SET search_vector = "
                "setweight(to_tsvector(CAST(:cfg AS regconfig), :t), 'A') || "
                "setweight(to_tsvector(CAST(:cfg AS regconfig), :b), 'B') WHERE id = :id"
            ),
            {"cfg": _pg_config(conn, language), "t": title, "b": body, "id": pk},
        )


def index_documents(
    conn: Connection, docs: list[tuple[str, str, str]], language: str = "de"
) -> None:
    """Index many (doc_id, title, body) at once; replaces what was indexed for them."""
    if conn.dialect.name == "sqlite":
        stemmer = text_search_config(language)
        ids = sa.bindparam("ids", expanding=True)
        conn.execute(
            sa.text(
                "DELETE FROM corpus_fts WHERE rowid IN "
                "(SELECT id FROM corpus_documents WHERE doc_id IN :ids)"
            ).bindparams(ids),
            {"ids": [d for d, _t, _b in docs]},
        )
        conn.execute(
            sa.text(
                "INSERT INTO corpus_fts(rowid, title, body) "
                "SELECT id, :t, :b FROM corpus_documents WHERE doc_id = :d"
            ),
            [
                {
                    "d": d,
                    "t": stemmed_text(t, stemmer),
                    "b": stemmed_text(b[:MAX_INDEXED_CHARS], stemmer),
                }
                for d, t, b in docs
            ],
        )
    else:
        conn.execute(
            sa.text(
                "UPDATE corpus_documents SET search_vector = "
                "setweight(to_tsvector(CAST(:cfg AS regconfig), :t), 'A') || "
                "setweight(to_tsvector(CAST(:cfg AS regconfig), :b), 'B') WHERE doc_id = :d"
            ),
            [
                {"cfg": _pg_config(conn, language), "t": t, "b": b[:MAX_INDEXED_CHARS], "d": d}
                for d, t, b in docs
            ],
        )


def remove_document(conn: Connection, pk: int) -> None:
    if conn.dialect.name == "sqlite":
        conn.execute(sa.text("DELETE FROM corpus_fts WHERE rowid = :id"), {"id": pk})
    # Postgres: the tsvector lives in the document row and goes with it.


def fts5_match(query: str, language: str = "de") -> str | None:
    """An FTS5 MATCH expression: stems OR-ed, long stems as prefixes, each one quoted."""
    terms = query_terms(query, text_search_config(language))
    parts = [f'"{t}"*' if len(t) >= MIN_PREFIX_STEM else f'"{t}"' for t in terms if '"' not in t]
    return " OR ".join(parts) or None


def pg_tsquery(query: str) -> str | None:
    """A to_tsquery() input of the query's words, OR-ed, prefixes marked; the server stems."""
    words = [w for w in tokens(query) if w not in GERMAN_STOPWORDS] or tokens(query)
    seen = dict.fromkeys(words)
    parts = [f"{w}:*" if len(w) >= MIN_PREFIX_STEM else w for w in seen]
    return " | ".join(parts) or None


def keyword_search(
    conn: Connection,
    query: str,
    k: int,
    conditions: list[sa.ColumnElement] | None = None,
    language: str = "de",
) -> list[tuple[str, float]]:
    """Best documents for `query` as (doc_id, score), higher is better; filters in SQL."""
    conditions = conditions or []
    if conn.dialect.name == "sqlite":
        match = fts5_match(query, language)
        if match is None:
            return []
        rank = sa.literal_column(f"bm25(corpus_fts, {TITLE_WEIGHT}, 1.0)")
        stmt = (
            sa.select(Document.doc_id, rank.label("rank"))
            .select_from(_FTS.join(Document, Document.id == _FTS.c.rowid))
            .where(sa.text("corpus_fts MATCH :match").bindparams(match=match))
            .where(*conditions)
            .order_by(sa.text("rank"))
            .limit(k)
        )
        return [(r[0], -float(r[1])) for r in conn.execute(stmt)]
    q = pg_tsquery(query)
    if q is None:
        return []
    cfg = _pg_config(conn, language)
    tsq = sa.func.to_tsquery(sa.cast(sa.literal(cfg), REGCONFIG), sa.literal(q))
    vec = sa.literal_column("corpus_documents.search_vector")
    # Weights D, C, B, A: title (A) counts TITLE_WEIGHT times the body (B).
    weights = sa.literal_column(f"'{{0.05, 0.1, {1 / TITLE_WEIGHT}, 1.0}}'::float4[]")
    score = sa.func.ts_rank_cd(weights, vec, tsq, 1)
    stmt = (
        sa.select(Document.doc_id, score.label("score"))
        .where(vec.op("@@")(tsq))
        .where(*conditions)
        .order_by(sa.desc("score"), Document.doc_id)
        .limit(k)
    )
    return [(r[0], float(r[1])) for r in conn.execute(stmt)]

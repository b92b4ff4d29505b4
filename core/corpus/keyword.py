"""The keyword index, the one place where SQLite and Postgres differ for the corpus.

SQLite: an FTS5 table whose rows hold Snowball-German stems (PyStemmer), ranked by BM25
with the title column weighted above the body. Postgres: a weighted tsvector column with a
GIN index, built by the server's own text search configuration ('german' by default,
'simple' when the server lacks it), ranked by ts_rank_cd per query word weighted by the
word's idf (ts_rank_cd alone has no notion of rarity). Both take OR semantics over the
query's content words with prefix matching, so a question need not contain every word of a
document and "Hundesteuer" still finds "Hundesteuersatzung". Both also index and query the
parts of German compounds (core.corpus.compounds), weighted below whole words, so that
"Parkplätze" finds "Stellplätze".
"""

from __future__ import annotations

import math

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import REGCONFIG

from core.corpus.compounds import text_parts
from core.corpus.models import Document
from core.corpus.text import (
    GERMAN_STOPWORDS,
    MIN_PREFIX_STEM,
    query_part_terms,
    query_terms,
    stem_words,
    stemmed_text,
    tokens,
)

# Title matches count this many times a body match (BM25 column weight / tsvector weight A),
# a match on a compound's part (Stell|platz for "Parkplatz") PARTS_WEIGHT times.
TITLE_WEIGHT = 4.0
PARTS_WEIGHT = 0.5
# A term in more than half of all documents has a BM25 idf of zero (FTS5 clamps it to 1e-6)
# and so cannot change the order, yet ranking walks its whole posting list. Above this many
# documents such terms are left out of the query (on smaller corpora they cost nothing).
COMMON_TERM_MIN_DOCS = 1000
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

_FTS = sa.table(
    "corpus_fts", sa.column("rowid"), sa.column("title"), sa.column("body"), sa.column("parts")
)


def text_search_config(language: str) -> str:
    return LANGUAGES.get(language, "simple")


def create_keyword_index(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        # Rows hold stems already; unicode61 only splits on spaces then. prefix= builds
        # prefix indexes so "stem*" queries stay fast on large corpora.
        conn.exec_driver_sql(
            "CREATE VIRTUAL TABLE corpus_fts USING fts5("
            "title, body, parts, tokenize='unicode61 remove_diacritics 0', prefix='4 6')"
        )
        # Document frequencies per term, read from the FTS index itself (no storage).
        conn.exec_driver_sql(
            "CREATE VIRTUAL TABLE corpus_fts_vocab USING fts5vocab(corpus_fts, 'row')"
        )
    else:
        conn.exec_driver_sql("ALTER TABLE corpus_documents ADD COLUMN search_vector tsvector")
        conn.exec_driver_sql(
            "CREATE INDEX ix_corpus_documents_search ON corpus_documents USING GIN (search_vector)"
        )


def drop_keyword_index(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("DROP TABLE IF EXISTS corpus_fts_vocab")
        conn.exec_driver_sql("DROP TABLE IF EXISTS corpus_fts")
    else:
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_corpus_documents_search")
        conn.exec_driver_sql("ALTER TABLE corpus_documents DROP COLUMN IF EXISTS search_vector")


def rebuild_keyword_index(conn: Connection, batch: int = 500) -> int:
    """Recreate the keyword index in its current shape and index every document again
    (used by migrations that change what the index holds). Returns the documents indexed."""
    drop_keyword_index(conn)
    create_keyword_index(conn)
    done, last = 0, 0
    while True:
        rows = conn.execute(
            sa.select(
                Document.id, Document.doc_id, Document.title, Document.text, Document.language
            )
            .where(Document.id > last)
            .order_by(Document.id)
            .limit(batch)
        ).all()
        if not rows:
            return done
        by_language: dict[str, list[tuple[str, str, str]]] = {}
        for r in rows:
            by_language.setdefault(r.language or "de", []).append((r.doc_id, r.title, r.text))
        for language, docs in by_language.items():
            index_documents(conn, docs, language)
        done += len(rows)
        last = rows[-1].id


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


def index_documents(
    conn: Connection, docs: list[tuple[str, str, str]], language: str = "de"
) -> None:
    """Index many (doc_id, title, body) at once; replaces what was indexed for them."""
    stemmer = text_search_config(language)
    parts = {d: text_parts(tokens(f"{t} {b[:MAX_INDEXED_CHARS]}"), stemmer) for d, t, b in docs}
    if conn.dialect.name == "sqlite":
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
                "INSERT INTO corpus_fts(rowid, title, body, parts) "
                "SELECT id, :t, :b, :p FROM corpus_documents WHERE doc_id = :d"
            ),
            [
                {
                    "d": d,
                    "t": stemmed_text(t, stemmer),
                    "b": stemmed_text(b[:MAX_INDEXED_CHARS], stemmer),
                    "p": " ".join(stem_words(parts[d], stemmer)),
                }
                for d, t, b in docs
            ],
        )
    else:
        conn.execute(
            sa.text(
                "UPDATE corpus_documents SET search_vector = "
                "setweight(to_tsvector(CAST(:cfg AS regconfig), :t), 'A') || "
                "setweight(to_tsvector(CAST(:cfg AS regconfig), :b), 'B') || "
                "setweight(to_tsvector(CAST(:cfg AS regconfig), :p), 'C') WHERE doc_id = :d"
            ),
            [
                {
                    "cfg": _pg_config(conn, language),
                    "t": t,
                    "b": b[:MAX_INDEXED_CHARS],
                    "p": " ".join(parts[d]),
                    "d": d,
                }
                for d, t, b in docs
            ],
        )


def remove_document(conn: Connection, pk: int) -> None:
    if conn.dialect.name == "sqlite":
        conn.execute(sa.text("DELETE FROM corpus_fts WHERE rowid = :id"), {"id": pk})
    # Postgres: the tsvector lives in the document row and goes with it.


def _fts5_term(term: str) -> str:
    return f'"{term}"*' if len(term) >= MIN_PREFIX_STEM else f'"{term}"'


def fts5_match(
    query: str, language: str = "de", leave_out: frozenset[str] = frozenset()
) -> str | None:
    """An FTS5 MATCH expression: stems and compound-part stems OR-ed, long stems as
    prefixes, each one quoted; `leave_out` terms are skipped."""
    stemmer = text_search_config(language)
    # Parts are matched exactly: they are whole words already ("platz" must not find
    # "platzverweis"), and prefixes of short parts would match much of the corpus.
    terms = [_fts5_term(t) for t in query_terms(query, stemmer) if t not in leave_out]
    terms += [f'"{t}"' for t in query_part_terms(query, stemmer) if t not in leave_out]
    return " OR ".join(t for t in terms if t.count('"') == 2) or None


def _common_terms(conn: Connection, query: str, language: str) -> frozenset[str]:
    """Query terms in more than half of the documents, when that is many documents (see
    COMMON_TERM_MIN_DOCS); the rarest term is always kept so a query still finds something."""
    stemmer = text_search_config(language)
    terms = query_terms(query, stemmer) + query_part_terms(query, stemmer)
    if not terms:
        return frozenset()
    total = conn.execute(sa.text("SELECT count(*) FROM corpus_documents")).scalar_one()
    if total < 2 * COMMON_TERM_MIN_DOCS:
        return frozenset()
    docs: dict[str, int] = {}
    prefixed = set(query_terms(query, stemmer))
    for t in terms:
        if t in prefixed and len(t) >= MIN_PREFIX_STEM:  # its most frequent completion is a floor
            sql, params = (
                "SELECT max(doc) FROM corpus_fts_vocab WHERE term >= :t AND term < :u",
                {"t": t, "u": t + "\U0010ffff"},
            )
        else:
            sql, params = "SELECT doc FROM corpus_fts_vocab WHERE term = :t", {"t": t}
        docs[t] = conn.execute(sa.text(sql), params).scalar() or 0
    common = {t for t, n in docs.items() if n > max(COMMON_TERM_MIN_DOCS, total // 2)}
    if common == set(terms):
        common.discard(min(terms, key=lambda t: docs[t]))
    return frozenset(common)


def pg_query_atoms(query: str) -> list[str]:
    """The to_tsquery() atoms of a query: its words (long ones as prefixes) and their
    compound parts; the server stems them."""
    words = [w for w in tokens(query) if w not in GERMAN_STOPWORDS] or tokens(query)
    parts = [p for p in text_parts(words, "german") if p not in GERMAN_STOPWORDS]
    out = [f"{w}:*" if len(w) >= MIN_PREFIX_STEM else w for w in dict.fromkeys(words)]
    out += [p for p in dict.fromkeys(parts) if p not in words]
    return out


def pg_tsquery(query: str) -> str | None:
    """A to_tsquery() input of the query's atoms, OR-ed."""
    return " | ".join(pg_query_atoms(query)) or None


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
        match = fts5_match(query, language, _common_terms(conn, query, language))
        if match is None:
            return []
        rank = sa.literal_column(f"bm25(corpus_fts, {TITLE_WEIGHT}, 1.0, {PARTS_WEIGHT})")
        matching = sa.text("corpus_fts MATCH :match").bindparams(match=match)
        if not conditions:
            # Rank inside the FTS table and join only the k best: joining every match to
            # its document first costs as much as the ranking itself.
            best = (
                sa.select(_FTS.c.rowid, rank.label("rank"))
                .where(matching)
                .order_by(sa.text("rank"))
                .limit(k)
                .subquery()
            )
            stmt = (
                sa.select(Document.doc_id, best.c.rank)
                .join(best, Document.id == best.c.rowid)
                .order_by(best.c.rank)
            )
        else:
            stmt = (
                sa.select(Document.doc_id, rank.label("rank"))
                .select_from(_FTS.join(Document, Document.id == _FTS.c.rowid))
                .where(matching)
                .where(*conditions)
                .order_by(sa.text("rank"))
                .limit(k)
            )
        return [(r[0], -float(r[1])) for r in conn.execute(stmt)]
    atoms = pg_query_atoms(query)
    if not atoms:
        return []
    cfg = sa.cast(sa.literal(_pg_config(conn, language)), REGCONFIG)
    tsq = sa.func.to_tsquery(cfg, sa.literal(" | ".join(atoms)))
    vec = sa.literal_column("corpus_documents.search_vector")
    # Weights D, C, B, A: title (A) counts TITLE_WEIGHT times the body (B), compound parts
    # (C) PARTS_WEIGHT times the body.
    weights = sa.literal_column(
        f"'{{0.05, {PARTS_WEIGHT / TITLE_WEIGHT}, {1 / TITLE_WEIGHT}, 1.0}}'::float4[]"
    )
    atom_q = [sa.func.to_tsquery(cfg, sa.literal(a)) for a in atoms]
    # ts_rank_cd knows nothing of how rare a word is: "Gebühr", in every other document,
    # would count as much as "Stellplatz". So each atom is ranked on its own, saturated
    # (normalisation 32: rank / (rank + 1), as BM25 saturates term frequency) and weighted
    # by its BM25 idf (the always-positive form); document frequencies come from the GIN
    # index in one pass over the matching rows.
    counts = conn.execute(
        sa.select(*[sa.func.count().filter(vec.op("@@")(q)) for q in atom_q])
        .select_from(Document)
        .where(vec.op("@@")(tsq))
    ).one()
    total = conn.execute(sa.select(sa.func.count()).select_from(Document)).scalar_one()
    score = sum(
        (
            sa.literal(math.log(1 + (total - n + 0.5) / (n + 0.5)))
            * sa.func.ts_rank_cd(weights, vec, q, 32)
            for q, n in zip(atom_q, counts, strict=True)
            if n
        ),
        sa.literal(0.0),
    )
    stmt = (
        sa.select(Document.doc_id, score.label("score"))
        .where(vec.op("@@")(tsq))
        .where(*conditions)
        .order_by(sa.desc("score"), Document.doc_id)
        .limit(k)
    )
    return [(r[0], float(r[1])) for r in conn.execute(stmt)]

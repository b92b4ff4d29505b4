"""The keyword index: BM25F over our own postings table, the same SQL on SQLite and Postgres.

Each (stem, document) pair is one row of `corpus_terms` holding the stem's frequency in the
title, the body and the parts of German compounds (core.corpus.compounds), next to the
lengths of those fields. A query is ranked by BM25F (Robertson & Zaragoza 2009, "The
Probabilistic Relevance Framework"): per field the frequency is normalised by that field's
length against its average, the fields are summed with their weights, and only then
saturated — so a word in a short title counts more than the same word deep in a long body,
but a title can no longer outweigh several matches of the question's other words (the flat
title multiplier did: "Dateien löschen" found the page whose title says "löschen" instead
of the one whose title says "entfernen").

Why our own postings instead of FTS5 and tsvector: one ranking, so a corpus ranks the same
on both engines; document frequencies and field lengths are read from the rows instead of
from each matching document's tsvector (Postgres de-TOASTed every large tsvector of every
matching page to rank it: 1.6 s a query at 1,079 long pages); and a query touches only the
index ranges of its own terms.

Queries take OR semantics over the content words' stems, long stems (MIN_PREFIX_STEM) also
as prefixes so "Hundesteuer" still finds "Hundesteuersatzung", plus the stems of the
query's compound parts, so "Parkplätze" finds "Stellplätze".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from core.corpus.compounds import text_parts
from core.corpus.models import Document
from core.corpus.text import (
    MIN_PREFIX_STEM,
    query_part_terms,
    query_terms,
    stem_words,
    tokens,
)


@dataclass(frozen=True)
class Ranking:
    """BM25F parameters. Chosen on the development set (bench/corpus_search_quality.py,
    the sample corpus's questions) and reported on the held-out sets; see bench/RESULTS.md.
    """

    k1: float = 1.2
    title_weight: float = 2.0
    body_weight: float = 1.0
    parts_weight: float = 0.5
    # Length normalisation per field: titles are all short, so their length says little.
    title_b: float = 0.3
    body_b: float = 0.75
    parts_b: float = 0.75
    # Long stems also match as prefixes (compounds that start with the query's word).
    prefixes: bool = True


RANKING = Ranking()
# A term in more than half of all documents has nearly no idf, yet ranking reads all of its
# postings. On corpora of at least this many documents such terms are left out (the rarest
# query term always stays), on smaller ones they cost nothing.
COMMON_TERM_MIN_DOCS = 1000
# Very long bodies are indexed up to here.
MAX_INDEXED_CHARS = 400_000
# Stems longer than this are noise (hashes, base64) and would not fit an index entry.
MAX_TERM_CHARS = 80
# A query's first this many distinct terms are searched: SQLite allows 500 selects in one
# compound statement, and a pasted page is no worse a question for losing its tail.
MAX_QUERY_ATOMS = 200
# Prefix ranges end below this code point: beyond every real character.
_RANGE_END = "\U0010ffff"
LANGUAGES = {
    "de": "german",
    "en": "english",
    "fr": "french",
    "it": "italian",
    "es": "spanish",
    "nl": "dutch",
}

# Created by the migrations through create_keyword_index; not part of the ORM metadata.
_META = sa.MetaData()
# Byte order on Postgres too, so a prefix is one contiguous index range.
_TERM = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
TERMS = sa.Table(
    "corpus_terms",
    _META,
    sa.Column("term", _TERM, nullable=False),
    sa.Column("doc", sa.Integer, nullable=False),
    sa.Column("tf_title", sa.Integer, nullable=False),
    sa.Column("tf_body", sa.Integer, nullable=False),
    sa.Column("tf_parts", sa.Integer, nullable=False),
    sa.Column("len_title", sa.Integer, nullable=False),
    sa.Column("len_body", sa.Integer, nullable=False),
    sa.Column("len_parts", sa.Integer, nullable=False),
    # Everything a query reads is in the key (SQLite, a clustered WITHOUT ROWID table) or
    # the covering index (Postgres, index-only scans): ranking never visits another page.
    sa.PrimaryKeyConstraint(
        "term",
        "doc",
        name="pk_corpus_terms",
        postgresql_include=[
            "tf_title",
            "tf_body",
            "tf_parts",
            "len_title",
            "len_body",
            "len_parts",
        ],
    ),
    sa.Index("ix_corpus_terms_doc", "doc"),
    sqlite_with_rowid=False,
)
# One row per indexed document: the corpus size and mean field lengths BM25F needs.
FIELDS = sa.Table(
    "corpus_term_docs",
    _META,
    sa.Column("doc", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("len_title", sa.Integer, nullable=False),
    sa.Column("len_body", sa.Integer, nullable=False),
    sa.Column("len_parts", sa.Integer, nullable=False),
)


def text_search_config(language: str) -> str:
    """The stemmer (Snowball) of a language code; 'simple' means none."""
    return LANGUAGES.get(language, "simple")


def create_keyword_index(conn: Connection) -> None:
    _META.create_all(conn)


def drop_keyword_index(conn: Connection) -> None:
    _META.drop_all(conn)
    # The engine-specific indexes of schema revisions before 0010.
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


def _stems(words: list[str], stemmer: str) -> list[str]:
    return [s for s in stem_words(words, stemmer) if s and len(s) <= MAX_TERM_CHARS]


def document_terms(title: str, body: str, language: str = "de") -> tuple[dict, tuple]:
    """{stem: (tf in title, tf in body, tf in parts)} and the three field lengths."""
    stemmer = text_search_config(language)
    body = body[:MAX_INDEXED_CHARS]
    title_words, body_words = tokens(title), tokens(body)
    in_title = Counter(_stems(title_words, stemmer))
    in_body = Counter(_stems(body_words, stemmer))
    in_parts = Counter(_stems(text_parts(title_words + body_words, stemmer), stemmer))
    t_get, b_get, p_get = in_title.get, in_body.get, in_parts.get
    terms = {
        t: (t_get(t, 0), b_get(t, 0), p_get(t, 0))
        for t in in_title.keys() | in_body.keys() | in_parts.keys()
    }
    lengths = (in_title.total(), in_body.total(), in_parts.total())
    return terms, lengths


def index_documents(
    conn: Connection, docs: list[tuple[str, str, str]], language: str = "de"
) -> None:
    """Index many (doc_id, title, body) at once; replaces what was indexed for them."""
    if not docs:
        return
    pks = dict(
        conn.execute(
            sa.select(Document.doc_id, Document.id).where(
                Document.doc_id.in_([d for d, _t, _b in docs])
            )
        ).all()
    )
    _remove(conn, list(pks.values()))
    postings, lengths = [], []
    for doc_id, title, body in docs:
        pk = pks.get(doc_id)
        if pk is None:
            continue
        terms, (lt, lb, lp) = document_terms(title, body, language)
        lengths.append({"doc": pk, "len_title": lt, "len_body": lb, "len_parts": lp})
        postings += [(t, pk, a, b, c, lt, lb, lp) for t, (a, b, c) in terms.items()]
    if lengths:
        conn.execute(FIELDS.insert(), lengths)
    # In key order, each insert lands next to the one before in the index (several times
    # faster than in document order).
    postings.sort()
    _insert_postings(conn, postings)


def _insert_postings(conn: Connection, rows: list[tuple]) -> None:
    """Hundreds of rows per document: straight to the driver. SQLAlchemy's per-row
    parameter handling cost more than the inserts; Postgres takes them by COPY."""
    columns = [c.name for c in TERMS.columns]
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        if conn.dialect.name == "postgresql":
            with cursor.copy(f"COPY corpus_terms ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" * len(columns))
            cursor.executemany(
                f"INSERT INTO corpus_terms ({', '.join(columns)}) VALUES ({marks})", rows
            )
    finally:
        cursor.close()


def _remove(conn: Connection, pks: list[int]) -> None:
    for i in range(0, len(pks), 500):
        part = pks[i : i + 500]
        conn.execute(TERMS.delete().where(TERMS.c.doc.in_(part)))
        conn.execute(FIELDS.delete().where(FIELDS.c.doc.in_(part)))


def remove_document(conn: Connection, pk: int) -> None:
    _remove(conn, [pk])


@dataclass(frozen=True)
class Atom:
    """One term of a query: a stem matched exactly, or as the prefix of longer stems."""

    term: str
    prefix: bool


def query_atoms(query: str, language: str = "de", ranking: Ranking = RANKING) -> list[Atom]:
    """The query's stems (long ones as prefixes) and, matched exactly because they are
    whole words already ("platz" must not find "platzverweis"), its compound parts."""
    stemmer = text_search_config(language)
    atoms = [
        Atom(t, ranking.prefixes and len(t) >= MIN_PREFIX_STEM)
        for t in query_terms(query, stemmer)
        if len(t) <= MAX_TERM_CHARS
    ]
    atoms += [Atom(t, False) for t in query_part_terms(query, stemmer) if len(t) <= MAX_TERM_CHARS]
    return atoms[:MAX_QUERY_ATOMS]


def _statistics(conn: Connection, atoms: list[Atom]) -> tuple[int, tuple[float, ...], list[int]]:
    """Documents indexed, mean field lengths, and each atom's document frequency: one
    statement.

    A prefix atom's frequency is the number of its postings, so a document with two
    completions of it counts twice: counting distinct documents walks the whole range as
    ranking does (it doubled the cost of a query). The idf of such a prefix comes out a
    little low, never high.
    """
    sql, params = [], {}
    for i, a in enumerate(atoms):
        sql.append(f"(SELECT count(*) FROM corpus_terms WHERE {_match_sql(a, i, params)})")
    row = conn.execute(
        sa.text(
            "SELECT count(*), avg(len_title), avg(len_body), avg(len_parts)"
            + "".join(f", {s}" for s in sql)
            + " FROM corpus_term_docs"
        ),
        params,
    ).one()
    means = tuple(max(float(m or 0.0), 1.0) for m in row[1:4])
    return int(row[0] or 0), means, [int(x or 0) for x in row[4:]]


def _match_sql(atom: Atom, i: int, params: dict) -> str:
    params[f"t{i}"] = atom.term
    if atom.prefix:
        params[f"u{i}"] = atom.term + _RANGE_END
        return f"term >= :t{i} AND term < :u{i}"
    return f"term = :t{i}"


def _without_common(atoms: list[Atom], dfs: list[int], n: int) -> list[tuple[Atom, int]]:
    found = [(a, min(df, n)) for a, df in zip(atoms, dfs, strict=True) if df]
    if n < 2 * COMMON_TERM_MIN_DOCS or not found:
        return found
    kept = [(a, df) for a, df in found if df <= max(COMMON_TERM_MIN_DOCS, n // 2)]
    return kept or [min(found, key=lambda x: x[1])]


def _idf(n: int, df: int) -> float:
    # The always-positive form (Lucene's): a word in more than half the documents still
    # counts a little instead of pushing documents down.
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def keyword_search(
    conn: Connection,
    query: str,
    k: int,
    conditions: list[sa.ColumnElement] | None = None,
    language: str = "de",
    ranking: Ranking = RANKING,
) -> list[tuple[str, float]]:
    """Best documents for `query` as (doc_id, BM25F score), higher is better; filters in SQL.

    The statement is written out by hand, not composed: composing and compiling a union of
    one select per query term cost more than running it.
    """
    atoms = query_atoms(query, language, ranking)
    if not atoms:
        return []
    n, means, dfs = _statistics(conn, atoms)
    used = _without_common(atoms, dfs, n)
    if not used:
        return []
    r = ranking
    params: dict = {"k1": r.k1}
    fields = []
    for name, weight, b, mean in (
        ("title", r.title_weight, r.title_b, means[0]),
        ("body", r.body_weight, r.body_b, means[1]),
        ("parts", r.parts_weight, r.parts_b, means[2]),
    ):
        if weight > 0:
            params |= {f"w_{name}": weight, f"b_{name}": b, f"m_{name}": mean}
            fields.append(
                f":w_{name} * tf_{name} / (1.0 - :b_{name} + :b_{name} * len_{name} / :m_{name})"
            )
    # x, the length-normalised weighted frequency, is linear in the frequencies, so it is
    # computed per posting; the completions of a prefix atom in one document add up before
    # saturation (like the occurrences of one word). Exact atoms have one posting per
    # document and skip that grouping.
    exact, prefixes = [], []
    for i, (atom, df) in enumerate(used):
        params[f"idf{i}"] = _idf(n, df)
        select = (
            f"SELECT {i} AS a, :idf{i} AS idf, doc, {' + '.join(fields)} AS x "
            f"FROM corpus_terms WHERE {_match_sql(atom, i, params)}"
        )
        (prefixes if atom.prefix else exact).append(select)
    per_atom = [f"SELECT idf, doc, x FROM ({' UNION ALL '.join(exact)}) AS e"] if exact else []
    if prefixes:
        per_atom.append(
            f"SELECT max(idf) AS idf, doc, sum(x) AS x "
            f"FROM ({' UNION ALL '.join(prefixes)}) AS p GROUP BY a, doc"
        )
    ranked = (
        f"SELECT doc, sum(idf * x / (:k1 + x)) AS score "
        f"FROM ({' UNION ALL '.join(per_atom)}) AS per_atom GROUP BY doc"
    )
    if not conditions:  # join only the k best to their documents
        ranked += " ORDER BY score DESC, doc LIMIT :k"
        params["k"] = k
    best = sa.text(ranked).columns(doc=sa.Integer, score=sa.Float).subquery("ranked")
    stmt = (
        sa.select(Document.doc_id, best.c.score)
        .join(best, Document.id == best.c.doc)
        .where(*(conditions or []))
        .order_by(best.c.score.desc(), Document.id)
        .limit(k)
    )
    return [(doc_id, float(s)) for doc_id, s in conn.execute(stmt, params)]

"""The corpus: ingestion, keyword / vector / graph indexes and hybrid search.

Public entry points: core.corpus.documents (views other areas read), core.corpus.ingest
(ingest_paths, ingest_uploads, embed_pending, delete_document), core.corpus.search
(search, save_search, list_saved_searches, run_saved_search).
"""

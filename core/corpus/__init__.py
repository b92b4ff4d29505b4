"""The corpus: ingestion, keyword / vector / graph indexes and hybrid search.

Public entry points: core.corpus.documents (views other areas read), core.corpus.ingest
(ingest_paths, ingest_uploads, ingest_server_folder), core.corpus.embedding (embed_pending,
embed_next_batch, reset_embeddings), core.corpus.store_writes (delete_document),
core.corpus.search (search, save_search, list_saved_searches, run_saved_search).

Modules: files (which files an ingest takes) → readers (file formats) → store_writes
(documents, chunks, keyword index, declared links; one transaction per file) → linking
(mentions, Neo4j copy) → embedding (pending chunks → vectors) with embedders (the models)
and vectors (the Chroma store); ingest orchestrates, ingest_report says what happened.
forms turns the Corpus page's form values into these functions' arguments.
"""

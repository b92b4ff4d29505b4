"""Training tables: the job queue (all background work, not only training), streamed
metrics, the adapter registry and the registry of tuned embedding models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db.base import Base, JSONType, UTCDateTime, utcnow

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")
# What a job does; `clara worker --kinds` picks among them. "sft" trains an adapter, "score"
# scores a dataset, "embed" embeds pending corpus chunks, "embed-tune" fine-tunes the
# embedding model on the corpus (core.corpus.embed_tune), "sleep" only exercises the queue.
JOB_KINDS = ("sft", "score", "embed", "embed-tune", "gate", "sleep")


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (Index("ix_training_jobs_claim", "state", "priority", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # One of JOB_KINDS.
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="sft")
    name: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    owner: Mapped[str] = mapped_column(String(64), nullable=False)
    method: Mapped[str] = mapped_column(String(16), nullable=False, default="lora")
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    base_model: Mapped[str] = mapped_column(Text, nullable=False, default="")
    dataset_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # GPUs per machine the job needs: only a worker with as many claims it.
    gpus: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    # Incremented on every claim: a process holding an older token has lost the job.
    fencing_token: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    step: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    checkpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Why a job failed, one of core.training.queue.FailureReason (`error` says it in words).
    failure_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    adapter_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TrainingMetric(Base):
    __tablename__ = "training_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    # train | eval | eval_before | eval_after
    phase: Mapped[str] = mapped_column(String(16), nullable=False, default="train")
    step: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    learning_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    grad_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_perplexity: Mapped[float | None] = mapped_column(Float, nullable=True)
    extra: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class JobNode(Base):
    """One machine taking part in one attempt (fencing token) of a distributed job.

    Node 0 is published by the job's own process with the rendezvous address of its ranks;
    other workers join by inserting the next node rank, which the primary key lets only one
    of them do (core.training.distributed.claim_node)."""

    __tablename__ = "job_nodes"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    token: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    nodes: Mapped[int] = mapped_column(Integer, nullable=False)  # how many the attempt needs
    worker_id: Mapped[str] = mapped_column(String(128), nullable=False)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    address: Mapped[str | None] = mapped_column(String(255), nullable=True)  # node 0's
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)  # node 0's
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    base_model: Mapped[str] = mapped_column(Text, nullable=False)
    base_model_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    method: Mapped[str] = mapped_column(String(16), nullable=False)
    dataset_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dataset_manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    parent_adapter_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    library_versions: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class EmbeddingModel(Base):
    """An embedding model fine-tuned on the corpus by an "embed-tune" job, with its lineage:
    the base model, the corpus state it was trained on, the job, the spec and the in-job
    validation figures (core.corpus.embed_tune)."""

    __tablename__ = "embedding_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    base_model: Mapped[str] = mapped_column(Text, nullable=False)
    base_model_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    # The corpus it was tuned on: documents, chunks and a sha256 over (doc_id, revision,
    # sha256) of every document, so a later corpus can be told apart.
    corpus_documents: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    corpus_chunks: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    corpus_sha256: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    pairs: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    library_versions: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

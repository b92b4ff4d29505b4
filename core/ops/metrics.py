"""Prometheus metrics: what each process measures itself, and what the database knows.

Three sources, because the work is spread over processes:
- In-process families (core.ops.measures): search and generation latency, tokens,
  requests. They are measured where the work happens (core.corpus.search,
  core.serving.chat) and exported by the server that did it: the API and the chat server
  each have their own.
- `DatabaseCollector`, read at scrape time: jobs by kind and state, job durations, queue
  wait, training tokens/s, process heartbeats, corpus size, free disk. Jobs run in child
  processes of any worker on any machine; the jobs and metrics tables already hold all of
  it, so reading them when Prometheus asks is exact and needs no shared memory between
  processes. The API and every worker export it, with the same values: aggregate with
  `max without (instance, job)` (deploy/prometheus/alerts.yml does).
- The worker's own families (core.ops.measures): jobs it ran by outcome, jobs running now.

Access: the API's and the chat server's /metrics answer the scrape token
(`Authorization: Bearer <CLARA_METRICS_TOKEN>`) or a caller holding system:monitor (an
admin's own credentials), nobody else, on whatever address they serve. The worker has no
users: it wants the token when one is set, and without one it serves only on loopback
(core.config refuses another host without a token).
"""

from __future__ import annotations

import hmac
import logging
import shutil
import socket
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.corpus.models import Chunk, Document
from core.db import reading
from core.ops import measures
from core.ops.heartbeats import list_processes
from core.training.models import FINISHED_STATES, TrainingJob, TrainingMetric
from core.training.queue import db_now

log = logging.getLogger("clara.metrics")

JOB_DURATION_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)
QUEUE_WAIT_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 14400, 86400)


class DatabaseCollector:
    """Families read from the database at each scrape. A database that does not answer
    gives `clara_database_up 0` (and the disk), never a failed scrape."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings

    def collect(self) -> Iterator[Metric]:
        families: list[Metric] = []
        try:
            with reading(self.engine) as s:
                families = list(self._from_database(s))
        except Exception as err:  # the scrape must answer whatever the database does
            log.warning("metrics: the database did not answer: %s", err)
        yield GaugeMetricFamily(
            "clara_database_up",
            "Whether the database answered this scrape",
            value=int(bool(families)),
        )
        yield from families
        yield from self._disk()

    def _from_database(self, s: Session) -> Iterator[Metric]:
        now = db_now(s.connection())
        yield _job_counts(s)
        yield from _job_timings(s)
        yield _oldest_queued(s, now)
        yield _tokens_per_second(s)
        yield from self._services()
        yield from _corpus(s)

    def _services(self) -> Iterator[Metric]:
        processes = list_processes(self.engine, self.settings.health_stale_seconds)
        counts = GaugeMetricFamily(
            "clara_services", "Registered processes by kind and status", labels=["kind", "status"]
        )
        for kind in ("worker", "chat", "api"):
            for status, stale in (("live", False), ("stale", True)):
                n = sum(1 for p in processes if p.kind == kind and p.stale is stale)
                counts.add_metric([kind, status], n)
        yield counts
        ages = GaugeMetricFamily(
            "clara_service_heartbeat_age_seconds",
            "Seconds since each registered process last recorded that it lives",
            labels=["kind", "host", "pid"],
        )
        for p in processes:
            ages.add_metric([p.kind, p.host, str(p.pid)], p.age_seconds)
        yield ages

    def _disk(self) -> Iterator[Metric]:
        try:
            usage = shutil.disk_usage(self.settings.data_path)
        except OSError:
            return
        yield GaugeMetricFamily(
            "clara_data_dir_free_bytes", "Free bytes on the data dir's disk", value=usage.free
        )
        yield GaugeMetricFamily(
            "clara_data_dir_capacity_bytes", "Size of the data dir's disk", value=usage.total
        )


def _job_counts(s: Session) -> Metric:
    family = GaugeMetricFamily("clara_jobs", "Jobs by kind and state", labels=["kind", "state"])
    rows = s.execute(
        select(TrainingJob.kind, TrainingJob.state, func.count()).group_by(
            TrainingJob.kind, TrainingJob.state
        )
    )
    for kind, state, n in rows:
        family.add_metric([kind, state], n)
    return family


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


def _job_timings(s: Session) -> Iterator[Metric]:
    """Durations of finished jobs (their last attempt) and queue waits (submission to the
    latest claim), cumulative over every job in the table, as Prometheus histograms are."""
    durations: dict[tuple[str, ...], list[float]] = {}
    waits: dict[tuple[str, ...], list[float]] = {}
    rows = s.execute(
        select(
            TrainingJob.kind,
            TrainingJob.state,
            TrainingJob.created_at,
            TrainingJob.started_at,
            TrainingJob.finished_at,
        ).where(TrainingJob.started_at.is_not(None))
    )
    for kind, state, created, started, finished in rows:
        wait = _seconds(started, created)
        if wait is not None:
            waits.setdefault((kind,), []).append(wait)
        took = _seconds(finished, started)
        if state in FINISHED_STATES and took is not None:
            durations.setdefault((kind, state), []).append(took)
    yield _histogram(
        "clara_job_duration_seconds",
        "Run time of finished jobs (their last attempt), by kind and final state",
        ["kind", "state"],
        durations,
        JOB_DURATION_BUCKETS,
    )
    yield _histogram(
        "clara_job_queue_wait_seconds",
        "Time from a job's submission to its (latest) claim by a worker, by kind",
        ["kind"],
        waits,
        QUEUE_WAIT_BUCKETS,
    )


def _histogram(
    name: str,
    doc: str,
    labels: list[str],
    groups: dict[tuple[str, ...], list[float]],
    bounds: Iterable[float],
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    bounds = list(bounds)
    for key, values in sorted(groups.items()):
        buckets = [(str(float(b)), sum(1 for v in values if v <= b)) for b in bounds]
        buckets.append(("+Inf", len(values)))
        family.add_metric(list(key), buckets, sum_value=sum(values))
    return family


def _oldest_queued(s: Session, now: datetime) -> Metric:
    family = GaugeMetricFamily(
        "clara_queue_oldest_job_age_seconds",
        "Age of the oldest queued job, by kind (absent: nothing queued)",
        labels=["kind"],
    )
    rows = s.execute(
        select(TrainingJob.kind, func.min(TrainingJob.created_at))
        .where(TrainingJob.state == "queued")
        .group_by(TrainingJob.kind)
    )
    for kind, oldest in rows:
        family.add_metric([kind], _seconds(now, oldest) or 0.0)
    return family


def _tokens_per_second(s: Session) -> Metric:
    family = GaugeMetricFamily(
        "clara_training_tokens_per_second",
        "Newest training throughput of each running job",
        labels=["job_id", "kind"],
    )
    running = dict(
        s.execute(select(TrainingJob.id, TrainingJob.kind).where(TrainingJob.state == "running"))
        .tuples()
        .all()
    )
    if not running:
        return family
    newest = (
        select(func.max(TrainingMetric.id))
        .where(TrainingMetric.job_id.in_(running), TrainingMetric.tokens_per_second.is_not(None))
        .group_by(TrainingMetric.job_id)
    )
    rows = s.execute(
        select(TrainingMetric.job_id, TrainingMetric.tokens_per_second).where(
            TrainingMetric.id.in_(newest)
        )
    )
    for job_id, tps in rows:
        family.add_metric([str(job_id), running[job_id]], tps)
    return family


def _corpus(s: Session) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "clara_corpus_documents",
        "Documents in the corpus",
        value=s.scalar(select(func.count()).select_from(Document)) or 0,
    )
    chunks = GaugeMetricFamily(
        "clara_corpus_chunks",
        "Chunks of the corpus by whether they have vectors",
        labels=["embedded"],
    )
    for embedded, n in s.execute(select(Chunk.embedded, func.count()).group_by(Chunk.embedded)):
        chunks.add_metric([str(bool(embedded)).lower()], n)
    yield chunks


# Registries and serving ---------------------------------------------------------------------


def metrics_registry(
    engine: Engine | None = None,
    settings: Settings | None = None,
    *,
    worker: bool = False,
) -> CollectorRegistry:
    """What one server exports: this process (CPU, memory) and its own measurements, the
    database's families when given an engine, the worker's with `worker`."""
    families = measures.enable()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(families.local)
    if worker:
        registry.register(families.worker)
    if engine is not None and settings is not None:
        registry.register(DatabaseCollector(engine, settings))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text format Prometheus scrapes, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def is_scrape_token(settings: Settings, authorization: str | None) -> bool:
    """Whether an Authorization header carries CLARA_METRICS_TOKEN (compared in constant
    time); always False while no token is configured."""
    if settings.metrics_token is None or not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    expected = settings.metrics_token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # scrapes every few seconds: no log
        pass


def start_metrics_server(
    registry: CollectorRegistry, host: str, port: int, settings: Settings
) -> ThreadingWSGIServer:
    """prometheus_client's exposition on host:port in a daemon thread, behind the scrape
    token when one is configured (core.config allows a non-loopback host only then)."""
    app = make_wsgi_app(registry)

    def guarded(environ, start_response):
        if settings.metrics_token is not None and not is_scrape_token(
            settings, environ.get("HTTP_AUTHORIZATION")
        ):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"metrics need 'Authorization: Bearer <CLARA_METRICS_TOKEN>'\n"]
        return app(environ, start_response)

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    server = make_server(host, port, guarded, server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server

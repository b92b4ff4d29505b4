"""Build samples from the corpus: documents or chunks become text samples, or conversations
through editable templates, e.g. user "Was regelt {title}?" / assistant "{text}".

Long documents are split token-aware (the base model's tokenizer when configured and local,
else a word approximation) at sentence or word boundaries, using the corpus chunker. Every
sample records where it came from: document id and revision, chunk or part with character
offsets, the template, and the saved search when there was one. Building the same selection
twice adds nothing new (identical content already in the dataset is skipped).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, model_validator
from sqlalchemy import Engine, select

from core.audit import audited
from core.config import get_settings
from core.datasets.errors import DatasetError, TemplateError
from core.datasets.models import DatasetSample
from core.datasets.service import (
    SampleIn,
    content_sha256,
    insert_samples,
    resolve_dataset,
    sample_row,
)
from core.db import writing
from core.db.base import utcnow
from core.permissions import Principal, require

PLACEHOLDERS: dict[str, str] = {
    "title": "document title",
    "text": "the document text, the chunk or the part of a long document",
    "doc_id": "document id",
    "revision": "document revision",
    "document_type": "document type",
    "domain": "domain",
    "date": "document date (YYYY-MM-DD)",
    "part": "number of the part or chunk (1-based)",
    "parts": "number of parts of the document",
    "source_path": "file the document came from",
    "metadata": "free metadata, e.g. {metadata[author]}",
}
DEFAULT_MAX_TOKENS = 1024


class SampleTemplate(BaseModel):
    """How a document (or chunk) becomes a sample. Fields are str.format templates."""

    name: str = "custom"
    kind: Literal["text", "chat"] = "chat"
    text: str = "{text}"
    system: str | None = None
    user: str = "Was regelt {title}?"
    assistant: str = "{text}"

    @model_validator(mode="after")
    def _check_placeholders(self) -> SampleTemplate:
        fields = ("text",) if self.kind == "text" else ("system", "user", "assistant")
        for fname in fields:
            tpl = getattr(self, fname)
            if tpl is None:
                continue
            try:
                parsed = list(string.Formatter().parse(tpl))
            except ValueError as err:
                raise TemplateError(
                    f"template {self.name!r}, field {fname!r}: {err} (write {{{{ and }}}} for "
                    "literal braces)"
                ) from None
            for _lit, name, _spec, _conv in parsed:
                if name is None:
                    continue
                root = name.split("[", 1)[0].split(".", 1)[0]
                if root not in PLACEHOLDERS:
                    raise TemplateError(
                        f"template {self.name!r}, field {fname!r}: unknown placeholder "
                        f"{{{name}}}; available: " + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                    )
        if self.kind == "chat" and not (self.user.strip() and self.assistant.strip()):
            raise TemplateError(f"template {self.name!r}: a chat template needs user and assistant")
        return self

    def render(self, values: dict[str, Any]) -> SampleIn:
        def fmt(tpl: str) -> str:
            try:
                return tpl.format_map(values)
            except (KeyError, IndexError) as err:
                raise TemplateError(
                    f"template {self.name!r}: {err} is not available for document "
                    f"{values.get('doc_id')!r}"
                ) from None

        if self.kind == "text":
            return SampleIn(kind="text", text=fmt(self.text))
        return SampleIn(
            kind="chat",
            system=fmt(self.system) if self.system else None,
            messages=[
                {"role": "user", "content": fmt(self.user)},
                {"role": "assistant", "content": fmt(self.assistant)},
            ],
        )


BUILTIN_TEMPLATES: dict[str, SampleTemplate] = {
    "text": SampleTemplate(name="text", kind="text", text="{text}"),
    "title-and-text": SampleTemplate(name="title-and-text", kind="text", text="{title}\n\n{text}"),
    "was-regelt": SampleTemplate(
        name="was-regelt", kind="chat", user="Was regelt {title}?", assistant="{text}"
    ),
    "erklaere-abschnitt": SampleTemplate(
        name="erklaere-abschnitt",
        kind="chat",
        system="Du beantwortest Fragen zu Dokumenten der Verwaltung sachlich und genau.",
        user="Was steht in „{title}“ (Teil {part} von {parts})?",
        assistant="{text}",
    ),
}


def get_template(name_or_template: str | SampleTemplate | dict[str, Any]) -> SampleTemplate:
    if isinstance(name_or_template, SampleTemplate):
        return name_or_template
    if isinstance(name_or_template, dict):
        return SampleTemplate.model_validate(name_or_template)
    tpl = BUILTIN_TEMPLATES.get(name_or_template)
    if tpl is None:
        raise TemplateError(
            f"no template named {name_or_template!r}; built in: {', '.join(BUILTIN_TEMPLATES)}"
        )
    return tpl


@dataclass
class BuildReport:
    dataset: str
    documents: int = 0
    added: int = 0
    skipped_existing: int = 0
    split_documents: int = 0
    missing: list[str] = field(default_factory=list)
    sample_ids: list[int] = field(default_factory=list)


class _Splitter:
    def __init__(self, max_tokens: int) -> None:
        from core.corpus.chunking import Chunker
        from core.datasets.scoring import load_tokenizer

        tok = load_tokenizer(get_settings().base_model)
        backend = getattr(tok, "backend_tokenizer", None)
        self.chunker = Chunker(backend, size=max_tokens, overlap=0)

    def split(self, text: str) -> list[tuple[str, int, int]]:
        return [(c.text, c.start_char, c.end_char) for c in self.chunker.split(text)]


def _values(doc: Any, text: str, part: int, parts: int) -> dict[str, Any]:
    return {
        "title": doc.title,
        "text": text,
        "doc_id": doc.doc_id,
        "revision": doc.revision,
        "document_type": doc.document_type or "",
        "domain": doc.domain or "",
        "date": doc.date.isoformat() if doc.date else "",
        "part": part,
        "parts": parts,
        "source_path": doc.source_path or "",
        "metadata": dict(doc.metadata or {}),
    }


def build_from_documents(
    engine: Engine,
    actor: Principal,
    dataset_ref: int | str,
    doc_ids: list[str],
    template: str | SampleTemplate | dict[str, Any] = "text",
    unit: Literal["document", "chunk"] = "document",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    status: str = "pending",
    extra_provenance: dict[str, Any] | None = None,
) -> BuildReport:
    """Turn corpus documents (or their retrieval chunks) into samples of a dataset."""
    from core.corpus.documents import iter_chunks, iter_documents

    tpl = get_template(template)
    if unit not in ("document", "chunk"):
        raise DatasetError(f"unknown unit {unit!r}; use document or chunk")
    if max_tokens < 16:
        raise DatasetError("max_tokens must be at least 16")
    with audited(
        engine,
        actor,
        "datasets.build",
        target=str(dataset_ref),
        detail={"template": tpl.name, "unit": unit, "documents": len(doc_ids)},
    ) as ctx:
        require(actor, "datasets:create")
        require(actor, "corpus:search")
        ids = list(dict.fromkeys(doc_ids))
        with writing(engine) as s:
            d = resolve_dataset(s, dataset_ref)
            ctx.target = d.name
            existing = set(
                s.scalars(
                    select(DatasetSample.content_sha256).where(DatasetSample.dataset_id == d.id)
                )
            )
        report = BuildReport(dataset=d.name)
        docs = {doc.doc_id: doc for doc in iter_documents(engine, actor, ids)}
        report.missing = [i for i in ids if i not in docs]
        report.documents = len(docs)
        tpl_prov = tpl.model_dump(exclude_none=True)
        samples: list[SampleIn] = []

        def add(doc: Any, text: str, part: int, parts: int, where: dict[str, Any]) -> None:
            sample = tpl.render(_values(doc, text, part, parts))
            msgs = [m.model_dump() for m in sample.messages] if sample.messages else None
            sha = content_sha256(sample.kind, sample.text, msgs, sample.system)
            if sha in existing:
                report.skipped_existing += 1
                return
            existing.add(sha)
            sample.status = status
            sample.provenance = {
                "source": "corpus",
                "doc_id": doc.doc_id,
                "revision": doc.revision,
                **where,
                "template": tpl.name,
                "template_fields": tpl_prov,
                **(extra_provenance or {}),
            }
            sample.metadata = {"title": doc.title}
            samples.append(sample)

        if unit == "chunk":
            by_doc: dict[str, list[Any]] = {}
            for ch in iter_chunks(engine, actor, list(docs)):
                by_doc.setdefault(ch.doc_id, []).append(ch)
            for doc_id, chunks in by_doc.items():
                for ch in chunks:
                    if not ch.text.strip():
                        continue
                    add(
                        docs[doc_id],
                        ch.text,
                        ch.chunk_index + 1,
                        len(chunks),
                        {
                            "chunk_index": ch.chunk_index,
                            "start_char": ch.start_char,
                            "end_char": ch.end_char,
                        },
                    )
        else:
            splitter = _Splitter(max_tokens)
            for doc in docs.values():
                parts = splitter.split(doc.text)
                if len(parts) > 1:
                    report.split_documents += 1
                for i, (text, start, end) in enumerate(parts, start=1):
                    add(
                        doc,
                        text,
                        i,
                        len(parts),
                        {"part": i, "parts": len(parts), "start_char": start, "end_char": end},
                    )
        if samples:
            with writing(engine) as s:
                d = resolve_dataset(s, d.id)
                rows = [sample_row(d.id, smp, actor.username) for smp in samples]
                report.sample_ids = insert_samples(s, d.id, rows)
                d.updated_at = utcnow()
        report.added = len(report.sample_ids)
        ctx.detail.update({"added": report.added, "skipped": report.skipped_existing})
        return report


def build_from_saved_search(
    engine: Engine,
    actor: Principal,
    dataset_ref: int | str,
    search_name: str,
    template: str | SampleTemplate | dict[str, Any] = "text",
    unit: Literal["document", "chunk"] = "document",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    k: int | None = None,
) -> BuildReport:
    """Build from the documents a saved corpus search returns now (its top k)."""
    from core.corpus.search import run_saved_search

    results = run_saved_search(engine, actor, search_name, k=k)
    return build_from_documents(
        engine,
        actor,
        dataset_ref,
        [r.doc_id for r in results],
        template,
        unit,
        max_tokens,
        extra_provenance={"saved_search": search_name},
    )


def preview(template: str | SampleTemplate | dict[str, Any], doc: Any) -> SampleIn:
    """What the template makes of one document (first part), for the page's live preview."""
    tpl = get_template(template)
    return tpl.render(_values(doc, doc.text, 1, 1))

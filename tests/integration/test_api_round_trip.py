"""The whole workbench through the HTTP API only, as a program would use it: upload documents,
build a dataset from them, accept and freeze it, train an adapter with a real worker while
following the job's events, find the adapter with its lineage, and chat with it through the
official OpenAI client. No core call and no CLI after the storage is set up."""

from __future__ import annotations

import openai
import pytest

from tests.api_server import running_api_server
from tests.api_training import (
    TRAINING_ENV,
    YAML,
    module_storage,
    running_worker,
    spec_yaml,
    sse_events,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

DOCS = ("hundesteuersatzung.md", "baumschutzsatzung.md", "abfallgebuehrensatzung.md")


@pytest.fixture
def storage(tmp_path_factory, shared_demo_model):
    # One engine: every route is tested on both in the other API modules; this is the
    # whole path through them, end to end.
    with module_storage("sqlite", tmp_path_factory, shared_demo_model) as settings:
        yield settings


def test_ingest_build_freeze_train_and_chat_only_through_the_api(storage):
    with running_api_server(storage, TRAINING_ENV) as api, running_worker(storage):
        trainer = api.client("trainer", timeout=300)

        files = [
            ("files", (name, (ROOT / "examples" / "corpus" / name).read_bytes(), "text/markdown"))
            for name in DOCS
        ]
        report = trainer.post("/api/v1/corpus/documents", files=files, data={"embed": "later"})
        assert report.status_code == 200, report.text
        assert report.json()["ok"], report.json()
        docs = trainer.get("/api/v1/corpus/documents", params={"limit": 50}).json()
        doc_ids = [d["doc_id"] for d in docs["items"]]
        assert len(doc_ids) == len(DOCS)

        assert trainer.post("/api/v1/datasets", json={"name": "satzungen"}).status_code == 201
        built = trainer.post(
            "/api/v1/datasets/satzungen/build",
            json={"doc_ids": doc_ids, "template": "was-regelt"},
        )
        assert built.status_code == 200, built.text
        accepted = trainer.post("/api/v1/datasets/satzungen/review", json={"decision": "accepted"})
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["changed"] >= len(DOCS), accepted.text
        frozen = trainer.post("/api/v1/datasets/satzungen/versions", json={"eval_ratio": 0.0})
        assert frozen.status_code == 201, frozen.text

        submitted = trainer.post(
            "/api/v1/jobs", content=spec_yaml("satzung-lora", "satzungen@v1"), headers=YAML
        )
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        seen = []
        with trainer.stream("GET", f"/api/v1/jobs/{job_id}/events") as events:
            for event in sse_events(events):
                seen.append(event)
                if event.event == "end":
                    break
        assert seen[-1].event == "end" and seen[-1].data["state"] == "succeeded", seen[-3:]
        assert [e for e in seen if e.event == "metric"], "no training metrics were streamed"

        adapter = trainer.get("/api/v1/adapters/satzung-lora").json()
        assert adapter["adapter"]["name"] == "satzung-lora"
        assert "satzungen" in str(adapter["lineage"])

        client = openai.OpenAI(
            base_url=api.url + "/v1", api_key=api.token("trainer"), max_retries=0, timeout=300
        )
        assert "satzung-lora" in [m.id for m in client.models.list()]
        answer = client.chat.completions.create(
            model="satzung-lora",
            messages=[{"role": "user", "content": "Was regelt die Hundesteuersatzung?"}],
            max_tokens=16,
            temperature=0,
        )
        assert answer.usage.completion_tokens > 0
        assert answer.choices[0].finish_reason in ("stop", "length")

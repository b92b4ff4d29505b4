"""/api/v1/datasets against the real `clara api` server, on SQLite and on PostgreSQL: import
(all or nothing, bad rows as 422 naming file, line and field), build from documents and
saved searches, scoring as a queued job, the review queue with its optimistic version (a
stale one is 409 naming who changed the sample), freeze, diff, export and the download of
exactly the file core wrote; every route for every role exactly as core/permissions.py
allows it, audited; nothing without credentials; unknown datasets and samples are 404.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from api.routes import datasets as dataset_routes
from core.permissions import ROLES, has_permission
from tests.api_storage import (
    ENGINES,
    PREFIX,
    audit_rows,
    concrete,
    declared_routes,
    module_api_server,
)

pytestmark = pytest.mark.slow

D = f"{PREFIX}/datasets"
DOCS = {
    "laerm.md": "# Lärmschutz\n\nNachtruhe gilt von 22 bis 6 Uhr. Ausnahmen genehmigt das Amt.",
    "parken.md": "# Anwohnerparken\n\nDer Parkausweis kostet 30 Euro im Jahr.",
}


def _chat(i: int, tag: str = "") -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Frage {tag}{i}?"},
            {"role": "assistant", "content": f"Antwort {tag}{i}."},
        ]
    }


def _jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _import(client, ref: str, name: str, data: bytes, **form) -> dict:
    r = client.post(f"{D}/{ref}/import", files={"file": (name, data)}, data=form)
    assert r.status_code == 200, r.text
    return r.json()


def _create(client, name: str) -> dict:
    r = client.post(D, json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


def _samples(client, ref: str, **params) -> dict:
    r = client.get(f"{D}/{ref}/samples", params=params)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module", params=ENGINES)
def api(request, tmp_path_factory):
    with module_api_server(request.param, tmp_path_factory, "datasets") as server:
        with server.client("admin") as admin:
            files = [("files", (n, b.encode())) for n, b in DOCS.items()]
            r = admin.post(f"{PREFIX}/corpus/documents", files=files, data={"embed": "later"})
            assert r.status_code == 200 and r.json()["ok"], r.text
            # "shared": two frozen versions that every role reads, diffs and exports.
            _create(admin, "shared")
            _import(admin, "shared", "shared.jsonl", _jsonl([_chat(i, "s") for i in range(5)]))
            assert admin.post(f"{D}/shared/review", json={"decision": "accepted"}).json() == {
                "changed": 5,
                "decision": "accepted",
            }
            assert admin.post(f"{D}/shared/versions", json={}).status_code == 201
            assert admin.post(f"{D}/shared/versions", json={}).status_code == 201
            r = admin.post(f"{D}/shared/versions/v1/exports", json={})
            assert r.status_code == 201, r.text
        yield server


@pytest.fixture(scope="module")
def admin(api):
    with api.client("admin") as c:
        yield c


# Import -----------------------------------------------------------------------------------


def test_import_is_all_or_nothing_with_every_bad_row_named(api, admin):
    _create(admin, "imports")
    good = [_chat(i) for i in range(4)]
    bad_rows = [
        *good[:2],
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "y"}]},
        *good[2:],
    ]
    data = _jsonl(bad_rows) + b"{not json\n"
    r = admin.post(f"{D}/imports/import", files={"file": ("faq.jsonl", data)})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "ImportFailed" and "nothing was imported" in body["detail"]
    assert [(f["file"], f["line"], f["field"]) for f in body["fields"]] == [
        ("faq.jsonl", 3, "messages.0.role"),
        ("faq.jsonl", 4, "messages.0.content"),
        ("faq.jsonl", 7, ""),
    ]
    assert "robot" in body["fields"][0]["problem"] and "JSON" in body["fields"][2]["problem"]
    assert _samples(admin, "imports")["total"] == 0
    failed = audit_rows(api, "datasets.import", "admin")[-1]
    assert failed["outcome"] == "failed" and failed["detail"]["bad_rows"] == 3

    kept = _import(admin, "imports", "faq.jsonl", data, skip_bad="true")
    assert kept["imported"] == 4 and kept["skipped"] == 3 and kept["format"] == "messages"
    assert [e["line"] for e in kept["errors"]] == [3, 4, 7] and kept["errors_left_out"] == 0
    assert _samples(admin, "imports")["total"] == 4
    assert audit_rows(api, "datasets.import", "admin")[-1]["outcome"] == "ok"

    unknown = admin.post(
        f"{D}/imports/import", files={"file": ("x.jsonl", _jsonl([{"frage": "a", "b": 1}]))}
    )
    assert unknown.status_code == 422 and "cannot tell the format" in unknown.json()["detail"]
    wrong_type = admin.post(f"{D}/imports/import", files={"file": ("x.txt", b"hello")})
    assert wrong_type.status_code == 400 and ".txt" in wrong_type.json()["detail"]


def test_import_reads_every_format_and_file_type(api, admin):
    _create(admin, "formats")
    alpaca = io.StringIO()
    w = csv.DictWriter(alpaca, fieldnames=["instruction", "input", "output"])
    w.writeheader()
    w.writerow({"instruction": "Übersetze", "input": "Haus", "output": "house"})
    sharegpt = json.dumps(
        [{"conversations": [{"from": "human", "value": "Hallo?"}, {"from": "gpt", "value": "Hi."}]}]
    ).encode()
    texts = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"text": "Ein Absatz."}, {"text": "Noch einer."}]), texts)
    reports = [
        _import(admin, "formats", "a.csv", alpaca.getvalue().encode()),
        _import(admin, "formats", "s.json", sharegpt),
        _import(admin, "formats", "t.parquet", texts.getvalue()),
        _import(admin, "formats", "m.jsonl", _jsonl([_chat(1, "m")]), format="messages"),
    ]
    assert [(r["format"], r["detected"], r["imported"]) for r in reports] == [
        ("alpaca", True, 1),
        ("sharegpt", True, 1),
        ("text", True, 2),
        ("messages", False, 1),
    ]
    page = _samples(admin, "formats", sort="id_asc", limit=10)
    assert [s["kind"] for s in page["items"]] == ["chat", "chat", "text", "text", "chat"]
    assert page["items"][0]["messages"][0]["content"] == "Übersetze\n\nHaus"
    assert page["items"][2]["provenance"]["file"] == "t.parquet"


# Build ------------------------------------------------------------------------------------


def test_build_from_documents_and_from_a_saved_search(api, admin):
    _create(admin, "built")
    r = admin.post(
        f"{D}/built/build",
        json={"doc_ids": ["laerm", "parken", "nope"], "template": "was-regelt"},
    )
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["added"] == 2 and rep["documents"] == 2 and rep["missing"] == ["nope"]
    sample = admin.get(f"{D}/built/samples/{rep['sample_ids'][0]}").json()
    assert sample["messages"][0]["content"] == "Was regelt Lärmschutz?"
    assert sample["provenance"]["doc_id"] == "laerm" and sample["source"] == "corpus"
    again = admin.post(f"{D}/built/build", json={"doc_ids": ["laerm"], "template": "was-regelt"})
    assert again.json()["added"] == 0 and again.json()["skipped_existing"] == 1

    saved = admin.put(f"{PREFIX}/corpus/searches/parken", json={"query": "Parkausweis"})
    assert saved.status_code == 200, saved.text
    custom = {"kind": "text", "text": "{title}: {text}"}
    r = admin.post(f"{D}/built/build", json={"saved_search": "parken", "template": custom})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["added"] == 1
    text = admin.get(f"{D}/built/samples/{rep['sample_ids'][0]}").json()
    assert text["text"].startswith("Anwohnerparken: ") and text["provenance"]["saved_search"]
    assert audit_rows(api, "datasets.build", "admin")[-1]["outcome"] == "ok"
    bad = admin.post(f"{D}/built/build", json={"doc_ids": ["laerm"], "template": "no-such"})
    assert bad.status_code == 400 and "no-such" in bad.json()["detail"]


# Scoring ----------------------------------------------------------------------------------


def test_scoring_is_a_queued_job(api, admin):
    from core.db import get_engine, reading
    from core.training.models import TrainingJob

    _create(admin, "scored")
    _import(admin, "scored", "s.jsonl", _jsonl([_chat(i, "q") for i in range(3)]))
    r = admin.post(f"{D}/scored/score")
    assert r.status_code == 202, r.text
    answer = r.json()
    assert isinstance(answer["job_id"], int) and answer["run"]["status"] == "queued"
    assert answer["run"]["total"] == 3
    with reading(get_engine(api.settings)) as s:
        job = s.scalar(select(TrainingJob).where(TrainingJob.id == answer["job_id"]))
        assert (job.kind, job.state, job.owner) == ("score", "queued", "admin")
        assert job.spec["run_id"] == answer["run_id"]
    shown = admin.get(f"{D}/scored").json()
    assert shown["latest_scoring_run"]["job_id"] == answer["job_id"]
    busy = admin.post(f"{D}/scored/score")
    assert busy.status_code == 409 and "being scored already" in busy.json()["detail"]
    queued, refused = audit_rows(api, "datasets.score", "admin")[-2:]
    assert queued["outcome"] == "ok" and queued["detail"]["job_id"] == answer["job_id"]
    assert refused["outcome"] == "failed" and "being scored" in refused["detail"]["error"]


# Review -----------------------------------------------------------------------------------


def test_stale_review_is_409_naming_who_changed_the_sample(api, admin):
    _create(admin, "conflict")
    _import(admin, "conflict", "c.jsonl", _jsonl([_chat(i, "c") for i in range(2)]))
    first = _samples(admin, "conflict", sort="id_asc")["items"][0]
    url = f"{D}/conflict/samples/{first['id']}"
    with api.client("trainer") as trainer, api.client("analyst") as analyst:
        seen_by_trainer = trainer.get(url).json()["row_version"]
        seen_by_analyst = analyst.get(url).json()["row_version"]
        r = trainer.post(
            f"{url}/review", json={"decision": "accepted", "row_version": seen_by_trainer}
        )
        assert r.status_code == 200 and r.json()["reviewed_by"] == "trainer"
        stale = analyst.post(
            f"{url}/review", json={"decision": "rejected", "row_version": seen_by_analyst}
        )
        assert stale.status_code == 409, stale.text
        assert stale.json()["error"] == "ReviewConflict"
        assert "changed by trainer" in stale.json()["detail"]
        assert "now accepted" in stale.json()["detail"]
        edit = analyst.put(
            url, json={"row_version": seen_by_analyst, "messages": _chat(9, "e")["messages"]}
        )
        assert edit.status_code == 409 and "trainer" in edit.json()["detail"]
        # Reloaded, the analyst's edit goes through; the original is kept.
        fresh = analyst.get(url).json()
        assert fresh["status"] == "accepted" and fresh["row_version"] == seen_by_trainer + 1
        edited = analyst.put(
            url,
            json={"row_version": fresh["row_version"], "messages": _chat(9, "e")["messages"]},
        )
        assert edited.status_code == 200, edited.text
        assert edited.json()["edited_by"] == "analyst"
        assert edited.json()["original"]["messages"] == first["messages"]
    assert admin.get(url).json()["messages"] == _chat(9, "e")["messages"]
    outcomes = [(a["actor"], a["outcome"]) for a in audit_rows(api, "datasets.review")]
    assert ("trainer", "ok") in outcomes and ("analyst", "failed") in outcomes


def test_samples_filtered_sorted_and_paged(api, admin):
    _create(admin, "queue")
    _import(admin, "queue", "q.jsonl", _jsonl([_chat(i, "p") for i in range(7)]))
    ids = [s["id"] for s in _samples(admin, "queue", sort="id_asc", limit=10)["items"]]
    for sid in ids[:2]:
        v = admin.get(f"{D}/queue/samples/{sid}").json()["row_version"]
        r = admin.post(
            f"{D}/queue/samples/{sid}/review",
            json={"decision": "rejected", "row_version": v, "note": "zu kurz"},
        )
        assert r.status_code == 200 and r.json()["review_note"] == "zu kurz"
    first = _samples(admin, "queue", status="pending", sort="id_asc", limit=3)
    second = _samples(admin, "queue", status="pending", sort="id_asc", limit=3, offset=3)
    assert first["total"] == second["total"] == 5
    assert [s["id"] for s in first["items"] + second["items"]] == ids[2:7]
    newest = _samples(admin, "queue", sort="id_desc", limit=1)["items"][0]
    assert newest["id"] == ids[-1]
    rejected = _samples(admin, "queue", status="rejected")
    assert {s["id"] for s in rejected["items"]} == set(ids[:2])
    found = _samples(admin, "queue", search="Frage p4")
    assert [s["id"] for s in found["items"]] == [ids[4]]
    both = admin.get(f"{D}/queue/samples", params=[("status", "pending"), ("status", "rejected")])
    assert both.json()["total"] == 7
    stats = admin.get(f"{D}/queue/review-stats").json()
    assert stats["counts"]["rejected"] == 2 and stats["counts"]["pending"] == 5
    bulk = admin.post(f"{D}/queue/review", json={"decision": "accepted"}).json()
    assert bulk == {"changed": 5, "decision": "accepted"}
    row = audit_rows(api, "datasets.review_bulk", "admin")[-1]
    assert row["target"] == "queue" and row["detail"]["changed"] == 5


# Versions and export ----------------------------------------------------------------------


def test_freeze_diff_export_and_download_exactly_what_core_wrote(api, admin):
    _create(admin, "frozen")
    _import(admin, "frozen", "f.jsonl", _jsonl([_chat(i, "f") for i in range(6)]))
    admin.post(f"{D}/frozen/review", json={"decision": "accepted"})
    v1 = admin.post(f"{D}/frozen/versions", json={"eval_ratio": 0.34, "seed": 7, "name": "erst"})
    assert v1.status_code == 201, v1.text
    assert v1.json()["ref"] == "frozen@v1" and v1.json()["counts"]["total"] == 6
    items = _samples(admin, "frozen", sort="id_asc")["items"]
    gone, changed = items[0], items[1]
    admin.post(
        f"{D}/frozen/samples/{gone['id']}/review",
        json={"decision": "rejected", "row_version": gone["row_version"]},
    )
    admin.put(
        f"{D}/frozen/samples/{changed['id']}",
        json={"row_version": changed["row_version"], "messages": _chat(99)["messages"]},
    )
    _import(admin, "frozen", "g.jsonl", _jsonl([_chat(1, "neu")]))
    admin.post(f"{D}/frozen/review", json={"decision": "accepted"})
    v2 = admin.post(f"{D}/frozen/versions", json={})
    assert v2.json()["ref"] == "frozen@v2"
    listed = admin.get(f"{D}/frozen/versions").json()
    assert [v["ref"] for v in listed["items"]] == ["frozen@v2", "frozen@v1"]
    assert admin.get(f"{D}/frozen/versions/latest").json()["number"] == 2
    assert admin.get(f"{D}/frozen/versions/1").json()["name"] == "erst"

    diff = admin.get(f"{D}/frozen/diff", params={"old": "v1", "new": "v2"}).json()
    assert diff["old"] == "frozen@v1" and diff["new"] == "frozen@v2"
    assert diff["removed"] == [str(gone["id"])] and diff["changed"] == [str(changed["id"])]
    assert len(diff["added"]) == 1 and diff["counts"]["unchanged"] == 4

    for fmt, file_type in (("messages", "jsonl"), ("sharegpt", "parquet"), ("alpaca", "csv")):
        r = admin.post(
            f"{D}/frozen/versions/v2/exports", json={"format": fmt, "file_type": file_type}
        )
        assert r.status_code == 201, r.text
        exp = r.json()
        assert exp["version"] == "frozen@v2" and set(exp["files"]) == {
            f"train.{file_type}",
            f"eval.{file_type}",
        }
        folder = api.settings.data_path / "exports" / "frozen-v2" / f"{fmt}-{file_type}"
        for name, meta in exp["files"].items():
            got = admin.get(meta["url"])
            assert got.status_code == 200, got.text
            assert got.content == (folder / name).read_bytes()
            assert hashlib.sha256(got.content).hexdigest() == meta["sha256"]
            assert (
                f'filename="frozen-v2-{fmt}-{file_type}-{name}"'
                in got.headers["content-disposition"]
            )
            assert _rows(got.content, file_type) == meta["rows"]
        info = admin.get(exp["dataset_info"])
        assert info.status_code == 200 and "frozen_v2_train" in info.json()
        assert admin.get(exp["axolotl"]).text.startswith("# Axolotl dataset config")
    first = admin.get(
        f"{D}/frozen/versions/v2/exports/messages/jsonl/train.jsonl"
    ).text.splitlines()
    assert all(set(json.loads(line)) == {"messages"} for line in first)
    rows = audit_rows(api, "datasets.export", "admin")
    assert rows[-1]["target"] == "frozen@v2" and rows[-1]["outcome"] == "ok"
    assert [a["outcome"] for a in audit_rows(api, "datasets.freeze", "admin")][-2:] == ["ok"] * 2
    missing = admin.get(f"{D}/frozen/versions/v1/exports/text/jsonl/train.jsonl")
    assert missing.status_code == 404 and "export it first" in missing.json()["detail"]
    assert admin.delete(f"{D}/frozen").status_code == 409


def _rows(content: bytes, file_type: str) -> int:
    if file_type == "jsonl":
        return len(content.decode().splitlines())
    if file_type == "parquet":
        return pq.read_table(io.BytesIO(content)).num_rows
    return len(list(csv.DictReader(io.StringIO(content.decode()))))


# Bad input, unknown things, credentials ---------------------------------------------------


def test_unknown_datasets_versions_and_samples_are_404(api, admin):
    calls = [
        ("GET", f"{D}/nope", {}),
        ("DELETE", f"{D}/nope", {}),
        ("GET", f"{D}/nope/samples", {}),
        ("GET", f"{D}/nope/review-stats", {}),
        ("GET", f"{D}/nope/versions", {}),
        ("POST", f"{D}/nope/score", {}),
        ("POST", f"{D}/nope/versions", {"json": {}}),
        ("POST", f"{D}/nope/review", {"json": {"decision": "accepted"}}),
        ("POST", f"{D}/nope/build", {"json": {"doc_ids": ["laerm"]}}),
        ("POST", f"{D}/nope/import", {"files": {"file": ("x.jsonl", _jsonl([_chat(1)]))}}),
        ("GET", f"{D}/nope/versions/v1", {}),
        ("GET", f"{D}/shared/versions/v9", {}),
        ("GET", f"{D}/nope/diff", {"params": {"old": "v1", "new": "v2"}}),
        ("POST", f"{D}/nope/versions/v1/exports", {"json": {}}),
        ("GET", f"{D}/nope/versions/v1/exports/messages/jsonl/train.jsonl", {}),
        ("GET", f"{D}/shared/samples/999999", {}),
        ("PUT", f"{D}/shared/samples/999999", {"json": {"row_version": 1, "text": "x"}}),
        ("POST", f"{D}/shared/samples/999999/review", {"json": _decision(1)}),
    ]
    for method, url, kwargs in calls:
        r = admin.request(method, url, **kwargs)
        assert r.status_code == 404, (method, url, r.text)
    # A sample is reached only through its own dataset.
    _create(admin, "other")
    sid = _samples(admin, "shared", limit=1)["items"][0]["id"]
    assert admin.get(f"{D}/other/samples/{sid}").status_code == 404
    assert admin.post(f"{D}/other/samples/{sid}/review", json=_decision(1)).status_code == 404
    assert admin.get(f"{D}/shared/samples/{sid}").status_code == 200


def _decision(version: int, decision: str = "accepted") -> dict:
    return {"decision": decision, "row_version": version}


def test_bad_input_is_422_naming_the_field(api, admin):
    def fields(r) -> list[str]:
        assert r.status_code == 422, r.text
        return [f["field"] for f in r.json()["fields"]]

    syntax = admin.post(D, content=b'{"name": "x"', headers={"content-type": "application/json"})
    assert syntax.status_code == 422 and syntax.json()["error"] == "ValidationError"
    assert fields(admin.post(D, json={"name": 5})) == ["name"]
    assert fields(admin.post(D, json={"name": "x", "kind": "odd"})) == ["kind"]
    assert fields(admin.post(D, json={"name": "x", "colour": "red"})) == ["colour"]
    sid = _samples(admin, "shared", limit=1)["items"][0]["id"]
    review = f"{D}/shared/samples/{sid}/review"
    assert fields(admin.post(review, json={"decision": "accepted"})) == ["row_version"]
    assert fields(admin.post(review, json={"decision": "maybe", "row_version": 1})) == ["decision"]
    assert fields(admin.post(review, json={"decision": "accepted", "row_version": "one"})) == [
        "row_version"
    ]
    assert fields(admin.get(f"{D}/shared/samples/first")) == ["sample_id"]
    assert fields(admin.get(f"{D}/shared/samples", params={"sort": "random"})) == ["sort"]
    assert fields(admin.get(f"{D}/shared/samples", params={"limit": 5000})) == ["limit"]
    assert fields(admin.get(f"{D}/shared/samples", params={"min_score": 2})) == ["min_score"]
    assert fields(admin.post(f"{D}/shared/versions", json={"eval_ratio": 1.5})) == ["eval_ratio"]
    assert fields(admin.get(f"{D}/shared/versions/v1x")) == ["version"]
    assert fields(admin.get(f"{D}/shared/diff", params={"old": "v1"})) == ["new"]
    assert fields(admin.post(f"{D}/shared/build", json={"template": "text"})) == ["doc_ids"]
    export = f"{D}/shared/versions/v1/exports"
    assert fields(admin.post(export, json={"format": "yaml"})) == ["format"]
    assert fields(admin.post(f"{D}/shared/import", data={"format": "text"})) == ["file"]
    invalid_edit = admin.put(
        f"{D}/shared/samples/{sid}",
        json={"row_version": 1, "messages": [{"role": "user", "content": "nur Frage"}]},
    )
    assert invalid_edit.status_code == 422 and "assistant" in invalid_edit.json()["detail"]


def test_every_route_needs_credentials(api):
    routes = declared_routes(dataset_routes.router)
    assert len(routes) == 19
    with api.client(None) as anonymous:
        for method, path in sorted(routes):
            url = concrete(path).replace("/x1/exports", "/v1/exports")
            url = url.replace("/versions/x1", "/versions/v1")
            r = anonymous.request(method, url)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"


# Roles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as the router declares it
    permissions: tuple[str, ...]
    ok: int
    call: Callable[[str], tuple[str, dict]]  # role -> (url, request keywords)
    audit: str | None = None  # the action core records, for mutations
    target: Callable[[str], str] | None = None


def _routes(admin, sample_of: dict[str, int]) -> list[Route]:
    read, create, review = ("datasets:read",), ("datasets:create",), ("datasets:review",)
    export = ("datasets:export",)

    def version_of(role: str) -> int:
        return admin.get(f"{D}/work-{role}/samples/{sample_of[role]}").json()["row_version"]

    def sample(role: str) -> str:
        return f"{D}/work-{role}/samples/{sample_of[role]}"

    def work(role: str) -> str:
        return f"work-{role}"

    download = f"{D}/shared/versions/v1/exports/messages/jsonl/train.jsonl"
    return [
        Route("GET", "/datasets", read, 200, lambda role: (D, {})),
        Route(
            "POST",
            "/datasets",
            create,
            201,
            lambda role: (D, {"json": {"name": f"new-{role}"}}),
            "datasets.create",
            lambda role: f"new-{role}",
        ),
        Route("GET", "/datasets/{ref}", read, 200, lambda role: (f"{D}/{work(role)}", {})),
        Route(
            "DELETE",
            "/datasets/{ref}",
            create,
            204,
            lambda role: (f"{D}/del-{role}", {}),
            "datasets.delete",
            lambda role: f"del-{role}",
        ),
        Route(
            "POST",
            "/datasets/{ref}/import",
            create,
            200,
            lambda role: (
                f"{D}/{work(role)}/import",
                {"files": {"file": (f"{role}.jsonl", _jsonl([_chat(1, role)]))}},
            ),
            "datasets.import",
            work,
        ),
        Route(
            "POST",
            "/datasets/{ref}/build",
            create + ("corpus:search",),
            200,
            lambda role: (f"{D}/{work(role)}/build", {"json": {"doc_ids": ["laerm"]}}),
            "datasets.build",
            work,
        ),
        Route(
            "POST",
            "/datasets/{ref}/score",
            review,
            202,
            lambda role: (f"{D}/{work(role)}/score", {}),
            "datasets.score",
            work,
        ),
        Route(
            "GET",
            "/datasets/{ref}/samples",
            read,
            200,
            lambda role: (f"{D}/{work(role)}/samples", {}),
        ),
        Route(
            "GET",
            "/datasets/{ref}/samples/{sample_id}",
            read,
            200,
            lambda role: (sample(role), {}),
        ),
        Route(
            "POST",
            "/datasets/{ref}/samples/{sample_id}/review",
            review,
            200,
            lambda role: (f"{sample(role)}/review", {"json": _decision(version_of(role))}),
            "datasets.review",
            lambda role: f"sample:{sample_of[role]}",
        ),
        Route(
            "PUT",
            "/datasets/{ref}/samples/{sample_id}",
            review,
            200,
            lambda role: (
                sample(role),
                {"json": {"row_version": version_of(role), "messages": _chat(2, role)["messages"]}},
            ),
            "datasets.edit",
            lambda role: f"sample:{sample_of[role]}",
        ),
        Route(
            "POST",
            "/datasets/{ref}/review",
            review,
            200,
            lambda role: (f"{D}/{work(role)}/review", {"json": {"decision": "accepted"}}),
            "datasets.review_bulk",
            work,
        ),
        Route(
            "GET",
            "/datasets/{ref}/review-stats",
            read,
            200,
            lambda role: (f"{D}/{work(role)}/review-stats", {}),
        ),
        Route(
            "GET",
            "/datasets/{ref}/versions",
            read,
            200,
            lambda role: (f"{D}/shared/versions", {}),
        ),
        Route(
            "POST",
            "/datasets/{ref}/versions",
            create,
            201,
            lambda role: (f"{D}/{work(role)}/versions", {"json": {}}),
            "datasets.freeze",
            work,
        ),
        Route(
            "GET",
            "/datasets/{ref}/versions/{version}",
            read,
            200,
            lambda role: (f"{D}/shared/versions/v1", {}),
        ),
        Route(
            "GET",
            "/datasets/{ref}/diff",
            read,
            200,
            lambda role: (f"{D}/shared/diff", {"params": {"old": "v1", "new": "latest"}}),
        ),
        Route(
            "POST",
            "/datasets/{ref}/versions/{version}/exports",
            export,
            201,
            lambda role: (f"{D}/shared/versions/v2/exports", {"json": {"format": "text"}}),
            "datasets.export",
            lambda role: "shared@v2",
        ),
        Route(
            "GET",
            "/datasets/{ref}/versions/{version}/exports/{fmt}/{file_type}/{name}",
            export,
            200,
            lambda role: (download, {}),
        ),
    ]


def test_every_route_for_every_role_as_the_permission_map_says(api, admin):
    # What each role's calls act on: a dataset with one sample, and one to delete.
    sample_of: dict[str, int] = {}
    for role in ROLES:
        _create(admin, f"del-{role}")
        _create(admin, f"work-{role}")
        rep = _import(admin, f"work-{role}", "w.jsonl", _jsonl([_chat(0, f"w-{role}")]))
        sample_of[role] = rep["sample_ids"][0]
    routes = _routes(admin, sample_of)
    assert {(r.method, r.path) for r in routes} == declared_routes(dataset_routes.router)
    for role in ROLES:
        with api.client(role) as client:
            for route in routes:
                url, kwargs = route.call(role)
                allowed = all(has_permission(role, p) for p in route.permissions)
                r = client.request(route.method, url, **kwargs)
                want = route.ok if allowed else 403
                assert r.status_code == want, (role, route.method, route.path, r.text)
                if not allowed:
                    assert r.json()["error"] == "PermissionDenied"
                if route.audit is None:
                    continue
                rows = audit_rows(api, route.audit, role)
                assert rows, (role, route.audit)
                assert rows[-1]["outcome"] == ("ok" if allowed else "denied"), (role, rows)
                assert rows[-1]["target"] == route.target(role)
    # The denied calls changed nothing; the allowed ones did what they say.
    for role in ROLES:
        work = admin.get(f"{D}/work-{role}").json()
        mutated = has_permission(role, "datasets:create")
        assert work["counts"]["total"] == (3 if mutated else 1), (role, work["counts"])
        assert work["versions"] == (1 if mutated else 0)
        scored = work["latest_scoring_run"] is not None
        assert scored == has_permission(role, "datasets:review")
        got = admin.get(f"{D}/work-{role}/samples/{sample_of[role]}").json()
        assert (got["edited_by"] == role) == has_permission(role, "datasets:review")
        assert (admin.get(f"{D}/del-{role}").status_code == 404) == mutated
        assert (admin.get(f"{D}/new-{role}").status_code == 200) == mutated


def test_export_download_is_a_stream_of_the_file(api, admin):
    """FileResponse sends the file as it is on disk, in chunks, with its length."""
    url = f"{D}/shared/versions/v1/exports/messages/jsonl/train.jsonl"
    path = Path(api.settings.data_path) / "exports/shared-v1/messages-jsonl/train.jsonl"
    with admin.stream("GET", url) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        assert int(r.headers["content-length"]) == path.stat().st_size
        body = b"".join(r.iter_bytes())
    assert body == path.read_bytes()

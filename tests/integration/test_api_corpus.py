"""/api/v1/corpus against the real `clara api` server, on SQLite and on PostgreSQL: upload and
ingest (an upload that fails part-way leaves nothing of that file), search in every mode
with core's per-mode breakdown, documents, related documents, saved searches; every route
for every role exactly as core/permissions.py allows it, audited; nothing without
credentials; bad input as 422 naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from api.routes import corpus as corpus_routes
from core.permissions import ROLES, has_permission
from tests.api_storage import (
    ENGINES,
    PREFIX,
    audit_rows,
    concrete,
    declared_routes,
    module_api_server,
)
from tests.cli_run import clara

pytestmark = pytest.mark.slow

DOCS = {
    "hund.md": (
        "---\ntitle: Hundesteuersatzung\ndomain: steuern\ndocument_type: satzung\n"
        "date: 2021-03-01\nbezirk: nord\n---\n# Hundesteuersatzung\n\n"
        "Die Hundesteuer beträgt 120 Euro im Jahr für den ersten Hund. Befreiungen regelt "
        "die Gebührenordnung; für Bäume auf dem Grundstück gilt die Baumschutzsatzung.\n"
    ),
    "baum.md": (
        "---\ntitle: Baumschutzsatzung\ndomain: umwelt\ndocument_type: satzung\n"
        "date: 2019-06-15\nbezirk: sued\n---\n# Baumschutzsatzung\n\n"
        "Wer einen Baum fällen will, braucht eine Genehmigung. Hunde dürfen Bäume nicht "
        "beschädigen; Halter zahlen Hundesteuer nach der Hundesteuersatzung.\n"
    ),
    "gebuehren.md": (
        "---\ntitle: Gebührenordnung\ndomain: steuern\ndocument_type: ordnung\n"
        "date: 2020-01-01\n---\n# Gebührenordnung\n\n"
        "Die Gebührenordnung legt Verwaltungsgebühren fest, etwa für Genehmigungen.\n"
    ),
}


def _files(docs: dict[str, str | bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [
        ("files", (name, body.encode() if isinstance(body, str) else body))
        for name, body in docs.items()
    ]


@pytest.fixture(scope="module", params=ENGINES)
def api(request, tmp_path_factory):
    with module_api_server(request.param, tmp_path_factory, "corpus") as server:
        with server.client("admin") as admin:
            r = admin.post(f"{PREFIX}/corpus/documents", files=_files(DOCS))
            assert r.status_code == 200, r.text
            assert r.json()["ok"], r.json()
        yield server


@pytest.fixture(scope="module")
def admin(api):
    with api.client("admin") as c:
        yield c


def _search(client, **body) -> dict:
    r = client.post(f"{PREFIX}/corpus/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _fused(hit: dict, weights: dict[str, float]) -> float:
    total = sum(weights[m] for m in hit["scores"])
    return sum(weights[m] / total * s for m, s in hit["scores"].items())


# Ingest -----------------------------------------------------------------------------------


def test_upload_answers_the_per_file_report_and_queues_embedding(api, admin):
    form = {"document_type": "merkblatt", "domain": "verkehr", "link_key": "id"}
    docs = {
        "upload-a.md": "# Parkplätze\n\nStellplätze am Rathaus.",
        "upload-b.txt": "Winterdienst.",
    }
    r = admin.post(
        f"{PREFIX}/corpus/documents",
        files=_files(docs),
        data=form,
    )
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["ok"] is True and rep["summary"]["added"] == 2
    assert [(f["path"], f["status"]) for f in rep["files"]] == [
        ("upload-a.md", "ok"),
        ("upload-b.txt", "ok"),
    ]
    assert rep["files"][0]["documents"][0] == {
        "doc_id": "upload-a",
        "action": "added",
        "revision": 1,
        "line": None,
        "problem": "",
    }
    # Embeddings are a job for the worker, as `clara corpus ingest` queues it.
    assert isinstance(rep["summary"]["embed_job_id"], int)
    assert rep["summary"]["pending_embeddings"] >= 2
    doc = admin.get(f"{PREFIX}/corpus/documents/upload-a").json()
    assert doc["document_type"] == "merkblatt" and doc["domain"] == "verkehr"
    rows = audit_rows(api, "corpus.ingest_upload", "admin")
    assert rows[-1]["outcome"] == "ok" and rows[-1]["target"] == "upload-a.md, upload-b.txt"
    assert rows[-1]["detail"]["added"] == 2

    # The same files again: nothing changes (the type and domain are part of a revision).
    again = admin.post(
        f"{PREFIX}/corpus/documents", files=_files(docs), data={**form, "embed": "later"}
    )
    assert again.json()["summary"] == {
        **again.json()["summary"],
        "added": 0,
        "unchanged": 2,
        "embed_job_id": None,
    }


def test_upload_failing_part_way_leaves_nothing_of_that_file(api, admin):
    """A CSV whose row 301 breaks the parser after 300 good rows (more than one write batch):
    the file fails as a whole and none of its rows stay; the other file of the upload is
    ingested, and the audit row says "partial"."""
    head = "id,title,text\n" + "".join(
        f"midway-{i},Zeile {i},Text der Zeile {i} über Müllabfuhr\n" for i in range(300)
    )
    big = head + "midway-big,Zu groß," + "x" * 5000 + "\n"
    bad_bytes = head.encode() + "midway-latin,Café,Straße\n".encode("latin-1")
    r = admin.post(
        f"{PREFIX}/corpus/documents",
        files=_files({"keep.md": "# Bleibt\n\nDieses Dokument bleibt.", "big.csv": big}),
        data={"max_doc_mb": "0.004"},
    )
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["ok"] is False
    keep, bad = rep["files"]
    assert keep["status"] == "ok" and keep["counts"]["added"] == 1
    assert bad["status"] == "failed" and bad["counts"]["added"] == 0 and not bad["documents"]
    assert "line 302" in bad["problems"][0] and "larger than" in bad["problems"][0]
    r = admin.post(f"{PREFIX}/corpus/documents", files=_files({"latin.csv": bad_bytes}))
    rep = r.json()
    assert rep["ok"] is False and rep["files"][0]["status"] == "failed"
    assert "UTF-8" in rep["files"][0]["problems"][0]

    listed = admin.get(f"{PREFIX}/corpus/documents", params={"title": "Zeile", "limit": 5})
    assert listed.json()["total"] == 0
    for doc_id in ("midway-0", "midway-299", "midway-big", "midway-latin"):
        assert admin.get(f"{PREFIX}/corpus/documents/{doc_id}").status_code == 404
    assert admin.get(f"{PREFIX}/corpus/documents/keep").status_code == 200
    hits = _search(admin, query="Müllabfuhr", mode="keyword")["results"]
    assert not hits
    outcomes = [(a["target"], a["outcome"]) for a in audit_rows(api, "corpus.ingest_upload")]
    assert ("keep.md, big.csv", "partial") in outcomes and ("latin.csv", "failed") in outcomes


# Search -----------------------------------------------------------------------------------


def test_search_in_every_mode_with_the_per_mode_breakdown(api, admin):
    kw = _search(admin, query="Hundesteuersatzung", mode="keyword", k=5)
    assert kw["modes"] == ["keyword"] and kw["results"][0]["doc_id"] == "hund"
    for hit in kw["results"]:
        assert set(hit["scores"]) == set(hit["raw_scores"]) == {"keyword"}
        assert hit["raw_scores"]["keyword"] > 0
    assert kw["results"][0]["scores"]["keyword"] == 1.0
    assert "Hundesteuer" in kw["results"][0]["snippet"]

    one = _search(admin, query="Hundesteuer", mode="keyword", k=1)
    assert len(one["results"]) == 1
    filtered = _search(admin, query="Hundesteuer", mode="keyword", filters={"domain": ["umwelt"]})[
        "results"
    ]
    assert [h["doc_id"] for h in filtered] == ["baum"]
    meta = _search(
        admin, query="Hundesteuer", mode="keyword", filters={"metadata": {"bezirk": "nord"}}
    )["results"]
    assert [h["doc_id"] for h in meta] == ["hund"]
    dated = _search(
        admin, query="Genehmigung", mode="keyword", filters={"date_from": "2020-01-01"}
    )["results"]
    assert {h["doc_id"] for h in dated} == {"gebuehren"}

    graph = _search(admin, mode="graph", seed_ids=["hund"], hops=1)
    assert graph["modes"] == ["graph"]
    by_id = {h["doc_id"]: h for h in graph["results"]}
    assert "baum" in by_id and set(by_id["baum"]["scores"]) == {"graph"}
    assert "hund" in by_id["baum"]["related_via"]

    weights = {"keyword": 0.5, "graph": 0.5, "vector": 0.0}
    hybrid = _search(admin, query="Hundesteuer", mode="hybrid", weights=weights)
    assert hybrid["modes"] == ["keyword", "graph"]
    for hit in hybrid["results"]:
        assert set(hit["scores"]) == {"keyword", "graph"}
        assert hit["score"] == pytest.approx(_fused(hit, weights), abs=1e-3)
    rrf = _search(admin, query="Hundesteuer", mode="hybrid", weights=weights, fusion="rrf")
    assert rrf["results"] and rrf["results"][0]["score"] < 0.1  # reciprocal ranks

    # Vectors are a queued job nobody has run: vector search says so instead of failing.
    vec = _search(admin, query="Hund", mode="vector", vector_wait_s=5)
    assert vec["results"] == [] and "vector" in vec["skipped"]
    assert vec["embeddings"]["done"] == 0 and vec["embeddings"]["total"] > 0


def test_vector_and_hybrid_search_once_embedded(api, admin):
    """After `clara corpus embed` (what the worker's job does), vector hits carry cosine
    similarities and hybrid fuses all three modes. The vector store is engine-independent:
    once, on SQLite."""
    if api.kind != "sqlite":
        pytest.skip("the vector store does not depend on the database engine")
    done = clara(api.settings, "corpus", "embed", "--json", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["pending"] == 0
    vec = _search(admin, query="Wie viel kostet ein Hund?", mode="vector", vector_wait_s=240)
    assert vec["modes"] == ["vector"] and not vec["skipped"], vec
    for hit in vec["results"]:
        assert set(hit["scores"]) == {"vector"} and -1 <= hit["raw_scores"]["vector"] <= 1
    weights = {"keyword": 0.4, "vector": 0.4, "graph": 0.2}
    hybrid = _search(admin, query="Hundesteuer", weights=weights, vector_wait_s=240)
    assert hybrid["modes"] == ["keyword", "vector", "graph"]
    for hit in hybrid["results"]:
        assert set(hit["scores"]) == {"keyword", "vector", "graph"}
        assert hit["score"] == pytest.approx(_fused(hit, weights), abs=1e-3)


# Documents --------------------------------------------------------------------------------


def test_documents_paged_filtered_shown_and_related(api, admin):
    first = admin.get(f"{PREFIX}/corpus/documents", params={"limit": 2}).json()
    second = admin.get(f"{PREFIX}/corpus/documents", params={"limit": 2, "offset": 2}).json()
    assert first["total"] == second["total"] >= 3
    assert len(first["items"]) == 2 and first["limit"] == 2
    assert not {d["doc_id"] for d in first["items"]} & {d["doc_id"] for d in second["items"]}
    assert "text" not in first["items"][0]
    steuern = admin.get(
        f"{PREFIX}/corpus/documents",
        params={"domain": "steuern", "document_type": "satzung", "order_by": "title"},
    ).json()
    assert [d["doc_id"] for d in steuern["items"]] == ["hund"] and steuern["total"] == 1
    meta = admin.get(f"{PREFIX}/corpus/documents", params={"meta": "bezirk=sued"}).json()
    assert [d["doc_id"] for d in meta["items"]] == ["baum"]
    assert meta["items"][0]["date"] == "2019-06-15" and meta["items"][0]["chunks"] >= 1

    doc = admin.get(f"{PREFIX}/corpus/documents/hund").json()
    assert doc["title"] == "Hundesteuersatzung" and "120 Euro" in doc["text"]
    assert doc["metadata"] == {"bezirk": "nord"} and doc["date"] == "2021-03-01"
    assert [r["revision"] for r in doc["revisions"]] == [1]

    rel = admin.get(f"{PREFIX}/corpus/documents/hund/related").json()
    assert rel["center"] == "hund"
    assert {n["doc_id"] for n in rel["nodes"]} >= {"hund", "baum"}
    assert any(e["src"] == "hund" and e["dst"] == "baum" for e in rel["edges"])

    for path in ("documents/nope", "documents/nope/related"):
        r = admin.get(f"{PREFIX}/corpus/{path}")
        assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert admin.delete(f"{PREFIX}/corpus/documents/nope").status_code == 404
    stats = admin.get(f"{PREFIX}/corpus/stats").json()
    assert stats["documents"] == first["total"] and stats["edges"] >= 1
    assert {"steuern", "umwelt"} <= set(admin.get(f"{PREFIX}/corpus/facets").json()["domain"])


def test_saved_searches_save_run_list_delete(api, admin):
    body = {"query": "Hundesteuer", "mode": "keyword", "k": 3, "filters": {"domain": ["steuern"]}}
    saved = admin.put(f"{PREFIX}/corpus/searches/hunde/steuer", json=body)
    assert saved.status_code == 200, saved.text
    assert saved.json()["request"]["filters"]["domain"] == ["steuern"]
    assert saved.json()["created_by"] == "admin"
    got = admin.get(f"{PREFIX}/corpus/searches/hunde/steuer").json()
    assert got["request"]["k"] == 3 and got["request"]["query"] == "Hundesteuer"
    run = admin.get(f"{PREFIX}/corpus/searches/hunde/steuer/results", params={"k": 1}).json()
    assert [h["doc_id"] for h in run["results"]] == ["hund"]
    listed = admin.get(f"{PREFIX}/corpus/searches").json()
    assert "hunde/steuer" in [s["name"] for s in listed["items"]]
    assert admin.delete(f"{PREFIX}/corpus/searches/hunde/steuer").status_code == 204
    gone = admin.get(f"{PREFIX}/corpus/searches/hunde/steuer")
    assert gone.status_code == 404 and "hunde/steuer" in gone.json()["detail"]
    assert [a["outcome"] for a in audit_rows(api, "corpus.save_search", "admin")][-1] == "ok"
    assert audit_rows(api, "corpus.delete_search", "admin")[-1]["target"] == "hunde/steuer"


# Bad input and credentials ----------------------------------------------------------------


def test_bad_input_is_422_naming_the_field(api, admin):
    def problem(r) -> list[str]:
        assert r.status_code == 422, r.text
        return [f["field"] for f in r.json()["fields"]]

    url = f"{PREFIX}/corpus/search"
    syntax = admin.post(
        url, content=b'{"query": "x", ', headers={"content-type": "application/json"}
    )
    assert syntax.status_code == 422 and syntax.json()["fields"]
    assert problem(admin.post(url, json={"query": "x", "k": "many"})) == ["k"]
    assert problem(admin.post(url, json={"query": "x", "mode": "fuzzy"})) == ["mode"]
    assert problem(admin.post(url, json={"query": "x", "weights": {"bm25": 1}})) == ["weights"]
    assert problem(admin.post(url, json={"query": "x", "filters": {"domian": "x"}})) == [
        "filters.domian"
    ]
    assert problem(admin.post(url, json={"query": " "})) == ["query"]
    assert problem(admin.put(f"{PREFIX}/corpus/searches/x", json={"mode": "keyword"})) == ["query"]
    docs = f"{PREFIX}/corpus/documents"
    assert problem(admin.get(docs, params={"limit": 100000})) == ["limit"]
    assert problem(admin.get(docs, params={"meta": "no-equals-sign"})) == ["meta"]
    assert problem(admin.get(docs, params={"date_from": "yesterday"})) == ["date_from"]
    assert problem(admin.post(docs, data={"domain": "x"})) == ["files"]
    files = _files({"x.md": "# X\n\ny"})
    assert problem(admin.post(docs, files=files, data={"link_key": "guess"})) == ["link_key"]
    assert problem(admin.post(docs, files=files, data={"chunk_overlap": "200"})) == [
        "chunk_overlap"
    ]


def test_every_route_needs_credentials(api):
    routes = declared_routes(corpus_routes.router)
    assert len(routes) == 13
    with api.client(None) as anonymous:
        for method, path in sorted(routes):
            r = anonymous.request(method, concrete(path))
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            bad = anonymous.request(
                method, concrete(path), headers={"Authorization": "Bearer not-a-token"}
            )
            assert bad.status_code == 401, (method, path)


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


def _routes() -> list[Route]:
    d = f"{PREFIX}/corpus"
    search = ("corpus:search",)
    ingest = ("corpus:ingest",)
    return [
        Route(
            "POST",
            "/corpus/documents",
            ingest,
            200,
            lambda role: (
                f"{d}/documents",
                {"files": _files({f"up-{role}.md": f"# Von {role}\n\nHochgeladen."})},
            ),
            "corpus.ingest_upload",
            lambda role: f"up-{role}.md",
        ),
        Route(
            "POST",
            "/corpus/search",
            search,
            200,
            lambda role: (f"{d}/search", {"json": {"query": "Hund", "mode": "keyword"}}),
        ),
        Route("GET", "/corpus/documents", search, 200, lambda role: (f"{d}/documents", {})),
        Route(
            "GET",
            "/corpus/documents/{doc_id:path}",
            search,
            200,
            lambda role: (f"{d}/documents/hund", {}),
        ),
        Route(
            "GET",
            "/corpus/documents/{doc_id:path}/related",
            search,
            200,
            lambda role: (f"{d}/documents/hund/related", {}),
        ),
        Route(
            "DELETE",
            "/corpus/documents/{doc_id:path}",
            ingest,
            204,
            lambda role: (f"{d}/documents/del-{role}", {}),
            "corpus.delete",
            lambda role: f"del-{role}",
        ),
        Route("GET", "/corpus/stats", search, 200, lambda role: (f"{d}/stats", {})),
        Route("GET", "/corpus/facets", search, 200, lambda role: (f"{d}/facets", {})),
        Route("GET", "/corpus/searches", search, 200, lambda role: (f"{d}/searches", {})),
        Route(
            "GET",
            "/corpus/searches/{name:path}",
            search,
            200,
            lambda role: (f"{d}/searches/keep-{role}", {}),
        ),
        Route(
            "GET",
            "/corpus/searches/{name:path}/results",
            search,
            200,
            lambda role: (f"{d}/searches/keep-{role}/results", {}),
        ),
        Route(
            "PUT",
            "/corpus/searches/{name:path}",
            search,
            200,
            lambda role: (f"{d}/searches/new-{role}", {"json": {"query": "Baum"}}),
            "corpus.save_search",
            lambda role: f"new-{role}",
        ),
        Route(
            "DELETE",
            "/corpus/searches/{name:path}",
            search,
            204,
            lambda role: (f"{d}/searches/keep-{role}", {}),
            "corpus.delete_search",
            lambda role: f"keep-{role}",
        ),
    ]


def test_every_route_for_every_role_as_the_permission_map_says(api, admin):
    routes = _routes()
    assert {(r.method, r.path) for r in routes} == declared_routes(corpus_routes.router)
    # What each role's calls act on: its own document to delete, its own saved search.
    r = admin.post(
        f"{PREFIX}/corpus/documents",
        files=_files({f"del-{role}.md": f"# Weg {role}\n\nWird gelöscht." for role in ROLES}),
        data={"embed": "later"},
    )
    assert r.json()["ok"], r.text
    for role in ROLES:
        saved = admin.put(f"{PREFIX}/corpus/searches/keep-{role}", json={"query": "Hund"})
        assert saved.status_code == 200, saved.text

    for role in ROLES:
        with api.client(role) as client:
            for route in routes:
                url, kwargs = route.call(role)
                allowed = all(has_permission(role, p) for p in route.permissions)
                r = client.request(route.method, url, **kwargs)
                want = route.ok if allowed else 403
                assert r.status_code == want, (role, route.method, route.path, r.text)
                if not allowed:
                    assert route.permissions[0] in r.json()["detail"]
                if route.audit is None:
                    continue
                rows = audit_rows(api, route.audit, role)
                assert rows, (role, route.audit)
                assert rows[-1]["outcome"] == ("ok" if allowed else "denied"), (role, rows)
                assert rows[-1]["target"] == route.target(role)
    # The denied calls changed nothing: their documents and searches are still there.
    for role in ROLES:
        deleted = admin.get(f"{PREFIX}/corpus/documents/del-{role}").status_code == 404
        assert deleted == has_permission(role, "corpus:ingest"), role
        kept = admin.get(f"{PREFIX}/corpus/searches/keep-{role}").status_code == 200
        assert kept == (not has_permission(role, "corpus:search")), role

"""/api/v1/adapters against the real `clara api` server, on SQLite and on PostgreSQL: an
adapter trained by a real job (submitted through the API, run by `clara worker --once`),
listed, shown with its lineage (dataset version → job → adapter), merged into its base
model and deleted, by every role as core/permissions.py says, with the audit rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from core.permissions import SYSTEM, has_permission
from tests.api_server import ROLES, running_api_server
from tests.api_training import (
    YAML,
    audit_mark,
    audit_since,
    frozen_version,
    module_storage,
    run_worker_once,
    spec_yaml,
)

pytestmark = pytest.mark.slow

ADAPTERS = "/api/v1/adapters"


class Env:
    def __init__(self, api, settings, engine, version, job_id: int) -> None:
        self.api, self.settings, self.engine = api, settings, engine
        self.version, self.job_id = version, job_id


def _register_copy(engine, settings, source: Path, name: str) -> None:
    """Another registry entry with the trained adapter's files (something to delete)."""
    from core.training.adapters import get_adapter, register_adapter

    info = get_adapter(engine, SYSTEM, "hund")
    staged = settings.data_path / f"staged-{name}"
    shutil.copytree(source, staged)
    register_adapter(
        engine,
        SYSTEM,
        name=name,
        files_dir=staged,
        base_model=info.base_model,
        base_model_fingerprint=info.base_model_fingerprint,
        method=info.method,
        dataset_version_id=info.dataset_version_id,
    )


@pytest.fixture(
    # The adapter routes are thin shells over the registry, which test_training_jobs runs on
    # both engines; training an adapter for this module costs ~20 s per engine.
    scope="module",
    params=["sqlite"],
)
def env(request, tmp_path_factory, shared_demo_model):
    from core.db import get_engine

    with (
        module_storage(request.param, tmp_path_factory, shared_demo_model) as settings,
        running_api_server(settings) as api,
    ):
        engine = get_engine(settings)
        version = frozen_version(engine)
        r = api.client("trainer").post("/api/v1/jobs", content=spec_yaml("hund"), headers=YAML)
        assert r.status_code == 201, r.text
        run_worker_once(settings)
        job = api.client("admin").get(f"/api/v1/jobs/{r.json()['id']}").json()
        assert job["job"]["state"] == "succeeded", job["job"]["error"]
        source = settings.data_path / "adapters" / "hund"
        for role in ROLES:
            _register_copy(engine, settings, source, f"copy-{role}")
        yield Env(api, settings, engine, version, job["job"]["id"])


def _expect(role: str, permission: str) -> int:
    return 200 if has_permission(role, permission) else 403


def _one_audit(env: Env, mark: int, action: str, actor: str, outcome: str):
    rows = [r for r in audit_since(env.engine, mark) if r.action == action]
    assert [(r.actor, r.outcome) for r in rows] == [(actor, outcome)], rows
    return rows[0]


def test_every_route_needs_credentials(env: Env) -> None:
    routes = [
        ("GET", ADAPTERS),
        ("GET", f"{ADAPTERS}/hund"),
        ("POST", f"{ADAPTERS}/hund/merge"),
        ("DELETE", f"{ADAPTERS}/hund"),
    ]
    forged = httpx.Client(
        base_url=env.api.url, headers={"Authorization": "Bearer clara_made-up"}, timeout=30
    )
    mark = audit_mark(env.engine)
    for method, path in routes:
        for client in (env.api.client(None), forged):
            r = client.request(method, path)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    assert audit_since(env.engine, mark) == []  # nobody acted: nothing to audit
    assert env.api.client("admin").get(f"{ADAPTERS}/hund").status_code == 200
    assert not (env.settings.data_path / "merged").exists()


@pytest.mark.parametrize("role", ROLES)
def test_each_role_may_do_what_its_permissions_allow(env: Env, role: str) -> None:
    client = env.api.client(role)
    read = _expect(role, "adapters:read")
    r = client.get(ADAPTERS)
    assert r.status_code == read, r.text
    if read == 200:
        listed = {a["name"]: a for a in r.json()["adapters"]}
        assert "hund" in listed and listed["hund"]["job_id"] == env.job_id
    else:
        assert "adapters:read" in r.json()["detail"]

    # Show with lineage, by name and by id.
    r = client.get(f"{ADAPTERS}/hund")
    assert r.status_code == read, r.text
    if read == 200:
        shown = r.json()
        adapter, chain = shown["adapter"], shown["lineage"]["chain"]
        assert adapter["name"] == "hund" and adapter["job_id"] == env.job_id
        assert adapter["dataset_version_id"] == env.version.id
        assert adapter["metrics"]["eval_perplexity_after"] is not None
        assert [step["adapter"]["name"] for step in chain] == ["hund"]
        assert chain[0]["job"]["id"] == env.job_id and chain[0]["job"]["owner"] == "trainer"
        assert chain[0]["job"]["state"] == "succeeded"
        version = chain[0]["dataset_version"]
        assert version["id"] == env.version.id
        # What the dataset version is called is for those who may read datasets.
        if has_permission(role, "datasets:read"):
            assert version["ref"] == "faq@v1" and version["counts"]["train"] > 0
        else:
            assert "ref" not in version
        assert client.get(f"{ADAPTERS}/{adapter['id']}").json()["adapter"] == adapter

    # Merge into the base model.
    activate = _expect(role, "adapters:activate")
    mark = audit_mark(env.engine)
    r = client.post(f"{ADAPTERS}/hund/merge")
    assert r.status_code == activate, r.text
    if activate == 200:
        out = Path(r.json()["path"])
        assert out == env.settings.data_path / "merged" / "hund" and r.json()["adapter"] == "hund"
        assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
        made = json.loads((out / "clara-merge.json").read_text())
        assert made["adapter"] == "hund" and made["job_id"] == env.job_id
        row = _one_audit(env, mark, "adapters.merge", role, "ok")
        assert row.target == "hund" and row.detail["out_dir"] == str(out)
    else:
        assert "adapters:activate" in r.json()["detail"]
        _one_audit(env, mark, "adapters.merge", role, "denied")

    # Delete (each role its own copy).
    name = f"copy-{role}"
    path = env.settings.data_path / "adapters" / name
    mark = audit_mark(env.engine)
    r = client.delete(f"{ADAPTERS}/{name}")
    assert r.status_code == activate, r.text
    admin = env.api.client("admin")
    if activate == 200:
        assert r.json()["name"] == name
        row = _one_audit(env, mark, "adapters.delete", role, "ok")
        assert row.target == name
        assert admin.get(f"{ADAPTERS}/{name}").status_code == 404 and not path.exists()
    else:
        _one_audit(env, mark, "adapters.delete", role, "denied")
        assert admin.get(f"{ADAPTERS}/{name}").status_code == 200 and path.is_dir()


def test_unknown_adapters_are_404(env: Env) -> None:
    client = env.api.client("admin")
    assert client.get(f"{ADAPTERS}/ghost").status_code == 404
    r = client.post(f"{ADAPTERS}/ghost/merge")
    assert r.status_code == 404 and "no adapter 'ghost'" in r.json()["detail"]
    mark = audit_mark(env.engine)
    assert client.delete(f"{ADAPTERS}/ghost").status_code == 404
    _one_audit(env, mark, "adapters.delete", "admin", "failed")
    # The job that trained it names it.
    job = client.get(f"/api/v1/jobs/{env.job_id}").json()
    assert job["adapter"]["name"] == "hund"


def test_learning_lines_over_the_api(env: Env) -> None:
    """/api/v1/learning: a line of two adapters, activation and rollback with the history,
    a policy refused with the field and the closest key, a cycle with nothing to train on
    refused with the reason; the OpenAI model list offers line:NAME."""
    source = env.settings.data_path / "adapters" / "hund"
    for name in ("line-a", "line-b"):
        _register_copy(env.engine, env.settings, source, name)
    lines = "/api/v1/learning/lines"
    trainer, user = env.api.client("trainer"), env.api.client("user")
    r = user.post(lines, json={"name": "faq", "adapter": "line-a"})
    assert r.status_code == 403 and "adapters:activate" in r.json()["detail"]
    r = trainer.post(lines, json={"name": "faq", "adapter": "line-a", "description": "FAQ"})
    assert r.status_code == 201 and r.json()["active_adapter"] == "line-a"
    assert trainer.post(lines, json={"name": "faq", "adapter": "line-a"}).status_code == 409
    r = trainer.post(f"{lines}/faq/activate", json={"adapter": "line-b", "reason": "better"})
    assert r.status_code == 200 and r.json()["active_adapter"] == "line-b"
    r = trainer.post(f"{lines}/faq/rollback", json={"adapter": "line-a"})
    assert r.status_code == 200 and r.json()["active_adapter"] == "line-a"
    r = trainer.post(f"{lines}/faq/rollback", json={"adapter": "hund"})
    assert r.status_code == 422 and "never active in line 'faq'" in r.json()["detail"]
    shown = user.get(f"{lines}/faq").json()
    assert shown["served_as"] == "line:faq" and shown["policy"] is None
    assert [h["action"] for h in shown["line"]["history"]] == ["rollback", "activate", "create"]

    r = trainer.put(f"{lines}/faq/policy", json={"regression": "faq@v1", "min_new_sample": 3})
    assert r.status_code == 422 and "did you mean 'min_new_samples'" in r.json()["detail"]
    r = trainer.put(f"{lines}/faq/policy", json={"regression": "faq@v1", "min_new_samples": 3})
    assert r.status_code == 200 and r.json()["min_new_samples"] == 3
    assert user.get(f"{lines}/faq").json()["new_samples"] == 0
    # Nothing accepted to train on: the cycle does not start and says why.
    r = trainer.post(f"{lines}/faq/cycles")
    assert r.status_code == 422 and "has nothing to train on" in r.json()["detail"]
    assert user.get(f"{lines}/faq/cycles").json()["cycles"] == []

    models = {m["id"] for m in env.api.client("user").get("/v1/models").json()["data"]}
    assert {"base", "hund", "line-a", "line:faq"} <= models
    assert trainer.delete(f"{lines}/faq").status_code == 204
    assert user.get(f"{lines}/faq").status_code == 404

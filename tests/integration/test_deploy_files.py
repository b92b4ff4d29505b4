"""The deployment files in deploy/, checked as far as this machine allows: the compose file
against the Compose specification's schema, the Kubernetes manifests (rendered by kustomize)
against Kubernetes' own schemas, strictly; every setting they set is one the workbench
reads; every command they run is a real command; their health probes answer on real
servers. No Docker engine or cluster runs here: building the image and starting the stack
are not tested (deploy/README.md says so)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.api_server import free_port, running_api_server
from tests.conftest import ROOT
from tests.waiting import wait_until_http

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _k8s_docs() -> list[dict]:
    """The manifests kustomization.yaml lists, as kustomize renders them where kubectl is."""
    if shutil.which("kubectl"):
        out = subprocess.run(
            ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return [d for name in listed for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _containers(docs: list[dict]) -> list[dict]:
    return [
        c
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def _settings_env_names() -> set[str]:
    from core.config import Settings

    return {f"CLARA_{name.upper()}" for name in Settings.model_fields}


def test_compose_file_follows_the_compose_specification():
    schema_file = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(_compose(), schema)
    # The check can fail: a misspelt key is refused.
    broken = _compose()
    broken["services"]["worker"]["commands"] = broken["services"]["worker"].pop("command")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_kubernetes_manifests_follow_the_kubernetes_schemas_strictly():
    docs = _k8s_docs()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 5 and "Secret" in kinds and "Job" in kinds
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    broken = next(d for d in docs if d["kind"] == "Deployment")
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_every_setting_they_set_is_read_by_the_workbench():
    known = _settings_env_names()
    compose = _compose()
    set_in_compose = {
        name
        for service in compose["services"].values()
        for name in (service.get("environment") or {})
        if name.startswith("CLARA_")
    }
    docs = _k8s_docs()
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    set_in_k8s = set(config) | {
        e["name"] for c in _containers(docs) for e in c.get("env", []) if e["name"]
    }
    assert set_in_compose - known == set()
    assert {n for n in set_in_k8s if n.startswith("CLARA_")} - known == set()
    # Every secret key a container reads exists in the Secret.
    secret = next(d for d in docs if d["kind"] == "Secret")
    keys = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for c in _containers(docs)
        for e in c.get("env", [])
        if "valueFrom" in e
    }
    assert keys <= set(secret["stringData"])


def _commands() -> set[tuple[str, ...]]:
    compose = [s["command"] for s in _compose()["services"].values() if "command" in s]
    k8s = [c["command"] for c in _containers(_k8s_docs())]
    return {tuple(c) for c in compose + k8s}


def test_every_command_they_run_is_a_real_command():
    commands = _commands()
    clara = sorted(c for c in commands if c[0] == "clara")
    assert {c[1] for c in clara} >= {"up", "api", "chat", "worker", "db"}
    for command in clara:
        r = subprocess.run(
            [sys.executable, "-m", "cli", *command[1:], "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, (command, r.stderr)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            sources = [p for p in line.split()[1:-1] if not p.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert 'CMD ["clara", "up"]' in dockerfile


def test_the_chroma_server_command_and_its_probe_answer(tmp_path):
    chroma_commands = sorted(c for c in _commands() if c[0] == "chroma")
    assert len(chroma_commands) == 2  # compose and Kubernetes: only the path differs
    probe = next(
        c["readinessProbe"]["httpGet"]["path"]
        for c in _containers(_k8s_docs())
        if c["command"][0] == "chroma"
    )
    port = free_port()
    args = list(chroma_commands[0][1:])
    args[args.index("--path") + 1] = str(tmp_path / "chroma")
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    chroma = Path(sys.executable).with_name("chroma")
    log = tmp_path / "chroma.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(chroma), *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_http(f"http://127.0.0.1:{port}{probe}", limit=120, proc=proc, log=log.read_text)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_probes_of_web_api_and_chat_are_open_health_routes(settings):
    from ui.server import _OPEN_PREFIXES
    from workers.chat_server import PUBLIC_PATHS

    probes = {
        c["name"]: c["readinessProbe"]["httpGet"]["path"]
        for c in _containers(_k8s_docs())
        if "readinessProbe" in c
    }
    assert probes["web"].startswith(_OPEN_PREFIXES)
    assert probes["chat"] in PUBLIC_PATHS
    with running_api_server(settings) as api:  # the API's probe, on the real server
        assert httpx.get(api.url + probes["api"], timeout=30).status_code == 200
    compose_probes = " ".join(
        " ".join(s["healthcheck"]["test"])
        for name, s in _compose()["services"].items()
        if name in ("web", "api", "chat")
    )
    for name in ("web", "api", "chat"):
        assert probes[name] in compose_probes

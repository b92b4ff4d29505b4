"""deploy/prometheus: the scrape configuration points at the workbench's metrics paths and
ports, every alert rule is complete; with promtool installed (on PATH, or named by the
PROMTOOL variable) also Prometheus' own checks and the rule unit tests in alerts_test.yml.
That every metric the rules use is exported is checked against the real server
(tests/integration/test_ops_metrics.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.config import Settings

FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def load(name: str) -> dict:
    return yaml.safe_load((FOLDER / name).read_text(encoding="utf-8"))


def rules() -> list[dict]:
    return [rule for group in load("alerts.yml")["groups"] for rule in group["rules"]]


def test_scrape_config_names_each_server_with_its_path_port_and_token():
    config = load("prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    defaults = Settings()
    expected = {
        "clara-api": ("/metrics", defaults.api_port),
        "clara-chat": ("/clara/metrics", defaults.chat_port),
        "clara-worker": ("/metrics", 9510),
    }
    assert set(jobs) == set(expected)
    for name, (path, port) in expected.items():
        job = jobs[name]
        assert job["metrics_path"] == path, name
        assert job["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"], name
        assert job["authorization"]["type"] == "Bearer", name
        assert job["authorization"]["credentials_file"], name


def test_every_alert_rule_is_complete():
    found = rules()
    assert {r["alert"] for r in found} >= {"ClaraWorkerDown", "ClaraQueueStuck", "ClaraDiskLow"}
    for rule in found:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["expr"].strip() and rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.skip("promtool is not installed: Prometheus' checks of deploy/prometheus not run")
    return found


def run(*args: str, cwd: Path) -> None:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_accepts_the_files_and_the_rules_fire_as_tested(tmp_path):
    tool = promtool()
    for name in ("prometheus.yml", "alerts.yml", "alerts_test.yml"):
        shutil.copy(FOLDER / name, tmp_path / name)
    # The token file must exist for `check config`; the deployment provides its own.
    (tmp_path / "token").write_text("scrape-token\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        config.read_text().replace("/etc/prometheus/clara_metrics_token", str(tmp_path / "token"))
    )
    run(tool, "check", "config", "prometheus.yml", cwd=tmp_path)
    run(tool, "check", "rules", "alerts.yml", cwd=tmp_path)
    run(tool, "test", "rules", "alerts_test.yml", cwd=tmp_path)

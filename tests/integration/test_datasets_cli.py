"""`clara dataset ...` as a real process against a real database (both engines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

GOOD = [
    {
        "messages": [
            {"role": "user", "content": f"Wie hoch ist die Hundesteuer für Hund {i}?"},
            {
                "role": "assistant",
                "content": f"Für Hund Nummer {i} gilt der Satz der "
                "Hundesteuersatzung der Stadt, fällig jeweils zum ersten Juli.",
            },
        ]
    }
    for i in range(5)
]


def clara(settings, *args, ok=True):
    env = {
        **os.environ,
        "CLARA_DATA_DIR": str(settings.data_path),
        "CLARA_DATABASE_URL": settings.effective_database_url,
        "CLARA_ENV": "testing",
        "CLARA_ADMIN_PASSWORD": "adminpass1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_cli_flow(db_engine, settings, tmp_path):
    bad = tmp_path / "faq.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in GOOD) + "\n{kaputt\n", encoding="utf-8")
    p = clara(settings, "dataset", "import", "faq", str(bad), ok=False)
    assert p.returncode == 1
    assert "faq.jsonl:6: invalid JSON" in p.stderr and "nothing was imported" in p.stderr
    out = json.loads(
        clara(settings, "dataset", "import", "faq", str(bad), "--skip-bad", "--json").stdout
    )
    assert out["imported"] == 5 and out["skipped"] == 1 and out["format"] == "messages"

    run = json.loads(clara(settings, "dataset", "score", "faq", "--json").stdout)
    assert run["status"] == "done" and run["done"] == 5
    stats = json.loads(clara(settings, "dataset", "review-stats", "faq", "--json").stdout)
    assert stats["counts"]["pending"] == 5 and stats["scored"] == 5

    clara(settings, "dataset", "review", "reject", "faq", "--ids", "1")
    acc = json.loads(clara(settings, "dataset", "review", "accept", "faq", "--json").stdout)
    assert acc == {"changed": 4, "decision": "accepted"}
    listed = json.loads(clara(settings, "dataset", "list", "--json").stdout)
    assert listed[0]["counts"] == {"total": 5, "pending": 0, "accepted": 4, "rejected": 1}

    v1 = json.loads(
        clara(settings, "dataset", "freeze", "faq", "--eval-ratio", "0.25", "--json").stdout
    )
    assert v1["counts"]["train"] == 3 and v1["counts"]["eval"] == 1
    clara(settings, "dataset", "review", "accept", "faq", "--ids", "1")
    clara(settings, "dataset", "freeze", "faq")
    d = json.loads(clara(settings, "dataset", "diff", "faq@v1", "faq@v2", "--json").stdout)
    assert d["added"] == ["1"] and d["removed"] == [] and d["changed"] == []

    exp = json.loads(
        clara(
            settings,
            "dataset",
            "export",
            "faq@v2",
            "--format",
            "sharegpt",
            "--file-type",
            "parquet",
            "--json",
        ).stdout
    )
    assert set(exp["files"]) == {"train.parquet", "eval.parquet"}
    shown = json.loads(clara(settings, "dataset", "show", "faq", "--json").stdout)
    assert [v["number"] for v in shown["versions"]] == [2, 1]

    p = clara(settings, "dataset", "export", "faq@v7", ok=False)
    assert p.returncode == 1 and "no dataset version 'faq@v7'" in p.stderr
    p = clara(settings, "dataset", "thresholds", "faq", "--set", "min_chars=-3", ok=False)
    assert "min_chars" in p.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_unknown_format(db_engine, settings, tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("frage,antwort\nA,B\n", encoding="utf-8")
    p = clara(settings, "dataset", "import", "d", str(f), ok=False)
    assert "cannot tell the format" in p.stderr and "antwort, frage" in p.stderr

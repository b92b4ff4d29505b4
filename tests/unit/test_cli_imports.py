"""`clara` starts without the heavy libraries (issue 12, item 7).

Help pages and keyword / graph search need none of torch, transformers, chromadb, pandas and
the like; a module-level import of one of them (in cli/ or in a core module the CLI loads)
adds seconds to every command. Each check runs the real CLI in a fresh interpreter and looks
at `sys.modules` afterwards. Timing is not asserted here: `bench/cli_start_bench.py`
measures it. To find who imports a module: `python -X importtime -m cli --help 2>imp.txt`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "torch", "transformers", "sentence_transformers", "tokenizers", "safetensors",
    "huggingface_hub", "accelerate", "bitsandbytes", "onnxruntime", "chromadb", "pandas",
    "pyarrow", "numpy", "datasets", "trl", "peft", "streamlit", "gradio", "plotly",
)  # fmt: skip
MARK = "LOADED-HEAVY-MODULES "

# Runs code in the child, then prints which heavy modules are loaded (last line of stderr).
CHILD = f"""
import json, sys
try:
    {{code}}
finally:
    heavy = {HEAVY!r}
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))
    print({MARK!r} + json.dumps(loaded), file=sys.stderr)
"""

# Every command and group of the app, each with --help, in one process.
ALL_HELP = """
import typer.main
from cli import app

def walk(cmd, path):
    yield path
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from walk(sub, [*path, name])

paths = list(walk(typer.main.get_command(app), []))
assert len(paths) > 20, paths  # the walk found the commands
for path in paths:
    try:
        app([*path, "--help"], prog_name="clara")
    except SystemExit as exit_:
        assert exit_.code in (0, None), (path, exit_.code)
print("help pages:", len(paths), file=sys.stderr)
"""

# The CLI as `clara` runs it (arguments after -c).
RUN_CLI = """
import runpy
sys.argv = ["clara", *sys.argv[1:]]
try:
    runpy.run_module("cli", run_name="__main__")
except SystemExit as exit_:
    if exit_.code not in (0, None):
        raise
"""


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARA_")}
    env.update(
        CLARA_DATA_DIR=str(data_dir),
        CLARA_ENV="testing",
        CLARA_ADMIN_PASSWORD="adminpass1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def run_child(code: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    indented = "\n    ".join(code.strip().splitlines())
    return subprocess.run(
        [sys.executable, "-c", CHILD.replace("{code}", indented), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def loaded_heavy(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(MARK)]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len(MARK) :])


def test_help_of_every_command_loads_no_heavy_library(tmp_path):
    proc = run_child(ALL_HELP, [], env_for(tmp_path / "data"))
    heavy = loaded_heavy(proc)
    assert heavy == [], (
        f"`clara ... --help` imported {heavy}; move those imports into the functions that "
        "need them (find the importer with `python -X importtime -m cli --help`)"
    )


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A fresh SQLite data dir with one small document, ingested by the real CLI."""
    base = tmp_path_factory.mktemp("cli-imports")
    docs = base / "docs"
    docs.mkdir()
    (docs / "hundesteuer.md").write_text(
        "# Hundesteuersatzung\n\nDie Hundesteuer beträgt für den ersten Hund 120 Euro im Jahr.\n",
        encoding="utf-8",
    )
    data = base / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "corpus", "ingest", str(docs), "--no-embed"],
        cwd=ROOT,
        env=env_for(data),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return data


@pytest.mark.parametrize("mode", ["keyword", "graph"])
def test_keyword_and_graph_search_load_no_heavy_library(tiny_data_dir, mode):
    args = ["corpus", "search", "Hundesteuer", "--mode", mode, "--json"]
    proc = run_child(RUN_CLI, args, env_for(tiny_data_dir))
    heavy = loaded_heavy(proc)
    assert json.loads(proc.stdout)[0]["doc_id"] == "hundesteuer", proc.stdout
    assert heavy == [], (
        f"`clara {' '.join(args)}` imported {heavy}; only vector and hybrid search may "
        "(find the importer with `python -X importtime -m cli corpus search ...`)"
    )

"""The architecture's boundaries, checked on the source: core is UI-agnostic, pages are thin."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UI_LIBS = {"streamlit", "gradio", "starlette", "fastapi"}
PAGE_ALLOWED = {"streamlit", "plotly", "pandas", "core", "ui"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_ui_libraries():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & UI_LIBS)
        for p in (ROOT / "core").rglob("*.py")
        if _imports(p) & UI_LIBS
    }
    assert offenders == {}


# Composition roots (the CLI and `clara up` supervisor, the workers, the Streamlit shell and
# its pages) sit on top of core; core imports none of them.
COMPOSITION_ROOTS = {"cli", "workers", "ui", "pages", "app"}


def test_core_never_imports_composition_roots():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & COMPOSITION_ROOTS)
        for p in (ROOT / "core").rglob("*.py")
        if _imports(p) & COMPOSITION_ROOTS
    }
    assert offenders == {}


def test_the_roots_check_catches_a_deliberate_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import workers.trainer\n    from cli.common import app\n")
    assert _imports(bad) & COMPOSITION_ROOTS == {"workers", "cli"}


def test_pages_import_only_light_modules():
    stdlib = set(sys.stdlib_module_names)
    offenders = {}
    for p in (ROOT / "pages").glob("*.py"):
        heavy = {m for m in _imports(p) if m not in PAGE_ALLOWED and m not in stdlib}
        heavy.discard("__future__")
        if heavy:
            offenders[p.name] = sorted(heavy)
    assert offenders == {}


def test_every_page_file_is_registered_in_navigation():
    from ui.navigation import PAGES

    registered = {e.path for e in PAGES}
    on_disk = {f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py")}
    assert on_disk == registered


def test_the_check_itself_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import streamlit as st\nfrom gradio import Blocks\nimport torch\n")
    assert _imports(bad) >= {"streamlit", "gradio", "torch"}


_ENV_READ = re.compile(
    r"""(environ\.get\(|getenv\(|environ\[)\s*["']CLARA_\w*["']\s*(?!\]\s*=[^=])"""
)


def test_settings_are_read_only_in_core_config():
    """Every CLARA_* variable is a field of core.config.Settings and is read nowhere else
    (setting one for a child process is fine)."""
    offenders = []
    for folder in ("core", "cli", "workers", "ui", "pages"):
        for p in (ROOT / folder).rglob("*.py"):
            if p == ROOT / "core" / "config.py":
                continue
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if _ENV_READ.search(line):
                    offenders.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_settings_check_can_fail():
    assert _ENV_READ.search('n = os.environ.get("CLARA_TRAIN_THREADS")')
    assert _ENV_READ.search("x = os.environ['CLARA_X']")
    assert not _ENV_READ.search('env["CLARA_X"] = "1"')

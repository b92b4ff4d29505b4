"""The cached wordfreq table gives compound splitting exactly what wordfreq itself gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from wordfreq import zipf_frequency

from core.corpus import compounds
from core.corpus.text import tokens

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "corpus"


@pytest.fixture
def table(tmp_path, monkeypatch):
    from core.config import get_settings

    monkeypatch.setenv("CLARA_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    fresh = compounds._FrequencyTable()
    monkeypatch.setattr(compounds, "_TABLE", fresh)
    compounds._freq.cache_clear()
    compounds.compound_parts.cache_clear()
    yield fresh
    compounds._freq.cache_clear()
    compounds.compound_parts.cache_clear()
    get_settings.cache_clear()


def _sample_words() -> list[str]:
    words = set()
    for f in SAMPLE.glob("*.*"):
        if f.suffix in (".md", ".txt", ".html"):
            words.update(w for w in tokens(f.read_text(encoding="utf-8")) if w.isalpha())
    return sorted(words)


def test_table_lookups_equal_wordfreq_and_it_is_built_once(table, tmp_path):
    words = _sample_words()
    # Every substring compound splitting may look up, of the sample corpus's long words.
    probes = {w[i:j] for w in words if len(w) >= 8 for i in range(len(w)) for j in (len(w),)}
    probes |= {w[:i] for w in words if len(w) >= 8 for i in range(3, len(w))}
    probes |= {"straße", "Straße", "ÄRGER", "xyzzyq"}
    differ = [(p, table.zipf(p), zipf_frequency(p, "de")) for p in sorted(probes)]
    differ = [d for d in differ if d[1] != d[2]]
    assert not differ, differ[:20]
    built = list((tmp_path / "cache").glob("wordfreq-*-de.sqlite"))
    assert len(built) == 1 and not list((tmp_path / "cache").glob("*.tmp"))


def test_splits_with_the_table_equal_splits_with_wordfreq(table, monkeypatch):
    words = [w for w in _sample_words() if len(w) >= 8]
    with_table = {w: compounds.compound_parts(w) for w in words}
    compounds.compound_parts.cache_clear()
    compounds._freq.cache_clear()
    monkeypatch.setattr(table, "_direct", zipf_frequency)
    assert {w: compounds.compound_parts(w) for w in words} == with_table
    assert with_table["hundesteuersatzung"] == ("hundesteuer", "hunde", "steuer", "satzung")


def test_unwritable_cache_dir_falls_back_to_wordfreq(tmp_path, monkeypatch):
    from core.config import get_settings

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("CLARA_CACHE_DIR", str(blocked / "cache"))
    get_settings.cache_clear()
    try:
        fresh = compounds._FrequencyTable()
        assert fresh.zipf("steuer") == zipf_frequency("steuer", "de") > 3
        assert fresh._direct is not None
    finally:
        get_settings.cache_clear()

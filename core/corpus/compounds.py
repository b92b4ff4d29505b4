"""German compound splitting for the keyword index.

German writes compounds as one word: a question about "Parkplätze" must find a statute about
"Stellplätze", and "Dachneigung" a rule on the "Neigung der Dächer". Neither stemming nor
prefix matching bridges that, because the shared part is the compound's head at its end.
So both the index and the query also carry the parts of long words.

The split is the frequency method of Koehn & Knight (2003, "Empirical methods for compound
splitting"): a word is split where the parts are more frequent words of the language than
the whole (geometric mean of the part frequencies above the word's own). Frequencies come
from `wordfreq` (its German list, data CC-BY-SA 4.0), so the split does not depend on what
happens to be in the corpus yet and the index stays the same whatever order documents
arrive in. Only German has a splitter; other languages get no parts.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from functools import lru_cache

# Words shorter than this are rarely compounds, and splitting them mostly yields noise.
MIN_COMPOUND_LEN = 8
MIN_PART_LEN = 3
# The head must be an established word (Zipf >= 3: at least once per million words).
MIN_HEAD_ZIPF = 3.0
# Three-letter modifiers must be common words ("Alt|stadt", "Bio|tonne"); rarer ones are
# mostly prefixes cut off a word ("ver|ordnung", "bel|ehrung").
MIN_SHORT_MODIFIER_ZIPF = 4.3
# Linking elements (Fugenelemente) between modifier and head: "Verwaltung-s-gebühr".
LINKING = ("ens", "es", "en", "er", "ns", "s", "n", "e")
# Stripping a linking element costs a little, so "Hunde|steuer" wins over "Hundes|teuer".
LINK_PENALTY = 1.0
MAX_DEPTH = 2
# Endings that are words of their own but inflections here ("Inhaber|innen").
NOT_HEADS = frozenset({"innen"})


class _FrequencyTable:
    """wordfreq's German Zipf frequencies as an SQLite table in the cache dir.

    wordfreq loads its whole German list (634k words) on the first lookup: 0.6 s, more than
    the rest of a CLI keyword search. Indexed, a lookup reads a few pages; the table is built
    once per wordfreq version from the installed package and written atomically. Where the
    cache dir cannot be written, lookups go to wordfreq itself (same values, tested).
    """

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._direct = None
        self._lock = threading.Lock()

    def _open(self) -> None:
        from importlib.metadata import version

        from core.config import cache_root

        path = cache_root() / f"wordfreq-{version('wordfreq')}-de.sqlite"
        try:
            if not path.exists():
                _build_table(path)
            self._conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
        except (OSError, sqlite3.Error):
            from wordfreq import zipf_frequency

            self._direct = zipf_frequency

    def zipf(self, word: str) -> float:
        with self._lock:
            if self._conn is None and self._direct is None:
                self._open()
            if self._direct is not None:
                return self._direct(word, "de")
            # wordfreq case-folds before it looks a word up ("straße" is "strasse").
            row = self._conn.execute(
                "SELECT z FROM zipf WHERE w = ?", (word.casefold(),)
            ).fetchone()
        return row[0] if row else 0.0


def _build_table(path) -> None:
    import os

    from wordfreq import get_frequency_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("CREATE TABLE zipf (w TEXT PRIMARY KEY, z REAL) WITHOUT ROWID")
        conn.executemany(
            "INSERT INTO zipf VALUES (?, ?)",
            (
                (w, round(math.log10(f) + 9, 2))
                for w, f in get_frequency_dict("de", "best").items()
                if f > 0
            ),
        )
        conn.commit()
    finally:
        conn.close()
    os.replace(tmp, path)


_TABLE = _FrequencyTable()


@lru_cache(maxsize=500_000)
def _freq(word: str) -> float:
    return _TABLE.zipf(word)


@lru_cache(maxsize=200_000)
def compound_parts(word: str, depth: int = MAX_DEPTH) -> tuple[str, ...]:
    """The parts of a lower-case German compound, modifiers first; () if it is not one.

    Parts of parts are included ("hundesteuersatzung" → hundesteuer, hunde, steuer, satzung).
    """
    if depth <= 0 or len(word) < MIN_COMPOUND_LEN or not word.isalpha():
        return ()
    best: tuple[str, str] | None = None
    best_score = _freq(word)
    for i in range(MIN_PART_LEN, len(word) - MIN_PART_LEN):
        head = word[i:]
        head_freq = _freq(head)
        if head_freq < MIN_HEAD_ZIPF or head in NOT_HEADS:
            continue
        modifier, mod_freq = word[:i], _freq(word[:i])
        for link in LINKING:
            stem = word[: i - len(link)]
            if word[:i].endswith(link) and len(stem) >= MIN_PART_LEN:
                f = _freq(stem) - LINK_PENALTY
                if f > mod_freq:
                    modifier, mod_freq = stem, f
        if len(modifier) == MIN_PART_LEN and mod_freq < MIN_SHORT_MODIFIER_ZIPF:
            continue
        # An unknown modifier is still a part when it is long enough to mean something
        # ("Freischank|fläche"), but only in the word itself: inside a part, an unknown
        # piece is a misplaced cut ("freisc|hank").
        if mod_freq <= 0 and (len(modifier) < 5 or depth < MAX_DEPTH):
            continue
        score = (max(mod_freq, 0.0) + head_freq) / 2
        if score > best_score:
            best, best_score = (modifier, head), score
    if best is None:
        return ()
    modifier, head = best
    parts = (
        modifier,
        *compound_parts(modifier, depth - 1),
        head,
        *compound_parts(head, depth - 1),
    )
    return tuple(dict.fromkeys(parts))


def text_parts(words: list[str], language: str) -> list[str]:
    """The compound parts of every word of a text (German only), in order of appearance."""
    if language != "german":
        return []
    return [p for w in words for p in compound_parts(w)]

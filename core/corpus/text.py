"""Language handling shared by both keyword engines: tokens, German stems, snippets.

Postgres' 'german' text search configuration is the Snowball German stemmer; PyStemmer
ships the same algorithm, so on SQLite we store and query stems that match what Postgres
derives itself.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import Stemmer

from core.corpus.compounds import text_parts

WORD_RE = re.compile(r"\w+", re.UNICODE)

# Snowball's German stop word list (the one Postgres' 'german' configuration uses), so both
# engines drop the same words from queries.
GERMAN_STOPWORDS = frozenset(
    [
        "aber",
        "alle",
        "allem",
        "allen",
        "aller",
        "alles",
        "als",
        "also",
        "am",
        "an",
        "ander",
        "andere",
        "anderem",
        "anderen",
        "anderer",
        "anderes",
        "anderm",
        "andern",
        "anderr",
        "anders",
        "auch",
        "auf",
        "aus",
        "bei",
        "bin",
        "bis",
        "bist",
        "da",
        "damit",
        "dann",
        "der",
        "den",
        "des",
        "dem",
        "die",
        "das",
        "dass",
        "daß",
        "derselbe",
        "derselben",
        "denselben",
        "desselben",
        "demselben",
        "dieselbe",
        "dieselben",
        "dasselbe",
        "dazu",
        "dein",
        "deine",
        "deinem",
        "deinen",
        "deiner",
        "deines",
        "denn",
        "derer",
        "dessen",
        "dich",
        "dir",
        "du",
        "dies",
        "diese",
        "diesem",
        "diesen",
        "dieser",
        "dieses",
        "doch",
        "dort",
        "durch",
        "ein",
        "eine",
        "einem",
        "einen",
        "einer",
        "eines",
        "einig",
        "einige",
        "einigem",
        "einigen",
        "einiger",
        "einiges",
        "einmal",
        "er",
        "ihn",
        "ihm",
        "es",
        "etwas",
        "euer",
        "eure",
        "eurem",
        "euren",
        "eurer",
        "eures",
        "für",
        "gegen",
        "gewesen",
        "hab",
        "habe",
        "haben",
        "hat",
        "hatte",
        "hatten",
        "hier",
        "hin",
        "hinter",
        "ich",
        "mich",
        "mir",
        "ihr",
        "ihre",
        "ihrem",
        "ihren",
        "ihrer",
        "ihres",
        "euch",
        "im",
        "in",
        "indem",
        "ins",
        "ist",
        "jede",
        "jedem",
        "jeden",
        "jeder",
        "jedes",
        "jene",
        "jenem",
        "jenen",
        "jener",
        "jenes",
        "jetzt",
        "kann",
        "kein",
        "keine",
        "keinem",
        "keinen",
        "keiner",
        "keines",
        "können",
        "könnte",
        "machen",
        "man",
        "manche",
        "manchem",
        "manchen",
        "mancher",
        "manches",
        "mein",
        "meine",
        "meinem",
        "meinen",
        "meiner",
        "meines",
        "mit",
        "muss",
        "musste",
        "nach",
        "nicht",
        "nichts",
        "noch",
        "nun",
        "nur",
        "ob",
        "oder",
        "ohne",
        "sehr",
        "sein",
        "seine",
        "seinem",
        "seinen",
        "seiner",
        "seines",
        "selbst",
        "sich",
        "sie",
        "ihnen",
        "sind",
        "so",
        "solche",
        "solchem",
        "solchen",
        "solcher",
        "solches",
        "soll",
        "sollte",
        "sondern",
        "sonst",
        "über",
        "um",
        "und",
        "uns",
        "unsere",
        "unserem",
        "unseren",
        "unser",
        "unseres",
        "unter",
        "viel",
        "vom",
        "von",
        "vor",
        "während",
        "war",
        "waren",
        "warst",
        "was",
        "weg",
        "weil",
        "weiter",
        "welche",
        "welchem",
        "welchen",
        "welcher",
        "welches",
        "wenn",
        "werde",
        "werden",
        "wie",
        "wieder",
        "will",
        "wir",
        "wird",
        "wirst",
        "wo",
        "wollen",
        "wollte",
        "würde",
        "würden",
        "zu",
        "zum",
        "zur",
        "zwar",
        "zwischen",
        "wann",
        "welch",
        "wer",
        "wem",
        "wen",
        "gibt",
        "muss",
        "müssen",
        "darf",
        "dürfen",
    ]
)

# Stems this short match too much as prefixes ("ab*" would match half the dictionary).
MIN_PREFIX_STEM = 6


@lru_cache(maxsize=4)
def _stemmer(language: str) -> Stemmer.Stemmer | None:
    try:
        return Stemmer.Stemmer(language)
    except KeyError:
        return None


def fold(word: str) -> str:
    return unicodedata.normalize("NFC", word).lower()


def tokens(text: str) -> list[str]:
    return WORD_RE.findall(unicodedata.normalize("NFC", text).lower())


def stem_words(words: list[str], language: str = "german") -> list[str]:
    st = _stemmer(language)
    return st.stemWords(words) if st else list(words)


def _content_words(query: str) -> list[str]:
    words = [w for w in tokens(query) if w not in GERMAN_STOPWORDS]
    return words or tokens(query)  # a query of only stop words still means something


def query_terms(query: str, language: str = "german") -> list[str]:
    """Stems of the query's content words, deduplicated, in order."""
    seen: dict[str, None] = {}
    for s in stem_words(_content_words(query), language):
        if s and s not in seen:
            seen[s] = None
    return list(seen)


def query_part_terms(query: str, language: str = "german") -> list[str]:
    """Stems of the parts of the query's compounds that are not query terms already."""
    words = _content_words(query)
    terms = set(query_terms(query, language))
    parts = [p for p in text_parts(words, language) if p not in GERMAN_STOPWORDS]
    seen: dict[str, None] = {}
    for s in stem_words(parts, language):
        if s and s not in terms and s not in seen:
            seen[s] = None
    return list(seen)


def _best_window(hit: list[bool], width: int) -> int:
    """Start of the window of `width` words with most matches; the first best wins.

    A running sum in plain Python (a few ms for the longest snippet text) rather than numpy,
    whose import alone would cost a keyword search more than that."""
    best = run = sum(hit[:width])
    best_start = 0
    for i in range(1, len(hit) - width + 1):
        run += hit[i + width - 1] - hit[i - 1]
        if run > best:
            best, best_start = run, i
    return best_start


def snippet(text: str, terms: list[str], width: int = 32, language: str = "german") -> str:
    """The window of `width` words with most query matches; matches wrapped in «…».

    Plain text markers rather than HTML: snippets are shown in tables and terminals and must
    never be interpreted as markup.
    """
    matches = list(WORD_RE.finditer(text[:200_000]))
    if not matches:
        return ""
    # Long documents repeat their words: stem and match each distinct word once.
    words = [m.group() for m in matches]
    distinct = list(dict.fromkeys(words))
    stems = stem_words([fold(w) for w in distinct], language)
    # One set lookup and one C-level startswith per word instead of a loop over the terms.
    exact = set(terms)
    prefixes = tuple(t for t in terms if len(t) >= MIN_PREFIX_STEM)
    is_hit = {
        w: st in exact or (bool(prefixes) and st.startswith(prefixes))
        for w, st in zip(distinct, stems, strict=True)
    }
    hit = [is_hit[w] for w in words]
    best_start = _best_window(hit, min(width, len(hit)))
    end_i = min(len(matches), best_start + width) - 1
    start_c, end_c = matches[best_start].start(), matches[end_i].end()
    out, pos = [], start_c
    for i in range(best_start, end_i + 1):
        m = matches[i]
        out.append(text[pos : m.start()])
        out.append(f"«{m.group()}»" if hit[i] else m.group())
        pos = m.end()
    # Words cut off on either side are marked; trailing punctuation of the text is kept.
    more = end_i < len(matches) - 1 or len(text) > 200_000
    if not more:
        out.append(text[end_c:])
    body = " ".join("".join(out).split())
    prefix = "… " if best_start > 0 else ""
    return prefix + body + (" …" if more else "")

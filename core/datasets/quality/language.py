"""Offline language identification with langid's model (shipped in its wheel, no download).

Two things around langid itself, both giving the same answers as `langid.classify`:

* Loading: langid decodes its model from a bz2-compressed pickle on first use, 5-15 s of CPU
  here. The decoded arrays are cached as an .npz file (CLARA_CACHE_DIR, else
  $XDG_CACHE_HOME/clara or ~/.cache/clara; written atomically, ignored when unwritable), so
  later processes load it in well under a second.
* Classifying: langid walks its byte-level automaton in a Python loop, one byte at a time.
  The automaton is an Aho-Corasick machine over byte n-grams of at most `depth` (4) bytes, so
  the state after byte i only depends on bytes i-depth+1..i: all states are computed at once
  with `depth` vectorised steps from the start state, and the feature vector is a bincount.
  Same numbers as langid, 5-10x faster (tests compare both).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets.quality import reasons as R
from core.datasets.quality.base import QualityStep, Sample
from core.datasets.quality.models import QualityThresholds

_LOCK = threading.Lock()
_NON_LETTERS = re.compile(r"[\W\d_]+")
_MODEL: dict[str, Any] | None = None
_BY_SET: dict[tuple[str, ...] | None, LanguageIdentifier] = {}


def _cache_path() -> Path:
    from core.config import cache_root

    root = cache_root()
    try:
        v = version("langid")
    except PackageNotFoundError:  # pragma: no cover
        v = "unknown"
    return root / f"langid-{v}-model.npz"


def _decode_langid_model() -> dict[str, Any]:
    import base64
    import bz2
    import pickle

    from langid.langid import model

    nb_ptc, nb_pc, nb_classes, tk_nextmove, tk_output = pickle.loads(
        bz2.decompress(base64.b64decode(model))
    )
    states = sorted(s for s, out in tk_output.items() if out)
    return {
        "nb_ptc": np.array(nb_ptc, dtype=np.float64).reshape(-1, len(nb_pc)),
        "nb_pc": np.array(nb_pc, dtype=np.float64),
        "nb_classes": np.array(nb_classes),
        "tk_nextmove": np.array(tk_nextmove, dtype=np.uint16),
        "out_states": np.array(states, dtype=np.int64),
        "out_lengths": np.array([len(tk_output[s]) for s in states], dtype=np.int64),
        "out_features": np.array([f for s in states for f in tk_output[s]], dtype=np.int64),
    }


def _load_model() -> dict[str, Any]:
    global _MODEL
    if _MODEL is not None:
        return _MODEL
    path = _cache_path()
    model: dict[str, Any] | None = None
    try:
        with np.load(path, allow_pickle=False) as z:
            model = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        model = None
    if model is None:
        model = _decode_langid_model()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **model)
            os.replace(tmp, path)
        except OSError:
            pass  # read-only home: stay correct, just slower next time
    _MODEL = model
    return model


def _automaton_depth(transitions: np.ndarray) -> int:
    """Longest shortest-path from the start state: in an Aho-Corasick machine every state is
    the trie node of one string and is first reached by reading exactly that string, so this is
    the longest n-gram length (the window the vectorised walk needs)."""
    depth = np.full(transitions.shape[0], -1, dtype=np.int64)
    depth[0] = 0
    frontier = np.array([0])
    d = 0
    while frontier.size:
        nxt = np.unique(transitions[frontier].ravel())
        nxt = nxt[depth[nxt] < 0]
        d += 1
        depth[nxt] = d
        frontier = nxt
    return int(depth.max())


class LanguageIdentifier:
    """langid's naive Bayes over byte n-grams, restricted to `languages` (None: all 97)."""

    def __init__(self, model: dict[str, Any], languages: Sequence[str] | None = None) -> None:
        classes = [str(c) for c in model["nb_classes"]]
        if languages is None:
            keep = np.ones(len(classes), dtype=bool)
        else:
            unknown = set(languages) - set(classes)
            if unknown:
                raise ValueError(f"langid does not know {sorted(unknown)}")
            keep = np.array([c in set(languages) for c in classes])
        self.classes = [c for c, k in zip(classes, keep, strict=True) if k]
        self._ptc = np.ascontiguousarray(model["nb_ptc"][:, keep])
        self._pc = model["nb_pc"][keep]
        self._num_feats = self._ptc.shape[0]
        nextmove = model["tk_nextmove"].astype(np.int64)
        self._nextmove = nextmove
        self._nextmove_list: list[int] | None = None
        n_states = nextmove.size // 256
        self._depth = _automaton_depth(nextmove.reshape(n_states, 256))
        # Output features per state, flattened: state s owns out_feat[start[s]:start[s+1]].
        lengths = np.zeros(n_states, dtype=np.int64)
        lengths[model["out_states"]] = model["out_lengths"]
        order = np.argsort(model["out_states"], kind="stable")
        offs = np.concatenate(([0], np.cumsum(model["out_lengths"])))
        feats = [model["out_features"][offs[i] : offs[i + 1]] for i in order]
        self._n_states = n_states
        self._out_state = np.repeat(np.arange(n_states), lengths)  # owner of each output
        self._out_feat = np.concatenate(feats) if feats else np.empty(0, dtype=np.int64)

    def states(self, data: bytes) -> np.ndarray:
        """Automaton state after each byte (what langid's loop visits), vectorised."""
        b = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        d = self._depth
        padded = np.concatenate((np.full(d - 1, -1, dtype=np.int64), b))
        state = np.zeros(len(b), dtype=np.int64)
        nextmove = self._nextmove
        for k in range(d):
            window = padded[k : k + len(b)]  # byte i-d+1+k for every position i
            valid = window >= 0  # windows reaching before the text start from state 0
            moved = nextmove[(state << 8) + np.where(valid, window, 0)]
            state = np.where(valid, moved, state)
        return state

    def states_sequential(self, data: bytes) -> list[int]:
        """langid's own walk (reference for tests)."""
        if self._nextmove_list is None:
            self._nextmove_list = self._nextmove.tolist()
        nextmove = self._nextmove_list
        state, out = 0, []
        for byte in data:
            state = nextmove[(state << 8) + byte]
            out.append(state)
        return out

    def feature_vector(self, text: str) -> np.ndarray:
        data = text.encode("utf-8")
        if not data:
            return np.zeros(self._num_feats, dtype=np.float64)
        counts = np.bincount(self.states(data), minlength=self._n_states)
        return np.bincount(
            self._out_feat, weights=counts[self._out_state], minlength=self._num_feats
        )

    def classify(self, text: str) -> tuple[str, float]:
        """(language, probability), exactly as langid's classify with norm_probs=True."""
        pd = self.feature_vector(text) @ self._ptc + self._pc
        with np.errstate(over="ignore"):
            probs = 1 / np.exp(pd[None, :] - pd[:, None]).sum(1)
        best = int(np.argmax(probs))
        return self.classes[best], float(probs[best])


def language_identifier(languages: Sequence[str] | None) -> LanguageIdentifier:
    """Shared identifier for a language set (the model is loaded once per process)."""
    key = None if languages is None else tuple(sorted(set(languages)))
    with _LOCK:
        ident = _BY_SET.get(key)
        if ident is None:
            ident = LanguageIdentifier(_load_model(), key)
            _BY_SET[key] = ident
    return ident


def language_sample(text: str, limit: int) -> str:
    """The text itself, or head + middle windows of limit // 2 characters each: the head alone
    can be a greeting or a heading, head + middle covers the body too."""
    if len(text) <= limit:
        return text
    half = limit // 2
    mid = len(text) // 2
    return text[:half] + "\n" + text[mid : mid + half]


class LanguageSignal(QualityStep):
    """Signals language (ISO 639-1; "und" with fewer than language_min_chars letters) and
    language_confidence. Flags wrong_language when the best language is not expected, and
    uncertain_language when it is expected but below min_language_confidence."""

    name = "language"

    def __init__(self) -> None:
        super().__init__()
        self._ident: LanguageIdentifier | None = None
        self._key: tuple | None = None

    def setup(self, thresholds: QualityThresholds) -> None:
        candidates = thresholds.language_candidates
        if candidates is not None:
            candidates = sorted(set(candidates) | set(thresholds.expected_languages))
        key = None if candidates is None else tuple(candidates)
        if self._ident is None or key != self._key:
            self._ident = language_identifier(candidates)
            self._key = key

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        t = thresholds
        self.setup(t)
        assert self._ident is not None
        classify = self._ident.classify
        expected = set(t.expected_languages)
        for s in batch:
            sample = language_sample(s.text, t.language_sample_chars)
            # Count letters, not characters: a table of figures or a list of IDs has no
            # language, and langid would still name one.
            if len(_NON_LETTERS.sub("", sample)) < t.language_min_chars:
                s.signals["language"] = "und"
                s.signals["language_confidence"] = 0.0
                continue
            lang, conf = classify(sample)
            s.signals["language"] = lang
            s.signals["language_confidence"] = round(conf, 4)
            if lang not in expected:
                self.flag(s, R.WRONG_LANGUAGE)
            elif conf < t.min_language_confidence:
                self.flag(s, R.UNCERTAIN_LANGUAGE)

"""Document filters. Each returns None to keep a document or the reason it is dropped.

`FilterChain` owns the loop and the shared per-document features (lines, words, n-gram hashes), so each
filter is a short function of one decision. The paper's filters are on by default: fewer than 3
non-empty lines, and Gopher repetition (Rae et al. 2021, thresholds from the spec). The Gopher quality,
FineWeb quality and C4-style rule sets are opt-in. The n-gram statistics are computed on hashed words, in C
(`words.py`: the extension `_words.c`, or its numpy twin), instead of Python loops over joined strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cpt.api.data import Filters, RepetitionFilter
from cpt_pipeline.preprocess import words as word_loop
from cpt_pipeline.preprocess.ngrams import PRIME, ngram_hashes

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "※", "·", "-", "*", "–")  # noqa: RUF001
TERMINAL = (".", "!", "?", '"', "'", "”", "’", ":", ";", ")")  # noqa: RUF001


class Features:
    """Per-document values shared by the filters, each computed at most once."""

    __slots__ = ("_cum", "_grams", "_hashes", "_lengths", "_lines", "_words", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._lines: list[str] | None = None
        self._words: list[str] | None = None
        self._hashes: np.ndarray | None = None
        self._lengths: np.ndarray | None = None
        self._cum: np.ndarray | None = None
        self._grams: dict[int, np.ndarray] = {}

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = [line for line in self.text.split("\n") if line.strip()]
        return self._lines

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = self.text.split()
        return self._words

    def _word_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._hashes is None:
            self._hashes, self._lengths = word_loop.words(self.text)
        return self._hashes, self._lengths  # type: ignore[return-value]

    def ngram_hashes(self, n: int) -> np.ndarray:
        """A hash per word n-gram (position i covers words i .. i+n-1), the same as ngrams.ngram_hashes: the
        (n-1)-gram hashes, extended by one word (each size is computed once, in one pass)."""
        if n not in self._grams:
            hashes, _ = self._word_arrays()
            shorter = n - 1 if n - 1 in self._grams else None
            if shorter is None or n < 2:
                self._grams[n] = ngram_hashes(hashes, n)
            else:
                count = max(len(hashes) - n + 1, 0)
                grams = self._grams[shorter][:count] * PRIME
                grams ^= hashes[n - 1 : n - 1 + count]
                self._grams[n] = grams
        return self._grams[n]

    def ngram_chars(self, start: int, n: int) -> int:
        """Characters (without spaces) of the n-gram at word position start."""
        if self._cum is None:  # the numpy path's only: the C statistics sum lengths themselves
            _, lengths = self._word_arrays()
            self._cum = np.concatenate(([0], np.cumsum(lengths)))
        return int(self._cum[start + n] - self._cum[start])

    def duplicated_ngram_chars(self, n: int) -> int:
        """Characters of the words covered by any repeated occurrence of an n-gram."""
        if word_loop.NATIVE is not None:
            return word_loop.NATIVE.duplicated_ngram_chars(*self._word_arrays(), n)
        grams = self.ngram_hashes(n)
        if len(grams) < 2:
            return 0
        values, counts = _runs(grams)
        if counts.max() == 1:
            return 0
        positions = np.flatnonzero(_among(grams, values[counts > 1]))  # every occurrence of a repeated n-gram
        _, first = np.unique(grams[positions], return_index=True)
        repeated = np.ones(len(positions), dtype=bool)
        repeated[first] = False  # the first occurrence of each is not a repetition
        starts = positions[repeated]
        size = len(grams) + n
        depth = np.cumsum(np.bincount(starts, minlength=size) - np.bincount(starts + n, minlength=size))
        _, lengths = self._word_arrays()
        return int(lengths[depth[:-1] > 0].sum())

    def top_ngram_chars(self, n: int) -> int:
        """Characters in all occurrences of the most frequent n-gram; of several equally frequent, the first to
        occur (not the first in hash order)."""
        if word_loop.NATIVE is not None:
            return word_loop.NATIVE.top_ngram_chars(*self._word_arrays(), n)
        grams = self.ngram_hashes(n)
        if len(grams) == 0:
            return 0
        values, counts = _runs(grams)
        best = int(counts.max())
        top = 0 if best == 1 else int(np.flatnonzero(_among(grams, values[counts == best]))[0])
        return best * self.ngram_chars(top, n)


def _among(grams: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mask of grams equal to one of values (comparisons for a few values: np.isin sorts)."""
    if len(values) > 8:
        return np.isin(grams, values)
    mask = grams == values[0]
    for value in values[1:]:
        mask |= grams == value
    return mask


def _runs(grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of grams and how often each occurs (one value sort: faster than np.unique's argsort)."""
    ordered = np.sort(grams)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.diff(np.append(starts, len(ordered)))


def split_paragraphs(text: str) -> list[str]:
    """The stripped text's pieces between runs of two or more newlines, empty ones left out: re.split(r"\n{2,}"),
    in a tenth of the time. Splitting at each "\n\n" leaves of a run of k newlines k//2 - 1 empty pieces and, when
    k is odd, one newline at the start of the next piece."""
    return [p for p in (piece.removeprefix("\n") for piece in text.strip().split("\n\n")) if p]


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier item, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def min_lines(limit: int) -> Callable[[Features], str | None]:
    def check(doc: Features) -> str | None:
        return "min_lines" if len(doc.lines) < limit else None

    return check


def gopher_repetition(cfg: RepetitionFilter) -> Callable[[Features], str | None]:
    line_frac, para_frac = float(cfg.dup_line_fraction), float(cfg.dup_paragraph_fraction)
    line_chars, para_chars = float(cfg.dup_line_char_fraction), float(cfg.dup_paragraph_char_fraction)
    top = [(t.size, float(t.max_char_fraction)) for t in cfg.top_ngrams]
    dup = [(t.size, float(t.max_char_fraction)) for t in cfg.dup_ngrams]

    def check(doc: Features) -> str | None:
        total = len(doc.text) or 1
        paragraphs = split_paragraphs(doc.text)
        count, chars = _duplicates(paragraphs)
        if paragraphs and count / len(paragraphs) > para_frac:
            return "dup_paragraph_fraction"
        if chars / total > para_chars:
            return "dup_paragraph_char_fraction"
        count, chars = _duplicates(doc.lines)
        if doc.lines and count / len(doc.lines) > line_frac:
            return "dup_line_fraction"
        if chars / total > line_chars:
            return "dup_line_char_fraction"
        for n, limit in top:
            if doc.top_ngram_chars(n) / total > limit:
                return f"top_{n}_gram"
        bounds: dict[int, int] = {}  # chars covered by repeated m-grams bound those of every longer n-gram
        for n, limit in dup:
            bound = min((chars for m, chars in bounds.items() if m <= n), default=None)
            if bound is not None and bound / total <= limit:
                continue
            bounds[n] = doc.duplicated_ngram_chars(n)
            if bounds[n] / total > limit:
                return f"dup_{n}_gram"
        return None

    return check


def gopher_quality(doc: Features) -> str | None:
    """Gopher quality heuristics (Rae et al. 2021, appendix A)."""
    words = doc.words
    if not 50 <= len(words) <= 100_000:
        return "gopher_word_count"
    mean = sum(map(len, words)) / len(words)
    if not 3 <= mean <= 10:
        return "gopher_mean_word_length"
    if (doc.text.count("#") + doc.text.count("...") + doc.text.count("…")) / len(words) > 0.1:
        return "gopher_symbol_ratio"
    lines = doc.lines
    if lines and sum(line.lstrip().startswith(BULLETS) for line in lines) / len(lines) > 0.9:
        return "gopher_bullet_lines"
    if lines and sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > 0.3:
        return "gopher_ellipsis_lines"
    if sum(any(c.isalpha() for c in w) for w in words) / len(words) < 0.8:
        return "gopher_alpha_words"
    if len(STOP_WORDS.intersection(w.lower() for w in words)) < 2:
        return "gopher_stop_words"
    return None


def fineweb_quality(doc: Features) -> str | None:
    """FineWeb quality heuristics (Penedo et al. 2024)."""
    lines = doc.lines
    if not lines or not doc.words:
        return "fineweb_empty"
    if sum(line.rstrip().endswith(TERMINAL) for line in lines) / len(lines) < 0.12:
        return "fineweb_line_punctuation"
    if sum(len(line.strip()) <= 30 for line in lines) / len(lines) > 0.67:
        return "fineweb_short_lines"
    _, chars = _duplicates(lines)
    if chars / max(1, len(doc.text.replace("\n", ""))) > 0.01:
        return "fineweb_duplicated_line_chars"
    if doc.text.count("\n") / len(doc.words) > 0.3:
        return "fineweb_newline_ratio"
    return None


_SENTENCE_END = re.compile(r"[.!?](\s|$)")


def c4_rules(doc: Features) -> str | None:
    """C4-style document rules (Raffel et al. 2020), applied whole-document (the text is not rewritten)."""
    lowered = doc.text.lower()
    if "lorem ipsum" in lowered:
        return "c4_lorem_ipsum"
    if "{" in doc.text:
        return "c4_curly_bracket"
    if "javascript" in lowered and "enable" in lowered:
        return "c4_javascript"
    if len(_SENTENCE_END.findall(doc.text)) < 3:
        return "c4_too_few_sentences"
    return None


@dataclass
class FilterChain:
    """The enabled filters, in order; the first reason wins."""

    checks: list[Callable[[Features], str | None]] = field(default_factory=list)

    @classmethod
    def from_spec(cls, cfg: Filters) -> FilterChain:
        checks: list[Callable[[Features], str | None]] = []
        if cfg.min_lines > 0:
            checks.append(min_lines(cfg.min_lines))
        if cfg.repetition.enabled:
            checks.append(gopher_repetition(cfg.repetition))
        if cfg.gopher_quality:
            checks.append(gopher_quality)
        if cfg.fineweb_quality:
            checks.append(fineweb_quality)
        if cfg.c4:
            checks.append(c4_rules)
        return cls(checks)

    def reason(self, text: str) -> str | None:
        doc = Features(text)
        for check in self.checks:
            reason = check(doc)
            if reason is not None:
                return reason
        return None

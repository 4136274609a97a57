"""The per-word loop of preprocessing: words as `str.split()` finds them, their hashes, the Gopher n-gram statistics
and MinHash signatures.

Two implementations give the same values bit for bit: `_words.c` (built at install when a C compiler is there; the
worker image has one) and the numpy twin here, used when the extension is missing or `CPT_NATIVE_WORDS=0`. The
numpy twin is also the oracle of the tests. A worker says which one it uses (`IMPLEMENTATION`), so a slow fallback
is never silent.

Word hash: each code point c at position j of the word becomes v_j = mix(j << 21 | c) (SplitMix64's finalizer);
h = sum_j v_j * Q^j (mod 2^64), and the hash is mix(h + length * LEN_MIX). Mixing each code point with its
position keeps the polynomial from colliding on Thue-Morse words, as a plain polynomial modulo 2^64 does. Only
equality of hashes matters to the filters; MinHash's permutations need them well mixed.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

# Recorded by each worker: MinHash signatures are comparable only between workers that hash words alike.
WORD_HASH = "position-mixed code-point polynomial, SplitMix64 (2026-12)"
OLDER_WORD_HASH = "not recorded (an older version)"
_Q = 0x9E3779B97F4A7C15
_LEN_MIX = np.uint64(0xD6E8FEB86659FD93)
# str.split()'s spaces besides those in ASCII (Py_UNICODE_ISSPACE): mapped to " " before the vectorised split
_OTHER_SPACE = re.compile("[\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_ASCII_SPACE = np.zeros(128, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 32]] = True


def _native() -> tuple[Any, str]:
    """The C extension and what it is; None when it is off, not built, or built from another word hash (a stale
    in-place build of an editable install: `pip install -e .` rebuilds it)."""
    if os.environ.get("CPT_NATIVE_WORDS", "1") == "0":
        return None, "numpy (CPT_NATIVE_WORDS=0)"
    try:
        from cpt_pipeline.preprocess import _words
    except ImportError:
        return None, "numpy (the C extension is not built)"
    if getattr(_words, "WORD_HASH", None) != WORD_HASH:
        return None, f"numpy (the C extension was built for another word hash: {getattr(_words, 'WORD_HASH', None)})"
    return _words, "native (C)"


NATIVE, IMPLEMENTATION = _native()


class _Powers:
    """Q^i and Q^-i (mod 2^64) for i < size; tables up to CACHED long are kept for the next documents."""

    CACHED = 1 << 20

    def __init__(self) -> None:
        self.up = np.ones(1, dtype=np.uint64)
        self.down = np.ones(1, dtype=np.uint64)

    def tables(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size > self.CACHED:  # a rare huge document: not kept
            return _power_tables(size)
        if size > len(self.up):
            self.up, self.down = _power_tables(min(max(size, 2 * len(self.up)), self.CACHED))
        return self.up, self.down


def _power_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Q^i and Q^-i for i < size (numpy's products wrap modulo 2^64)."""
    tables = np.full((2, size), [[_Q], [pow(_Q, -1, 1 << 64)]], dtype=np.uint64)
    tables[:, 0] = 1
    up, down = np.cumprod(tables, axis=1, dtype=np.uint64)
    return up, down


_POWERS = _Powers()


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def numpy_words(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The numpy twin of `_words.words`: (uint64 hashes, int64 lengths) of text.split()'s words."""
    points = np.frombuffer(_OTHER_SPACE.sub(" ", text).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    if not len(points):
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    space = np.zeros(len(points) + 2, dtype=bool)
    space[[0, -1]] = True
    small = points < 128
    space[1:-1][small] = _ASCII_SPACE[points[small]]
    edges = np.flatnonzero(space[1:] != space[:-1])  # alternately a word's start and its end
    starts, ends = edges[0::2], edges[1::2]
    word_start = np.zeros(len(points), dtype=np.int64)
    word_start[starts] = starts
    position = np.arange(len(points), dtype=np.int64) - np.maximum.accumulate(word_start)  # within its word
    values = _mix((position.astype(np.uint64) << np.uint64(21)) | points.astype(np.uint64))
    up, down = _POWERS.tables(len(points) + 1)
    prefix = np.zeros(len(points) + 1, dtype=np.uint64)
    np.cumsum(values * up[: len(points)], out=prefix[1:])
    lengths = (ends - starts).astype(np.int64)
    sums = (prefix[ends] - prefix[starts]) * down[starts]
    return _mix(sums + lengths.astype(np.uint64) * _LEN_MIX), lengths


def words(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes, int64 lengths in code points) of text.split()'s words."""
    if NATIVE is None:
        return numpy_words(text)
    hashes, lengths = NATIVE.words(text)
    return np.frombuffer(hashes, dtype=np.uint64), np.frombuffer(lengths, dtype=np.int64)

"""The per-word loop of preprocessing: words as `str.split()` finds them, their hashes, the Gopher n-gram statistics
and MinHash signatures.

Two implementations give the same values bit for bit: `_words.c` (built at install when a C compiler is there; the
worker image has one) and the numpy twin here, used when the extension is missing or `CPT_NATIVE_WORDS=0`. The
numpy twin is also the oracle of the tests. A worker says which one it uses (`IMPLEMENTATION`), so a slow fallback
is never silent.

Word hash: h = sum_j c_j * Q^j over the word's code points (mod 2^64), then the SplitMix64 finalizer of
h + length * LEN_MIX. Only equality of hashes matters to the filters; MinHash's permutations need them well mixed.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

# Recorded by each worker: MinHash signatures are comparable only between workers that hash words alike.
WORD_HASH = "code-point polynomial, SplitMix64 (2026-12)"
OLDER_WORD_HASH = "xxh3-64 of UTF-8 words (before 2026-12)"
_Q = 0x9E3779B97F4A7C15
_LEN_MIX = np.uint64(0xD6E8FEB86659FD93)
# str.split()'s spaces besides those in ASCII (Py_UNICODE_ISSPACE): mapped to " " before the vectorised split
_OTHER_SPACE = re.compile("[\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_ASCII_SPACE = np.zeros(128, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 32]] = True


def _native() -> Any:
    if os.environ.get("CPT_NATIVE_WORDS", "1") == "0":
        return None
    try:
        from cpt_pipeline.preprocess import _words
    except ImportError:
        return None
    return _words


NATIVE = _native()
IMPLEMENTATION = "native (C)" if NATIVE is not None else "numpy (the C extension is not built)"


class _Powers:
    """Q^i and Q^-i (mod 2^64) for i < len, grown on demand."""

    def __init__(self) -> None:
        self.up = np.ones(1, dtype=np.uint64)
        self.down = np.ones(1, dtype=np.uint64)

    def ensure(self, size: int) -> None:
        if size <= len(self.up):
            return
        size = max(size, 2 * len(self.up))
        self.up = _power_table(_Q, size)
        self.down = _power_table(pow(_Q, -1, 1 << 64), size)


def _power_table(base: int, size: int) -> np.ndarray:
    table = np.full(size, base, dtype=np.uint64)
    table[0] = 1
    return np.cumprod(table, dtype=np.uint64)  # wraps modulo 2^64


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
    _POWERS.ensure(len(points) + 1)
    prefix = np.zeros(len(points) + 1, dtype=np.uint64)
    np.cumsum(points.astype(np.uint64) * _POWERS.up[: len(points)], out=prefix[1:])
    lengths = (ends - starts).astype(np.int64)
    sums = (prefix[ends] - prefix[starts]) * _POWERS.down[starts]
    return _mix(sums + lengths.astype(np.uint64) * _LEN_MIX), lengths


def words(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes, int64 lengths in code points) of text.split()'s words."""
    if NATIVE is None:
        return numpy_words(text)
    hashes, lengths = NATIVE.words(text)
    return np.frombuffer(hashes, dtype=np.uint64), np.frombuffer(lengths, dtype=np.int64)

"""Word n-gram hashes, vectorised: shared by the repetition filters and decontamination."""

from __future__ import annotations

import numpy as np

PRIME = np.uint64(1099511628211)  # filters.py extends n-grams by one word with it


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """One order-sensitive uint64 hash per word n-gram (position i covers words i .. i+n-1)."""
    count = len(word_hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    out = word_hashes[:count].astype(np.uint64, copy=True)
    for k in range(1, n):
        out *= PRIME
        out ^= word_hashes[k : k + count]
    return out

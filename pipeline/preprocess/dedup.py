"""Deduplication, global across workers: hashes in the workers, the partitioned reduce decides (partitions.py).

Workers compute an exact hash (xxh3-64 of the stripped text) and, when enabled, a MinHash signature per
document. The reduce visits documents in a fixed global order, (work unit, position in unit), which does
not depend on the number of workers, and keeps the first occurrence. `first_occurrences` and
`MinHasher.near_duplicates` are the single-process reference the partitioned reduce is tested against.
"""

from __future__ import annotations

import numpy as np
import xxhash

from cpt.api.data import MinHash
from cpt_pipeline.preprocess import words as word_loop


def exact_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.strip().encode("utf-8", "surrogatepass"))


def first_occurrences(hashes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Boolean mask over documents: True for the first document (in `order`) with each hash."""
    keep = np.zeros(len(hashes), dtype=bool)
    if len(hashes) == 0:
        return keep
    _, first = np.unique(hashes[order], return_index=True)
    keep[order[first]] = True
    return keep


_SHINGLE_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: word hashes -> shingle hash, sum of h[i+k] * MIX**k


class MinHasher:
    """MinHash signatures of word shingles, vectorised with numpy; near-duplicate removal with LSH (datasketch).

    Words are the lower-cased text's words as str.split() finds them (at any Unicode space), each hashed as
    `words.py` hashes words; a shingle's hash combines its `ngram` word hashes (a polynomial, mod 2^64).
    Permutation j maps a shingle hash h to (a_j * h + b_j) mod 2^64 >> 32 (multiply-shift; a_j odd, from a fixed
    seed), so the signature's values are 32-bit like datasketch's. The C extension computes a signature in one
    pass over the text; the numpy twin (without it) gives the same values."""

    def __init__(self, cfg: MinHash) -> None:
        self.cfg = cfg
        self.threshold = float(cfg.threshold)
        rng = np.random.Generator(np.random.PCG64(1))
        self._a = rng.integers(0, 2**63, cfg.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, cfg.num_perm, dtype=np.uint64)
        self._powers = np.array([pow(int(_SHINGLE_MIX), k, 1 << 64) for k in range(cfg.ngram)], dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """The shingle hashes of text (one for a text shorter than `ngram` words, none for an empty one)."""
        hashes, _ = word_loop.words(text.lower())
        n = min(self.cfg.ngram, len(hashes))
        width = len(hashes) - n + 1 if n else 0
        combined = np.zeros(max(width, 0), dtype=np.uint64)
        for k in range(n):
            combined += hashes[k : k + width] * self._powers[k]
        return combined

    def signature(self, text: str) -> np.ndarray:
        """num_perm minimum permuted shingle hashes (all 2^32 - 1 for a text without words). The shift is
        monotone, so it is applied to the minima; repeated shingles do not change a minimum."""
        if word_loop.NATIVE is not None:
            minima = word_loop.NATIVE.signature(text.lower(), self.cfg.ngram, self._a, self._b, self._powers)
            return np.frombuffer(minima, dtype=np.uint64)
        shingles = self.shingles(text)
        if not len(shingles):
            return np.full(self.cfg.num_perm, 2**32 - 1, dtype=np.uint64)
        permuted = self._a[:, None] * shingles[None, :]
        permuted += self._b[:, None]
        return permuted.min(axis=1) >> np.uint64(32)

    def near_duplicates(self, signatures: np.ndarray, order: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Mask of documents (among those still kept) whose signature matches an earlier kept one."""
        from datasketch import LeanMinHash, MinHashLSH
        from datasketch import MinHash as DsMinHash

        scheme = DsMinHash(num_perm=self.cfg.num_perm, seed=1).scheme
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.cfg.num_perm)
        duplicate = np.zeros(len(signatures), dtype=bool)
        for doc in order:
            if not keep[doc]:
                continue
            sketch = LeanMinHash(seed=1, hashvalues=signatures[doc], scheme=scheme)
            if lsh.query(sketch):
                duplicate[doc] = True
            else:
                lsh.insert(int(doc), sketch, check_duplication=False)
        return duplicate

"""Deduplication, global across workers: signatures in the workers, one reduce step that decides.

Workers store an exact hash (xxh3-64 of the stripped text) and, when enabled, a MinHash signature per
document. The reduce step visits documents in a fixed global order, (work unit, position in unit),
which does not depend on the number of workers, and keeps the first occurrence.
"""

from __future__ import annotations

import numpy as np
import xxhash

from cpt.api.data import MinHash


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


class MinHasher:
    """MinHash signatures of word shingles (datasketch), and near-duplicate removal with LSH."""

    def __init__(self, cfg: MinHash) -> None:
        from datasketch import MinHash as DsMinHash

        self.cfg = cfg
        self.threshold = float(cfg.threshold)
        self._seed = DsMinHash(num_perm=cfg.num_perm, seed=1)

    def signature(self, text: str) -> np.ndarray:
        words = text.lower().split()
        n = self.cfg.ngram
        shingles = {" ".join(words[i : i + n]).encode() for i in range(max(1, len(words) - n + 1))}
        sketch = self._seed.copy()
        sketch.clear()
        sketch.update_batch(list(shingles))
        return sketch.hashvalues.astype(np.uint64)

    def near_duplicates(self, signatures: np.ndarray, order: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Mask of documents (among those still kept) whose signature matches an earlier kept one."""
        from datasketch import LeanMinHash, MinHashLSH

        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.cfg.num_perm)
        duplicate = np.zeros(len(signatures), dtype=bool)
        for doc in order:
            if not keep[doc]:
                continue
            sketch = LeanMinHash(seed=1, hashvalues=signatures[doc], scheme=self._seed.scheme)
            if lsh.query(sketch):
                duplicate[doc] = True
            else:
                lsh.insert(int(doc), sketch, check_duplication=False)
        return duplicate

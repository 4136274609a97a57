"""The partitioned dedup reduce: workers bucket their hashes, one reduce index per bucket decides, the packer applies.

Each worker writes, per partition p, `bucket-PPPPP.npz`: the exact hash of each of its documents whose
hash falls in p (hash mod P), and each MinHash band key (xxh3-128 of the band's values, seeded with the
band index) that falls in p, with the document's place in the global order (work unit, position) and its
index in the worker. Reduce index p reads bucket p of every worker, never the rest:

- exact: among the documents sharing a hash, all but the first in the global order are removed;
- MinHash: band keys shared by two or more documents form collision groups; they are written out with
  their members. A group can hold documents of any partition's exact decisions, and one document's
  bands live in several partitions, so the partition cannot decide near duplicates on its own.

The packer (`keep_masks`) applies every partition's exact removals, then visits the documents of the
collision groups in the global order: a document still kept is a near duplicate when one of its groups
already holds a kept document, else it marks its groups. That is exactly what one process with a
MinHashLSH index does (insert each kept document, drop the ones whose query finds a candidate), so the
kept documents are the same for any number of partitions. Memory: a partition holds 1/P of the keys; the
packer holds one flag per document and the members of collision groups (documents that have a near copy).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import xxhash

from cpt.api.data import MinHash

_LOW = (1 << 64) - 1


def band_ranges(cfg: MinHash) -> list[tuple[int, int]]:
    """The (start, end) of each LSH band, as datasketch's MinHashLSH picks them for the threshold."""
    from datasketch import MinHashLSH

    return list(MinHashLSH(threshold=float(cfg.threshold), num_perm=cfg.num_perm).hashranges)


def band_keys(signature: np.ndarray, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(high, low) 64-bit halves of each band's key: equal keys <=> equal band values (up to 2^-128)."""
    values = np.ascontiguousarray(signature, dtype=np.uint64)
    keys = []
    for band, (start, end) in enumerate(ranges):
        key = xxhash.xxh3_128_intdigest(values[start:end].tobytes(), seed=band)
        keys.append((key >> 64, key & _LOW))
    return keys


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def bucket_files(
    exact: np.ndarray | None, bands: np.ndarray | None, units: np.ndarray, positions: np.ndarray, partitions: int
) -> list[bytes]:
    """One worker's buckets, one npz per partition. exact: (n,) uint64 or None; bands: (n, b, 2) uint64 or None."""
    local = np.arange(len(units), dtype=np.int64)
    files = []
    if exact is not None:
        exact_rows = _split_by(exact % np.uint64(partitions), partitions)
    if bands is not None:
        flat = bands.reshape(-1, 2)
        band_doc = np.repeat(local, bands.shape[1])
        band_rows = _split_by(flat[:, 1] % np.uint64(partitions), partitions)
    for p in range(partitions):
        arrays: dict[str, np.ndarray] = {}
        if exact is not None:
            arrays.update(exact=exact[exact_rows[p]], exact_doc=local[exact_rows[p]])
        if bands is not None:
            arrays.update(band_key=flat[band_rows[p]], band_doc=band_doc[band_rows[p]])
        docs = np.unique(np.concatenate([arrays.get("exact_doc", local[:0]), arrays.get("band_doc", local[:0])]))
        arrays.update(docs=docs, units=units[docs], positions=positions[docs])
        files.append(_npz(**arrays))
    return files


def _split_by(part: np.ndarray, partitions: int) -> list[np.ndarray]:
    """The rows of each partition (part: each row's partition), in their order: one stable sort, not P scans."""
    order = np.argsort(part, kind="stable")
    return np.split(order, np.searchsorted(part[order], np.arange(1, partitions, dtype=part.dtype)))


@dataclass
class _Rows:
    """Bucket rows of every worker, each with its document's global place: (unit, position, rank, local)."""

    unit: np.ndarray
    position: np.ndarray
    rank: np.ndarray
    local: np.ndarray


def _rows(buckets: list[dict[str, np.ndarray]], key: str, doc: str) -> tuple[np.ndarray, _Rows]:
    values, unit, position, rank, local = [], [], [], [], []
    for r, bucket in enumerate(buckets):
        if key not in bucket:
            continue
        where = np.searchsorted(bucket["docs"], bucket[doc])
        values.append(bucket[key])
        unit.append(bucket["units"][where])
        position.append(bucket["positions"][where])
        rank.append(np.full(len(where), r, dtype=np.int64))
        local.append(bucket[doc])
    if not values:
        empty = np.empty(0, dtype=np.int64)
        return np.empty(0, dtype=np.uint64), _Rows(empty, empty, empty, empty)
    return np.concatenate(values), _Rows(*(np.concatenate(c) for c in (unit, position, rank, local)))


def decide_partition(buckets: list[dict[str, np.ndarray]], inputs: str | None = None) -> bytes:
    """Reduce index p: from bucket p of every worker (in rank order), the exact duplicates to remove
    (rank, local) and the MinHash collision groups (key, members with their global place); as npz, with
    `inputs` (the digest of the worker outputs they were made from) when given."""
    hashes, ex = _rows(buckets, "exact", "exact_doc")
    order = np.lexsort((ex.position, ex.unit))
    first = np.zeros(len(hashes), dtype=bool)
    if len(hashes):
        _, index = np.unique(hashes[order], return_index=True)
        first[order[index]] = True
    keys, band = _rows(buckets, "band_key", "band_doc")
    keys = keys.reshape(-1, 2)
    order = np.lexsort((band.position, band.unit, keys[:, 1], keys[:, 0]))
    sorted_keys = keys[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(order)))
    shared = np.repeat(sizes >= 2, sizes)
    members = order[shared]
    return _npz(
        exact_rank=ex.rank[~first],
        exact_local=ex.local[~first],
        group_key=keys[members],
        group_unit=band.unit[members],
        group_position=band.position[members],
        group_rank=band.rank[members],
        group_local=band.local[members],
        **({"inputs": np.array(inputs)} if inputs is not None else {}),
    )


def keep_masks(decisions: list[dict[str, np.ndarray]], sizes: list[int]) -> tuple[list[np.ndarray], int, int]:
    """Each worker's keep mask, after every partition's decisions; and the exact and near duplicates removed."""
    keep = [np.ones(n, dtype=bool) for n in sizes]
    exact = 0
    for decision in decisions:
        for rank in range(len(sizes)):
            removed = decision["exact_local"][decision["exact_rank"] == rank]
            keep[rank][removed] = False
            exact += len(removed)
    cols = {k: np.concatenate([d[k] for d in decisions]) for k in decisions[0] if k.startswith("group_")}
    if not len(cols["group_unit"]):
        return keep, exact, 0
    _, group = np.unique(cols["group_key"], axis=0, return_inverse=True)
    group = group.ravel()
    order = np.lexsort((group, cols["group_position"], cols["group_unit"]))
    rank, local, group = cols["group_rank"][order], cols["group_local"][order], group[order]
    doc = rank.astype(np.int64) * (max(sizes) + 1) + local
    starts = np.flatnonzero(np.append(True, doc[1:] != doc[:-1]))
    ends = np.append(starts[1:], len(doc))
    held = np.zeros(int(group.max()) + 1, dtype=bool)  # the group holds a kept document
    near = 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        r, i = int(rank[start]), int(local[start])
        if not keep[r][i]:
            continue
        groups = group[start:end]
        if held[groups].any():
            keep[r][i] = False
            near += 1
        else:
            held[groups] = True
    return keep, exact, near

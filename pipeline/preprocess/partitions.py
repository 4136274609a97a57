"""The partitioned dedup reduce: workers bucket their hashes, one reduce index per bucket decides, the packer applies.

Each worker writes, per partition p, `bucket-PPPPP.npz`: the exact hash of each of its documents whose
hash falls in p (hash mod P), and each MinHash band key (xxh3-128 of the band's values, seeded with the
band index) that falls in p, with the document's place in the global order (work unit, position) and its
index in the worker. Reduce index p reads bucket p of every worker, never the rest:

- exact: among the documents sharing a hash, all but the first in the global order are removed;
- MinHash: band keys shared by two or more documents form collision groups; they are written out as
  group sizes and members (int64 global_ids, no key). A later exact copy of a member (same exact hash: the
  bucket carries each document's) is left out, since it is removed anyway.
  A group can hold documents of any partition's exact decisions, and one document's
  bands live in several partitions, so the partition cannot decide near duplicates on its own.

The packer (`keep_masks`) applies every partition's exact removals, then visits the documents of the
collision groups in the global order: a document still kept is a near duplicate when one of its groups
already holds a kept document, else it marks its groups. That is exactly what one process with a
MinHashLSH index does (insert each kept document, drop the ones whose query finds a candidate), so the
kept documents are the same for any number of partitions. Memory: a partition holds 1/P of the keys; the
packer holds one flag and two int64s per document and 8 B per member of a collision group (near copies).
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
    bands, rows = lsh_shape(float(cfg.threshold), cfg.num_perm)
    if bands < 2:  # as MinHashLSH, which the single-process reference uses, refuses it
        raise ValueError(
            f"spec.data.dedup.minhash: threshold {cfg.threshold} with numPerm {cfg.num_perm} makes one LSH band of "
            f"{rows} rows, and LSH needs at least 2: lower the threshold or raise numPerm"
        )
    return [(band * rows, (band + 1) * rows) for band in range(bands)]


def lsh_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with the least false positive plus false negative probability mass, equally weighted: the
    choice of datasketch's MinHashLSH, without importing it (it imports scipy, 0.6 s in every worker). The
    integrands, 1 - (1 - s^r)^b and (1 - s^r)^b, are polynomials of degree b*r <= num_perm, so Gauss-Legendre
    with num_perm/2 + 1 nodes integrates them exactly; of equal errors the first (b, then r) wins, as there."""
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def integral(low: float, high: float, rows: np.ndarray, bands: int, collide: bool) -> np.ndarray:
        s = (high - low) / 2 * nodes + (high + low) / 2
        missed = (1 - s[None, :] ** rows[:, None]) ** bands
        return (high - low) / 2 * ((1 - missed if collide else missed) * weights).sum(axis=1)

    best, shape = float("inf"), (0, 0)
    for bands in range(1, num_perm + 1):
        rows = np.arange(1, num_perm // bands + 1, dtype=np.float64)
        error = 0.5 * integral(0.0, threshold, rows, bands, True) + 0.5 * integral(threshold, 1.0, rows, bands, False)
        first = int(np.argmin(error))
        if error[first] < best:
            best, shape = float(error[first]), (bands, first + 1)
    return shape


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
        if exact is not None:
            arrays.update(hashes=exact[docs])  # so the partition can leave exact copies out of the band keys
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
    hash: np.ndarray | None  # the document's exact hash (None when exact dedup is off)


def _rows(buckets: list[dict[str, np.ndarray]], key: str, doc: str) -> tuple[np.ndarray, _Rows]:
    values, unit, position, rank, local, hashes = [], [], [], [], [], []
    for r, bucket in enumerate(buckets):
        if key not in bucket:
            continue
        where = np.searchsorted(bucket["docs"], bucket[doc])
        values.append(bucket[key])
        unit.append(bucket["units"][where])
        position.append(bucket["positions"][where])
        rank.append(np.full(len(where), r, dtype=np.int64))
        local.append(bucket[doc])
        if "hashes" in bucket:
            hashes.append(bucket["hashes"][where])
    if not values:
        empty = np.empty(0, dtype=np.int64)
        return np.empty(0, dtype=np.uint64), _Rows(empty, empty, empty, empty, None)
    columns = (np.concatenate(c) for c in (unit, position, rank, local))
    return np.concatenate(values), _Rows(*columns, np.concatenate(hashes) if len(hashes) == len(values) else None)


def global_ids(units: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """int64 ids in the global order (unit, position): unit * 2^32 + position."""
    if len(units) and (int(units.max()) >= 2**31 or int(positions.max()) >= 2**32):
        raise ValueError("dedup: more than 2^31 work units or 2^32 documents in one unit")
    return (units.astype(np.int64) << 32) | positions.astype(np.int64)


def _shared_band_keys(keys: np.ndarray, rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """The band keys two or more documents share, as (group sizes int32, member ids int64 in the global order,
    group by group). A later exact copy of a member (same exact hash) is left out: it is removed anyway."""
    ids = global_ids(rows.unit, rows.position)
    if rows.hash is not None:  # the first row of each (key, exact hash) in the global order
        order = np.lexsort((ids, rows.hash, keys[:, 1], keys[:, 0]))
        k, h = keys[order], rows.hash[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = np.any(k[1:] != k[:-1], axis=1) | (h[1:] != h[:-1])
        kept = order[first]
        keys, ids = keys[kept], ids[kept]
    order = np.lexsort((ids, keys[:, 1], keys[:, 0]))
    sorted_keys = keys[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    sizes = np.diff(np.append(np.flatnonzero(new), len(order)))
    members = ids[order][np.repeat(sizes >= 2, sizes)]
    return sizes[sizes >= 2].astype(np.int32), members


def decide_partition(buckets: list[dict[str, np.ndarray]], inputs: str | None = None) -> bytes:
    """Reduce index p: from bucket p of every worker (in rank order), the exact duplicates to remove
    (rank, local) and the MinHash collision groups (sizes, members' global_ids); as npz, with `inputs` (the
    digest of the worker outputs they were made from) when given."""
    hashes, ex = _rows(buckets, "exact", "exact_doc")
    order = np.lexsort((ex.position, ex.unit))
    first = np.zeros(len(hashes), dtype=bool)
    if len(hashes):
        _, index = np.unique(hashes[order], return_index=True)
        first[order[index]] = True
    keys, band = _rows(buckets, "band_key", "band_doc")
    sizes, members = _shared_band_keys(keys.reshape(-1, 2), band)
    return _npz(
        exact_rank=ex.rank[~first],
        exact_local=ex.local[~first],
        group_size=sizes,
        group_member=members,
        **({"inputs": np.array(inputs)} if inputs is not None else {}),
    )


def keep_masks(
    decisions: list[dict[str, np.ndarray]], sizes: list[int], ids: np.ndarray
) -> tuple[list[np.ndarray], int, int]:
    """Each worker's keep mask, after every partition's decisions; and the exact and near duplicates removed.
    ids: global_ids of every document, worker after worker. Holds one flag per document, the sort of `ids`, and
    the members of the shared band keys (8 B each, 12 B while walked), never a band key."""
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    keep = np.ones(int(offsets[-1]), dtype=bool)
    exact = 0
    for decision in decisions:
        keep[offsets[decision["exact_rank"]] + decision["exact_local"]] = False
        exact += len(decision["exact_local"])
    members = np.concatenate([d["group_member"] for d in decisions])
    if not len(members):
        return np.split(keep, offsets[1:-1]), exact, 0
    group_sizes = np.concatenate([d["group_size"] for d in decisions])
    group = np.repeat(np.arange(len(group_sizes), dtype=np.int32), group_sizes)
    order = np.lexsort((group, members))  # document after document in the global order
    members, group = members[order], group[order]
    del order
    sorter = np.argsort(ids, kind="stable")
    doc = sorter[np.searchsorted(ids, members, sorter=sorter)]
    del sorter
    starts = np.flatnonzero(np.append(True, members[1:] != members[:-1]))
    ends = np.append(starts[1:], len(members))
    held = np.zeros(len(group_sizes), dtype=bool)  # the group holds a kept document
    near = 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        d = int(doc[start])
        if not keep[d]:
            continue
        groups = group[start:end]
        if held[groups].any():
            keep[d] = False
            near += 1
        else:
            held[groups] = True
    return np.split(keep, offsets[1:-1]), exact, near

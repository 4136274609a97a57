"""The partitioned dedup reduce decides exactly what one process with every hash and signature decides."""

from __future__ import annotations

import io
import json
import random
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cpt.api import ContinuedPretrainSpec
from cpt.api.data import MinHash
from cpt_pipeline.preprocess.dedup import MinHasher, exact_hash, first_occurrences
from cpt_pipeline.preprocess.partitions import (
    band_keys,
    band_ranges,
    bucket_files,
    decide_partition,
    keep_masks,
    lsh_shape,
)
from cpt_pipeline.preprocess.runner import prepare, reduce
from cpt_pipeline.storage import Storage
from tests.pipeline.preprocess.helpers import document, make_spec, write_jsonl

CFG = MinHash(enabled=True, threshold="0.7")


def planted(texts: list[str], seed: int = 0) -> list[str]:
    """texts, then 15% of them again verbatim, 15% with one word in 40 changed (near duplicates), and a near
    copy of a near copy (a chain: it is compared with kept documents only), shuffled deterministically."""
    rng = random.Random(seed)
    exact = rng.sample(texts, len(texts) * 15 // 100)
    near = []
    for text in rng.sample(texts, len(texts) * 15 // 100):
        words = text.split(" ")
        near.append(" ".join(w + "s" if i % 40 == 7 else w for i, w in enumerate(words)))
    chain = [" ".join(w + "x" if i % 40 == 21 else w for i, w in enumerate(n.split(" "))) for n in near[:5]]
    rows = texts + exact + near + chain
    rng.shuffle(rows)
    return rows


def single_process(texts: list[str], signatures: np.ndarray) -> np.ndarray:
    """The reference: first occurrences of each exact hash, then MinHashLSH over the kept ones (dedup.py)."""
    order = np.arange(len(texts))
    keep = first_occurrences(np.array([exact_hash(t) for t in texts], dtype=np.uint64), order)
    return keep & ~MinHasher(CFG).near_duplicates(signatures, order, keep)


def load(data: bytes) -> dict[str, np.ndarray]:
    return dict(np.load(io.BytesIO(data)))


def decided(texts: list[str], signatures: np.ndarray, workers: int, partitions: int) -> list[bytes]:
    """Document i is unit i, read by worker i mod workers; each worker buckets, each partition decides."""
    ranges = band_ranges(CFG)
    buckets = []
    for rank in range(workers):
        mine = np.arange(rank, len(texts), workers)
        exact = np.array([exact_hash(texts[i]) for i in mine], dtype=np.uint64)
        bands = np.array([band_keys(signatures[i], ranges) for i in mine], dtype=np.uint64)
        units = mine.astype(np.int64)
        buckets.append(bucket_files(exact, bands, units, np.zeros_like(units), partitions))
    return [decide_partition([load(b[p]) for b in buckets]) for p in range(partitions)]


def packer_keep(decisions: list[bytes], documents: int, workers: int) -> list[np.ndarray]:
    """The packer's dedup: every partition's decisions loaded, then keep_masks."""
    sizes = [len(range(rank, documents, workers)) for rank in range(workers)]
    ids = np.concatenate([np.arange(rank, documents, workers, dtype=np.int64) << 32 for rank in range(workers)])
    keep, _, _ = keep_masks([load(d) for d in decisions], sizes, ids)
    return keep


def partitioned(texts: list[str], signatures: np.ndarray, workers: int, partitions: int) -> np.ndarray:
    keep = packer_keep(decided(texts, signatures, workers, partitions), len(texts), workers)
    result = np.zeros(len(texts), dtype=bool)
    for rank in range(workers):
        result[rank::workers] = keep[rank]
    return result


@pytest.mark.parametrize("corpus", ["generated", "shared"])
def test_partitions_keep_what_one_process_keeps(corpus: str, shared_data: Path) -> None:
    if corpus == "shared":
        lines = (shared_data / "corpora" / "openstax_stem.jsonl").open()
        texts = [json.loads(line)["text"][:3000] for line in lines]
    else:
        texts = [document(i, lines=10) for i in range(300)]
    rows = planted(texts)
    hasher = MinHasher(CFG)
    signatures = np.stack([hasher.signature(t) for t in rows])
    reference = single_process(rows, signatures)
    assert 0.6 * len(rows) < reference.sum() < 0.85 * len(rows)  # the planted copies are found
    for workers, partitions in ((1, 1), (2, 3), (3, 7)):
        assert partitioned(rows, signatures, workers, partitions).tolist() == reference.tolist()


def corpus(tmp_path: Path) -> Path:
    rows = planted([document(i, lines=8) for i in range(120)], seed=1)
    for part in range(3):
        write_jsonl(tmp_path / "in" / f"{part}.jsonl", rows[part::3])
    return tmp_path / "in"


def partitioned_spec(tmp_path: Path, name: str, partitions: int, world: int = 2) -> ContinuedPretrainSpec:
    return make_spec(
        tmp_path / name,
        [{"name": "d", "uri": str(tmp_path / "in")}],
        dedup={"minhash": {"enabled": True, "threshold": "0.7"}},
        preprocessing={"limitToBudget": False, "workers": world, "dedupPartitions": partitions},
    )


def packed(storage: Storage) -> tuple[dict[str, int], list[bytes]]:
    """The set's counts and the bytes of its shards and tail."""
    manifest = storage.read_json("data", "domain", "manifest.json")
    base = storage.sub("data", "domain", "d")
    files = [base.read_bytes(s["path"]) for s in manifest["sources"]["d"]["shards"]] + [base.read_bytes("tail.bin")]
    return manifest["stats"]["counts"], files


def run(tmp_path: Path, name: str, partitions: int, world: int = 2) -> Storage:
    spec = partitioned_spec(tmp_path, name, partitions, world)
    storage = Storage.from_spec(spec.storage)
    for rank in range(world):
        prepare(spec, storage, rank, world)
    for index in range(partitions):  # the Indexed Job: the last index to finish packs
        assert not storage.exists("data", "domain", "manifest.json")
        reduce(spec, storage, world, shard_rows=5, partition=index)
    return storage


def test_one_and_three_partitions_pack_the_same_shards(tmp_path: Path) -> None:
    corpus(tmp_path)
    outputs = []
    for partitions in (1, 3):
        outputs.append(packed(run(tmp_path, f"p{partitions}", partitions)))
    assert outputs[0][0]["near_duplicates"] > 0 and outputs[0][0]["duplicates"] > 0
    assert outputs[0] == outputs[1]


def test_a_worker_rerun_over_changed_files_is_decided_again(tmp_path: Path) -> None:
    """Partitions decided from a worker's old outputs are not reused once that worker ran again."""
    corpus(tmp_path)
    spec = partitioned_spec(tmp_path, "rerun", 3)
    storage = Storage.from_spec(spec.storage)
    for rank in range(2):
        prepare(spec, storage, rank, 2)
    for index in (0, 1):  # two partitions decided, the third not yet
        reduce(spec, storage, 2, shard_rows=5, partition=index)
    source = tmp_path / "in" / "0.jsonl"  # worker 0's first unit: half of its documents, changed
    lines = source.read_text().splitlines()[::2]
    source.write_text("".join(line.replace(").", ")!") + "\n" for line in lines))
    shutil.rmtree(storage.path("work", "preprocess", "domain", "rank-00000"))
    prepare(spec, storage, 0, 2)
    reduce(spec, storage, 2, shard_rows=5, partition=2)  # the last index packs
    assert packed(storage) == packed(run(tmp_path, "fresh", 3))


def test_workers_finished_under_an_older_version_are_prepared_again_by_dedup_index_0(tmp_path: Path) -> None:
    """An operator upgrade mid-preprocessing: a worker's done.json without `partitions` and no buckets. Index 1
    leaves it to index 0, which prepares that worker again, decides every partition and packs."""
    corpus(tmp_path)
    spec = partitioned_spec(tmp_path, "upgrade", 3)
    storage = Storage.from_spec(spec.storage)
    for rank in range(2):
        prepare(spec, storage, rank, 2)
    old = storage.sub("work", "preprocess", "domain", "rank-00001")
    done = old.read_json("done.json")
    del done["partitions"]
    old.write_json(done, "done.json")
    for p in range(3):
        old.remove(f"bucket-{p:05d}.npz")
    assert reduce(spec, storage, 2, shard_rows=5, partition=1) == {}
    assert not storage.exists("work", "preprocess", "domain", "dedup-of-3", "part-00001.npz")
    assert reduce(spec, storage, 2, shard_rows=5, partition=0)  # packed: the status summary
    assert packed(storage) == packed(run(tmp_path, "fresh", 3))


def test_one_partition_needs_less_memory_as_partitions_grow(tmp_path: Path) -> None:
    """Peak memory of reduce index 0's decision (numpy allocations are traced) falls with more partitions."""
    from cpt_pipeline.preprocess.runner import dedup_partition

    corpus(tmp_path)
    peaks = []
    for partitions in (1, 4):
        storage = run(tmp_path, f"m{partitions}", partitions)
        spec_storage = storage.sub("work", "preprocess", "domain")
        tracemalloc.start()
        dedup_partition(spec_storage, world_size=2, partition=0, partitions=partitions)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 0.6 * peaks[0], peaks


def test_signatures_estimate_the_jaccard_similarity_of_the_shingles() -> None:
    hasher = MinHasher(MinHash(enabled=True, num_perm=256))
    text = " ".join(document(i, lines=20) for i in range(3))
    for every in (10, 40):
        near = " ".join(w + "s" if i % every == 3 else w for i, w in enumerate(text.split(" ")))
        a, b = set(hasher.shingles(text).tolist()), set(hasher.shingles(near).tolist())
        exact = len(a & b) / len(a | b)
        estimate = float((hasher.signature(text) == hasher.signature(near)).mean())
        assert abs(estimate - exact) < 0.08, (every, exact, estimate)


def test_words_split_at_every_unicode_space_as_str_split_does() -> None:
    hasher = MinHasher(CFG)
    words = " ".join(document(i, lines=10) for i in range(2)).split()
    spaces = ["\u00a0", "\u3000", "\u2009", "\x1c", "\u2028", "\u0085"]
    joined = "".join(w + spaces[i % len(spaces)] for i, w in enumerate(words))
    assert hasher.shingles(joined).tolist() == hasher.shingles(" ".join(words)).tolist()
    near = "\u00a0".join(w + "s" if i % 40 == 7 else w for i, w in enumerate(words))  # a near copy, NBSP-joined
    original = "\u3000".join(words)
    assert (hasher.signature(original) == hasher.signature(near)).mean() > float(CFG.threshold)


def test_buckets_hold_each_partitions_rows_in_the_workers_order() -> None:
    """bucket_files (one sort) against the definition: partition p's rows are those whose hash mod P is p."""
    rng = np.random.default_rng(3)
    n, bands = 500, 9
    exact = rng.integers(0, 2**64, n, dtype=np.uint64)
    band = rng.integers(0, 2**64, (n, bands, 2), dtype=np.uint64)
    units, positions = rng.integers(0, 40, n), rng.integers(0, 1000, n)
    for partitions in (1, 7, 1000):  # 1000: most partitions empty
        files = [dict(np.load(io.BytesIO(f))) for f in bucket_files(exact, band, units, positions, partitions)]
        assert len(files) == partitions
        for p, got in enumerate(files):
            mine = np.flatnonzero(exact % np.uint64(partitions) == p)
            assert got["exact"].tolist() == exact[mine].tolist() and got["exact_doc"].tolist() == mine.tolist()
            flat = band.reshape(-1, 2)
            rows = np.flatnonzero(flat[:, 1] % np.uint64(partitions) == p)
            assert got["band_key"].tolist() == flat[rows].tolist()
            assert got["band_doc"].tolist() == (rows // bands).tolist()
            docs = sorted(set(mine.tolist()) | set((rows // bands).tolist()))
            assert got["docs"].tolist() == docs and got["units"].tolist() == units[docs].tolist()
            assert got["positions"].tolist() == positions[docs].tolist()


def test_the_packer_holds_near_copies_not_every_exact_copys_band_keys() -> None:
    """An exact copy shares every band key with its original; the partitions leave exact copies out of the band
    keys (they are removed anyway), so the packer's peak (decisions loaded + keep_masks, numpy traced) grows by
    a few bytes per extra document, not by one row per band of each copy."""
    texts = planted([document(i, lines=10) for i in range(120)], seed=2)
    hasher = MinHasher(CFG)
    signature = {t: hasher.signature(t) for t in texts}
    peaks = []
    for rows in (texts, texts + [t for t in texts[:60] for _ in range(25)]):  # + 1,500 exact copies
        rows = sorted(rows, key=texts.index)
        decisions = decided(rows, np.stack([signature[t] for t in rows]), workers=2, partitions=3)
        tracemalloc.start()
        keep = packer_keep(decisions, len(rows), workers=2)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert sum(int(k.sum()) for k in keep) < len(texts)  # the near copies are found
    extra = len(texts[:60]) * 25
    assert peaks[1] - peaks[0] < 64 * extra, (peaks, (peaks[1] - peaks[0]) / extra)


@pytest.mark.parametrize("num_perm", [16, 100, 128, 256])
def test_the_lsh_bands_are_those_datasketch_picks(num_perm: int) -> None:
    """The workers choose bands without datasketch; its MinHashLSH (the single-process reference) chooses the same."""
    from datasketch import MinHashLSH

    for threshold in [i / 20 for i in range(1, 20)]:
        try:
            reference = MinHashLSH(threshold=threshold, num_perm=num_perm)
        except ValueError:  # one band: refused there, and here
            with pytest.raises(ValueError, match=r"spec.data.dedup.minhash: threshold .* one LSH band"):
                band_ranges(MinHash(enabled=True, threshold=str(threshold), num_perm=num_perm))
            assert lsh_shape(threshold, num_perm)[0] == 1
            continue
        ranges = band_ranges(MinHash(enabled=True, threshold=str(threshold), num_perm=num_perm))
        assert ranges == list(reference.hashranges), (threshold, num_perm)


def _strip_word_hash(storage: Storage, ranks: list[int]) -> list[Storage]:
    """Make these workers' done.json look as an earlier version wrote them: no word_hash."""
    workers = [storage.sub("work", "preprocess", "domain", f"rank-{rank:05d}") for rank in range(2)]
    for rank in ranks:
        done = workers[rank].read_json("done.json")
        del done["word_hash"]
        workers[rank].write_json(done, "done.json")
    return workers


def test_workers_that_hashed_words_unlike_the_others_are_prepared_again_by_the_reduce(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An image changed mid-run: MinHash signatures of two word hashes never match. Dedup index 0 prepares again the
    workers whose word hash is not this version's; the other indexes leave it to index 0."""
    corpus(tmp_path)
    reference = packed(run(tmp_path, "reference", partitions=2))
    spec = partitioned_spec(tmp_path, "mixed", partitions=2)
    storage = Storage.from_spec(spec.storage)
    for rank in range(2):
        prepare(spec, storage, rank, 2)
    workers = _strip_word_hash(storage, [0])
    prepare(spec, storage, 0, 2)  # a worker keeps its own output: it cannot tell whether the others agree
    assert "word_hash" not in workers[0].read_json("done.json")
    assert reduce(spec, storage, 2, shard_rows=5, partition=1) == {}
    assert "workers [0] hashed words for MinHash as another version did" in caplog.text
    reduce(spec, storage, 2, shard_rows=5, partition=0)
    assert "word_hash" in workers[0].read_json("done.json")  # index 0 prepared worker 0 again
    assert packed(storage) == reference


def test_workers_that_agree_on_an_older_word_hash_are_decided_as_they_are(tmp_path: Path) -> None:
    corpus(tmp_path)
    spec = partitioned_spec(tmp_path, "older", partitions=1)
    storage = Storage.from_spec(spec.storage)
    for rank in range(2):
        prepare(spec, storage, rank, 2)
    workers = _strip_word_hash(storage, [0, 1])
    reduce(spec, storage, 2, shard_rows=5)
    assert storage.exists("data", "domain", "manifest.json")
    assert not any("word_hash" in w.read_json("done.json") for w in workers)  # nothing prepared again


def test_preparing_a_worker_again_for_one_set_leaves_its_other_sets_alone(tmp_path: Path, shared_data: Path) -> None:
    """Replay's workers disagree on the word hash, domain's agree (on an older one): worker 0 is prepared again for
    replay only. Re-making its domain output too would make domain's workers disagree, unchecked."""
    corpus(tmp_path)
    spec = make_spec(
        tmp_path / "sets",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        dedup={"minhash": {"enabled": True, "threshold": "0.7"}},
        replay={
            "source": {"name": "stories", "uri": str(shared_data / "corpora" / "stories260k_samples.jsonl")},
            "fraction": "0.25",
        },
        preprocessing={"limitToBudget": False, "workers": 2, "dedupPartitions": 1},
    )
    storage = Storage.from_spec(spec.storage)
    for rank in range(2):
        prepare(spec, storage, rank, 2)
    work = {
        name: [storage.sub("work", "preprocess", name, f"rank-{r:05d}") for r in range(2)]
        for name in ("domain", "replay")
    }
    for worker in (*work["domain"], work["replay"][0]):  # as an earlier version wrote them
        done = worker.read_json("done.json")
        del done["word_hash"]
        worker.write_json(done, "done.json")
    reduce(spec, storage, 2, shard_rows=5)
    assert "word_hash" in work["replay"][0].read_json("done.json")  # prepared again
    assert not any("word_hash" in w.read_json("done.json") for w in work["domain"])  # left as they agreed
    assert storage.exists("data", "replay", "manifest.json") and storage.exists("data", "domain", "manifest.json")

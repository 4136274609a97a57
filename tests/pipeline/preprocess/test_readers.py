"""Readers: work split inside one big file, every record read exactly once, bad input counted with its place."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cpt.api.data import Source
from cpt_pipeline.preprocess import readers
from cpt_pipeline.preprocess.readers import SourceError, plan_units, read_unit
from cpt_pipeline.preprocess.stats import Stats
from tests.pipeline.preprocess.helpers import document, write_jsonl


def read_all(source: Source, world: int) -> tuple[list[str], Stats, list]:
    """Every document, unit by unit in the global order; also checks that the ranks partition the units."""
    stats = Stats()
    units = plan_units([source], world)
    assert sorted(u.index for r in range(world) for u in units[r::world]) == list(range(len(units)))
    texts = [d.text for u in units for d in read_unit(u, source, stats)]
    return texts, stats, units


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "MIN_CHUNK", 4096)


def test_one_big_jsonl_file_is_split_across_all_workers(tmp_path: Path, small_chunks: None) -> None:
    texts = [document(i) for i in range(400)]
    path = write_jsonl(tmp_path / "big.jsonl", texts)
    source = Source(name="big", uri=str(path))
    got, stats, units = read_all(source, world=3)
    assert len(units) == -(-path.stat().st_size // 4096) > 3  # one file, many byte ranges of MIN_CHUNK
    assert all(u.path == str(path) for u in units)
    assert got == texts  # every line exactly once, in file order
    assert stats.counts["bad_records"] == 0


def test_ranges_that_cut_lines_anywhere_still_read_each_line_once(
    tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [document(i, lines=1 + i % 5) for i in range(300)]
    path = write_jsonl(tmp_path / "x.jsonl", texts)
    for chunk in (4096, 4097, 5000, 7777):
        monkeypatch.setattr(readers, "MIN_CHUNK", chunk)
        got, _, _ = read_all(Source(name="x", uri=str(path)), world=2)
        assert got == texts, chunk


def test_directories_globs_and_compressed_files(tmp_path: Path) -> None:
    import zstandard

    plain = [document(i) for i in range(5)]
    write_jsonl(tmp_path / "d" / "a.jsonl", plain)
    gz = [document(100 + i) for i in range(4)]
    with gzip.open(tmp_path / "d" / "b.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps({"text": t}) + "\n" for t in gz)
    zst = [document(200 + i) for i in range(3)]
    (tmp_path / "d" / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps({"text": t}) + "\n" for t in zst).encode())
    )
    got, _, units = read_all(Source(name="d", uri=str(tmp_path / "d")), world=2)
    assert got == plain + gz + zst
    assert read_all(Source(name="g", uri=str(tmp_path / "d" / "*.gz")), world=1)[0] == gz
    assert [u.end for u in units if u.path.endswith((".gz", ".zst"))] == [-1, -1]  # compressed: whole file


def test_parquet_row_groups_and_ranges(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [document(i) for i in range(50)]
    pq.write_table(pa.table({"content": texts, "n": list(range(50))}), tmp_path / "p.parquet", row_group_size=20)
    got, _, units = read_all(
        Source(name="p", uri=str(tmp_path / "p.parquet"), format="parquet", textField="content"), world=4
    )
    assert got == texts
    assert [(u.row_group, u.start, u.end) for u in units] == [(0, 0, 20), (1, 0, 20), (2, 0, 10)]  # read once


@pytest.mark.parametrize("layout", ["hub folder", "parquet glob"])
def test_a_hub_dataset_is_split_by_row_group_and_each_row_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cpt_pipeline.preprocess.identity import WORKERS, set_identity

    data, texts = tmp_path / "hub" / "data", []
    data.mkdir(parents=True)
    for i, rows in enumerate((70, 45, 33)):  # 12 + 8 + 6 row groups: not a multiple of 16 workers
        part = [document(1000 * i + j) for j in range(rows)]
        texts += part
        pq.write_table(pa.table({"text": part}), data / f"train-0000{i}-of-00003.parquet", row_group_size=6)
    pq.write_table(pa.table({"text": ["held out"]}), data / "validation-00000-of-00001.parquet")
    read_rows = [0]
    read_row_group = pq.ParquetFile.read_row_group

    def counting(self: pq.ParquetFile, *args: object, **kwargs: object) -> pa.Table:
        table = read_row_group(self, *args, **kwargs)
        read_rows[0] += table.num_rows
        return table

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    source = (
        Source(name="hub", uri=str(tmp_path / "hub"), format="hf")
        if layout == "hub folder"
        else Source(name="hub", uri=str(data / "train-*.parquet"), format="parquet")
    )
    world = 16
    units = plan_units([source], world)
    got, per_worker = [], []
    for rank in range(world):
        read_rows[0] = 0
        got += [d.text for u in units[rank::world] for d in read_unit(u, source, Stats())]
        per_worker.append(read_rows[0])
    assert sorted(got) == sorted(texts) and len(got) == len(texts) == sum(per_worker)  # every row read once
    assert max(per_worker) <= -(-len(texts) // world) + 6, per_worker  # its share plus one row group
    assert plan_units([source], 3) == units  # the plan, hence what is read, does not depend on the workers
    assert WORKERS not in set_identity({}, 64, [source], world)


def test_local_hf_dataset(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    texts = [document(i) for i in range(30)]
    DatasetDict({"train": Dataset.from_dict({"text": texts})}).save_to_disk(str(tmp_path / "ds"))
    got, _, units = read_all(Source(name="h", uri=str(tmp_path / "ds"), format="hf"), world=2)
    assert got == texts and len(units) > 2
    with pytest.raises(SourceError, match="split 'validation'"):
        plan_units([Source(name="h", uri=str(tmp_path / "ds"), format="hf", split="validation")], 1)


def test_bad_records_are_counted_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = document(1)
    path.write_bytes(
        b"\n".join(
            [
                json.dumps({"text": good}).encode(),
                b'{"text": "unterminated',
                b'{"text": "bad \xff\xfe bytes"}',
                json.dumps({"body": "no text field"}).encode(),
                json.dumps({"text": "   "}).encode(),
                json.dumps({"text": 42}).encode(),
                json.dumps({"text": good + " again"}).encode(),
            ]
        )
        + b"\n"
    )
    got, stats, _ = read_all(Source(name="bad", uri=str(path)), world=1)
    assert got == [good, good + " again"]
    c = stats.counts
    assert (c["bad_malformed_json"], c["bad_invalid_utf8"], c["bad_missing_text"], c["bad_empty_text"]) == (1, 1, 2, 1)
    assert c["bad_records"] == 5
    assert stats.examples["malformed_json"] == [f"{path}:2: " + stats.examples["malformed_json"][0].split(": ", 1)[1]]
    assert stats.examples["invalid_utf8"][0].startswith(f"{path}:3:")
    assert stats.examples["missing_text"][0] == f"{path}:4: no 'text' field"
    assert stats.examples["empty_text"][0] == f"{path}:5: empty 'text'"


def test_an_unreadable_file_is_reported_and_reading_goes_on(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl.gz").write_bytes(b"this is not gzip")
    write_jsonl(tmp_path / "d" / "b.jsonl", [document(5)])
    got, stats, _ = read_all(Source(name="d", uri=str(tmp_path / "d")), world=1)
    assert got == [document(5)]
    assert stats.counts["bad_unreadable_file"] == 1
    assert "a.jsonl.gz" in stats.examples["unreadable_file"][0]


def test_a_source_without_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"source 'nothing': no files match .*missing"):
        plan_units([Source(name="nothing", uri=str(tmp_path / "missing" / "*.jsonl"))], 2)

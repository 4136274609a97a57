"""Transport errors mid-file are retried and resumed, or fail the stage naming the file; dropped documents
stream to storage instead of piling up in memory."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from cpt.api.data import Source
from cpt_pipeline.preprocess import readers
from cpt_pipeline.preprocess.readers import SourceReadError, plan_units, read_unit
from cpt_pipeline.preprocess.runner import prepare
from cpt_pipeline.preprocess.stats import Stats
from cpt_pipeline.preprocess.tokenize import TextTokenizer
from cpt_pipeline.storage import Storage
from tests.pipeline.preprocess.helpers import document, make_spec, write_jsonl


class FlakyHandle:
    """A file handle whose connection drops after `lines` reads."""

    def __init__(self, handle: Any, lines: int) -> None:
        self.handle, self.lines = handle, lines

    def __enter__(self) -> FlakyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def seek(self, offset: int) -> int:
        return self.handle.seek(offset)

    def readline(self) -> bytes:
        if self.lines == 0:
            raise ConnectionResetError(104, "Connection reset by peer")
        self.lines -= 1
        return self.handle.readline()


def flaky_opens(monkeypatch: pytest.MonkeyPatch, failures: list[int]) -> list[int]:
    """Make the next opens drop after failures[i] lines each; later opens are healthy. Returns the open count."""
    original = readers._open_jsonl
    opens: list[int] = []

    def opener(unit: readers.WorkUnit) -> Any:
        opens.append(1)
        handle = original(unit)
        return FlakyHandle(handle, failures.pop(0)) if failures else handle

    monkeypatch.setattr(readers, "_open_jsonl", opener)
    monkeypatch.setattr(readers, "RETRY_DELAY_SECONDS", 0.0)
    return opens


def read_all(path: Path) -> tuple[list[readers.Document], Stats]:
    source = Source(name="s", uri=str(path))
    stats = Stats()
    docs = [doc for unit in plan_units([source], 1) for doc in read_unit(unit, source, stats)]
    return docs, stats


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_dropped_connection_is_retried_from_where_the_read_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    texts = [document(i) for i in range(30)]
    path = write_jsonl(tmp_path / "plain.jsonl", texts)
    if suffix.endswith(".gz"):
        packed = tmp_path / "data.jsonl.gz"
        packed.write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
        path = packed
    expected, _ = read_all(path)
    opens = flaky_opens(monkeypatch, [7, 0, 12])  # drops after line 7, at once on the retry, then after 12 more
    docs, stats = read_all(path)
    assert [d.text for d in docs] == texts and [d.location for d in docs] == [d.location for d in expected]
    assert stats.counts.get("bad_records", 0) == 0 and len(opens) == 4


def test_a_read_that_keeps_failing_stops_the_stage_with_the_file_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "in" / "d.jsonl", [document(i) for i in range(10)])
    opens = flaky_opens(monkeypatch, [3] + [0] * 20)
    spec = make_spec(tmp_path / "out", [{"name": "d", "uri": str(tmp_path / "in")}])
    with pytest.raises(SourceReadError, match=rf"{path}: read failed 6 times \(at byte \d+\).*ConnectionResetError"):
        prepare(spec, Storage.from_spec(spec.storage), 0, 1)
    assert len(opens) == 1 + readers.READ_RETRIES
    assert not Storage.from_spec(spec.storage).exists("work", "preprocess", "domain", "rank-00000", "done.json")


def test_a_missing_file_fails_at_once(tmp_path: Path) -> None:
    source = Source(name="s", uri=str(tmp_path / "gone.jsonl"))
    unit = readers.WorkUnit(0, "s", str(tmp_path / "gone.jsonl"), "jsonl", 0, -1)
    with pytest.raises(SourceReadError, match=r"source 's': cannot read .*gone\.jsonl"):
        list(read_unit(unit, source, Stats()))


def test_dropped_documents_stream_to_storage(tmp_path: Path) -> None:
    """30 MB of dropped one-line documents: the rank's memory never holds them all."""
    big = "word " * 2000  # 10 kB on one line: min_lines drops it
    texts = [big + str(i) for i in range(3000)] + [document(i) for i in range(5)]
    write_jsonl(tmp_path / "in" / "d.jsonl", texts)
    spec = make_spec(
        tmp_path / "out",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        filters={"writeDropped": True},
        preprocessing={"tokenizerBatchSize": 50},
    )
    TextTokenizer(spec.model.tokenizer_uri)  # its imports (transformers: ~150 MB traced once) are not the documents
    tracemalloc.start()
    try:
        prepare(spec, Storage.from_spec(spec.storage), 0, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dropped = tmp_path / "out" / "work" / "preprocess" / "domain" / "rank-00000" / "dropped.jsonl"
    lines = dropped.read_text().splitlines()
    assert len(lines) == 3000 and json.loads(lines[-1])["text"] == texts[2999]
    assert dropped.stat().st_size > 30e6 and peak < 10e6, peak

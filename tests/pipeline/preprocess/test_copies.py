"""A worker does not tokenize an exact copy of a text it has written (copies.py), and nothing in the output changes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from cpt_pipeline.preprocess import runner
from cpt_pipeline.preprocess.copies import WrittenTexts, text_key
from cpt_pipeline.preprocess.tokenize import TextTokenizer
from cpt_pipeline.storage import Storage
from tests.pipeline.preprocess.helpers import document, make_spec, write_jsonl
from tests.pipeline.preprocess.test_pipeline import run, shards_of


def test_only_a_copy_at_a_later_place_is_answered_and_the_table_keeps_the_newest_texts() -> None:
    written = WrittenTexts(limit=4)
    written.record(text_key("a"), unit=1, position=5, tokens=7)
    assert written.tokens_of_earlier_copy(text_key("a"), 1, 6) == 7
    assert written.tokens_of_earlier_copy(text_key("a"), 2, 0) == 7
    assert written.tokens_of_earlier_copy(text_key("a"), 1, 5) is None  # the same place
    assert written.tokens_of_earlier_copy(text_key("a"), 0, 9) is None  # an earlier unit: the reduce keeps that one
    assert written.tokens_of_earlier_copy(text_key("a "), 1, 6) is None  # not the same text
    written.record(text_key("a"), unit=3, position=0, tokens=9)  # the first place stays
    assert written.tokens_of_earlier_copy(text_key("a"), 4, 0) == 7
    written.record(text_key("b"), unit=2, position=0, tokens=1)
    written.trim()  # the newer generation (a, b) is full: it becomes the older
    for text in ("c", "d"):
        written.record(text_key(text), unit=2, position=1, tokens=1)
    assert text_key("a") in written and text_key("c") in written
    written.trim()  # (c, d) becomes the older, (a, b) is forgotten
    assert text_key("a") not in written and text_key("b") not in written
    assert text_key("c") in written and text_key("d") in written


def test_the_table_never_holds_more_than_its_limit() -> None:
    written = WrittenTexts(limit=1000)
    for key in range(200_000):
        written.record(key, unit=0, position=key, tokens=1)
        written.trim()
        assert len(written._newer) + len(written._older) <= 1000


def _corpus(tmp_path: Path) -> list[str]:
    """Copies next to each other, in another file, and one differing only in a trailing newline (the reduce drops
    it as an exact duplicate of the stripped text, but its own ids differ: it must be tokenized)."""
    docs = [document(i) for i in range(12)]
    first = [docs[0], docs[1], docs[1], docs[2], docs[0], docs[3], docs[4], docs[4]]
    second = [docs[5], docs[2], docs[6], docs[6] + "\n", docs[7], *docs[8:], docs[3]]
    write_jsonl(tmp_path / "in" / "a.jsonl", first)
    write_jsonl(tmp_path / "in" / "b.jsonl", second)
    return first + second


@pytest.mark.parametrize("capped", [False, True], ids=["whole", "capped-by-budget"])
def test_a_worker_tokenizes_each_text_once_and_the_output_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capped: bool
) -> None:
    texts = _corpus(tmp_path)
    encoded: list[str] = []
    encode_batch = TextTokenizer.encode_batch

    def counting(self: TextTokenizer, batch: list[str]) -> list[list[int]]:
        encoded.extend(batch)
        return encode_batch(self, batch)

    monkeypatch.setattr(TextTokenizer, "encode_batch", counting)
    # capped: the cap stops each unit after some copies were written (a text the cap left unwritten is tokenized
    # again when it comes back)
    data = {"tokenBudget": 2500, "preprocessing": {"limitToBudget": True}} if capped else {}
    outputs, counts = [], []
    for name, table in (("skip", runner.WrittenTexts), ("every", lambda: None)):
        monkeypatch.setattr(runner, "WrittenTexts", table)
        encoded.clear()
        spec = make_spec(tmp_path / name, [{"name": "edu", "uri": str(tmp_path / "in")}], **data)
        summary = run(spec, world=1, shard_rows=3)
        storage = Storage.from_spec(spec.storage)
        rows, tail, manifest = shards_of(storage, "domain", "edu")
        worker = runner.work_dir(storage, "domain", 0)
        with np.load(io.BytesIO(worker.read_bytes("docs.npz"))) as arrays:  # every document's place and end
            columns = {key: arrays[key].tolist() for key in arrays.files}
        recorded = worker.read_json("done.json")["stats"]["counts"]  # tokens written, the copies' included
        outputs.append(
            (summary, rows.tobytes(), tail.tobytes(), manifest["sources"]["edu"]["tokens"], columns, recorded)
        )
        counts.append(len(encoded))
        if name == "skip" and not capped:
            assert len(encoded) == len(set(encoded))  # no text tokenized twice
    assert outputs[0] == outputs[1]
    assert counts[0] < counts[1]
    if not capped:
        assert counts == [len(set(texts)), len(texts)]
        assert outputs[0][0]["duplicates"] == len(texts) - len(set(texts)) + 1  # + the one with a trailing newline
    else:  # the cap stopped reading at the same place: some copies were written, not every document was
        assert outputs[0][0]["duplicates"] > 0 and outputs[0][0]["docsKept"] < len(set(texts)) - 1

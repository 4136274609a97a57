"""Which data each set gets: the budget shared across sources by weight, zero replay, idle MinHash ranks,
sources that yield nothing, and the tokenizer batch size."""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from cpt_pipeline.preprocess import readers, runner
from cpt_pipeline.preprocess.identity import PreparedUnderAnotherSpec
from cpt_pipeline.preprocess.readers import SourceError
from cpt_pipeline.preprocess.runner import prepare, reduce
from cpt_pipeline.preprocess.started import record_start, started_budget
from cpt_pipeline.preprocess.tokenize import TextTokenizer
from cpt_pipeline.storage import Storage
from cpt_pipeline.train.data import MixedSamples, load_set
from tests.pipeline.preprocess.helpers import document, make_spec, stories_tokenizer, write_jsonl
from tests.pipeline.preprocess.test_pipeline import run, shards_of


def set_tokens(storage: Storage, set_name: str) -> dict[str, int]:
    manifest = storage.read_json("data", set_name, "manifest.json")
    return {name: entry["tokens"] + entry["tail_tokens"] for name, entry in manifest["sources"].items()}


def test_the_budget_is_shared_across_sources_by_weight_and_training_samples_both(tmp_path: Path) -> None:
    docs_a = [document(i, lines=20) for i in range(150)]
    docs_b = [document(1000 + i, lines=20) for i in range(150)]
    write_jsonl(tmp_path / "a" / "a.jsonl", docs_a)
    write_jsonl(tmp_path / "b" / "b.jsonl", docs_b)
    spec = make_spec(
        tmp_path / "out",
        [
            {"name": "a", "uri": str(tmp_path / "a"), "weight": 3},
            {"name": "b", "uri": str(tmp_path / "b"), "weight": 1},
        ],
        tokenBudget=20000,
        preprocessing={"limitToBudget": True, "workers": 2},
    )
    run(spec, world=2)
    storage = Storage.from_spec(spec.storage)
    tokens = set_tokens(storage, "domain")
    # each unit (here: each file) stops at the first document boundary past its cap of 1.5 x its share
    longest = 1 + max(map(len, TextTokenizer(stories_tokenizer()).encode_batch(docs_a + docs_b)))
    assert 20000 * 1.5 * 3 / 4 <= tokens["a"] < 20000 * 1.5 * 3 / 4 + longest, tokens
    assert 20000 * 1.5 / 4 <= tokens["b"] < 20000 * 1.5 / 4 + longest, tokens
    assert 2.6 < tokens["a"] / tokens["b"] < 3.2, tokens
    _, sources = load_set(storage, "domain", str(tmp_path / "cache"))
    samples = MixedSamples(sources, [], 0.0, seed=1)
    drawn = Counter(samples.sample(k)[1].split("/")[1] for k in range(400))
    assert drawn == {"a": 300, "b": 100}


def test_a_source_that_yields_no_row_is_named(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "good" / "g.jsonl", [document(i) for i in range(20)])
    write_jsonl(tmp_path / "short" / "s.jsonl", ["one line", "another line"])  # min_lines drops both
    spec = make_spec(
        tmp_path / "out",
        [{"name": "good", "uri": str(tmp_path / "good")}, {"name": "short", "uri": str(tmp_path / "short")}],
    )
    with pytest.raises(SourceError, match=r"source 'short' \(.*short\) yielded no full row of 64 tokens"):
        run(spec, world=1)


def test_zero_replay_means_no_replay_set(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(i) for i in range(20)])
    spec = make_spec(
        tmp_path / "out",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        replay={"source": {"name": "general", "uri": str(tmp_path / "does-not-exist")}, "fraction": "0"},
    )
    summary = run(spec, world=2)
    storage = Storage.from_spec(spec.storage)
    assert storage.exists("data", "domain", "manifest.json") and not storage.exists("data", "replay")
    assert summary["replayTokens"] == 0 and summary["docsKept"] == 20


def test_minhash_with_idle_ranks(tmp_path: Path) -> None:
    """One small file is one work unit: three of four workers read nothing."""
    docs = [document(i, lines=8) for i in range(10)]
    write_jsonl(tmp_path / "in" / "one.jsonl", [*docs, docs[3].replace("(3.2)", "(3.2, revised)")])
    spec = make_spec(
        tmp_path / "out",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        dedup={"minhash": {"enabled": True, "threshold": "0.7", "numPerm": 64}},
    )
    summary = run(spec, world=4)
    assert summary["docsRead"] == 11 and summary["duplicates"] == 1 and summary["docsKept"] == 10


def test_the_tokenizer_batch_size_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(i) for i in range(30)])
    spec = make_spec(
        tmp_path / "out", [{"name": "d", "uri": str(tmp_path / "in")}], preprocessing={"tokenizerBatchSize": 7}
    )
    sizes: list[int] = []
    original = TextTokenizer.encode_batch

    def recording(self: TextTokenizer, texts: list[str]) -> list[list[int]]:
        sizes.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(TextTokenizer, "encode_batch", recording)
    prepare(spec, Storage.from_spec(spec.storage), 0, 1)
    assert sizes == [7, 7, 7, 7, 2]


def write_gz(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": t}) + "\n" for t in texts)


def test_one_big_and_fifteen_small_gz_files_still_fill_the_budget(tmp_path: Path) -> None:
    """Compressed files are one unit each: the big file must give what the small ones cannot."""
    write_gz(tmp_path / "in" / "a-big.jsonl.gz", [document(i, lines=8) for i in range(600)])
    for f in range(15):
        write_gz(tmp_path / "in" / f"s{f:02d}.jsonl.gz", [document(10000 + 10 * f + j) for j in range(4)])
    spec = make_spec(
        tmp_path / "out",
        [{"name": "web", "uri": str(tmp_path / "in")}],
        tokenBudget=60000,
        preprocessing={"limitToBudget": True, "workers": 4},
    )
    summary = run(spec, world=4)
    manifest = Storage.from_spec(spec.storage).read_json("data", "domain", "manifest.json")
    assert manifest["tokens"] >= 60000, manifest["sources"]["web"]  # full rows: what training reads
    assert manifest["epochs"] == manifest["sources"]["web"]["epochs"] == round(60000 / manifest["tokens"], 3)
    assert manifest["epochs"] <= 1 and summary["epochs"] == {"domain": manifest["epochs"]}


def test_a_source_too_short_for_its_share_is_reported_in_epochs_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(tmp_path / "a" / "a.jsonl", [document(i, lines=20) for i in range(150)])
    write_jsonl(tmp_path / "b" / "b.jsonl", [document(1000 + i, lines=20) for i in range(2)])
    spec = make_spec(
        tmp_path / "out",
        [
            {"name": "a", "uri": str(tmp_path / "a")},
            {"name": "b", "uri": str(tmp_path / "b")},
        ],
        tokenBudget=20000,
        preprocessing={"limitToBudget": True, "workers": 2},
    )
    spec.data.sources[1].weight = 3  # b should give 15000 tokens and holds about 2500
    with caplog.at_level(logging.WARNING):
        summary = run(spec, world=2)
    manifest = Storage.from_spec(spec.storage).read_json("data", "domain", "manifest.json")
    b = manifest["sources"]["b"]
    assert b["tokens_needed"] == 15000 and b["epochs"] == round(15000 / b["tokens"], 3) > 3
    assert manifest["sources"]["a"]["epochs"] <= 1
    assert manifest["epochs"] == b["epochs"] and summary["epochs"] == {"domain": b["epochs"]}
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"source 'b' holds {b['tokens']} of the 15000 tokens" in warning and f"{b['epochs']} epochs" in warning


def test_the_same_documents_for_any_worker_count_under_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "MIN_CHUNK", 4096)  # the bigger files are split into byte ranges too
    for f, count in enumerate((40, 120, 15, 80, 60)):
        write_jsonl(tmp_path / "in" / f"{f}.jsonl", [document(100 * f + i) for i in range(count)])
    outputs = []
    for world in (2, 3):
        spec = make_spec(
            tmp_path / f"out{world}",
            [{"name": "d", "uri": str(tmp_path / "in")}],
            tokenBudget=20000,
            preprocessing={"limitToBudget": True, "workers": world},
        )
        summary = run(spec, world)
        rows, tail, _ = shards_of(Storage.from_spec(spec.storage), "domain", "d")
        outputs.append((rows.tobytes(), tail.tobytes()))
        assert summary["docsKept"] < 315  # the corpus is larger than the budget: each unit stopped at its cap
    assert outputs[0] == outputs[1]


def test_a_grown_budget_prepares_a_new_segment_after_the_documents_already_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/training.md, "Extending a run": segment 0 stays as it was; the growth's tokens come from documents
    no earlier segment read (each unit continues where it stopped); when the sources run out, one line says so."""
    monkeypatch.setattr(readers, "MIN_CHUNK", 4096)  # several units per file
    write_jsonl(tmp_path / "in" / "a.jsonl", [document(i, lines=8) for i in range(400)])
    options = {"preprocessing": {"limitToBudget": True, "workers": 2}}
    spec = make_spec(tmp_path / "out", [{"name": "d", "uri": str(tmp_path / "in")}], tokenBudget=8000, **options)
    storage = Storage.from_spec(spec.storage)
    run(spec, world=2)
    before = storage.read_bytes("data", "domain", "manifest.json")
    grown = make_spec(tmp_path / "out", [{"name": "d", "uri": str(tmp_path / "in")}], tokenBudget=20000, **options)
    summary = run(grown, world=2)
    assert storage.read_bytes("data", "domain", "manifest.json") == before  # segment 0 untouched
    segment = storage.read_json("data", "domain-segment-01", "manifest.json")
    assert (segment["budget"], segment["previous_budget"], segment["tokens_needed"]) == (20000, 8000, 12000)
    assert segment["tokens"] >= 12000 and segment["identity"] == json.loads(before)["identity"]
    first, second = (_documents(storage, folder) for folder in ("domain", "domain-segment-01"))
    assert second and first.isdisjoint(second)
    assert summary["tokens"] == sum(set_tokens(storage, f)["d"] for f in ("domain", "domain-segment-01"))
    run(grown, world=2)  # covered: nothing to do
    source = [{"name": "d", "uri": str(tmp_path / "in")}]
    with caplog.at_level(logging.WARNING):
        run(make_spec(tmp_path / "out", source, tokenBudget=10**7, **options), world=2)  # the rest of the documents
    assert "preprocess domain-segment-02: source 'd' holds" in caplog.text and "training will repeat it" in caplog.text
    with pytest.raises(SourceError, match=r"tokenBudget grew from 10000000 to 20000000, but .* hold no document"):
        run(make_spec(tmp_path / "out", source, tokenBudget=2 * 10**7, **options), world=2)
    edited = make_spec(
        tmp_path / "out",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        tokenBudget=30000,
        filters={"minLines": 5},
        **options,
    )
    with pytest.raises(ValueError, match=r"spec\.data\.filters\.minLines was 3, is 5"):
        run(edited, world=2)


def _documents(storage: Storage, folder: str) -> set[tuple[int, int]]:
    """(unit, position) of every document a segment's workers tokenized."""
    import io

    import numpy as np

    found: set[tuple[int, int]] = set()
    for rank in (0, 1):
        with np.load(io.BytesIO(storage.read_bytes("work", "preprocess", folder, f"rank-{rank:05d}", "docs.npz"))) as a:
            found |= set(zip(a["units"].tolist(), a["positions"].tolist(), strict=True))
    return found


def test_a_budget_grown_while_a_segment_is_prepared_completes_it_under_the_budget_it_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit between the workers and dedup (a local `cpt run` whose YAML changed, the operator's spec ConfigMap):
    the segment is packed for the budget its first worker started under, the growth is the next segment; also
    a worker that starts after the edit, and the same for a later segment."""
    monkeypatch.setattr(readers, "MIN_CHUNK", 4096)  # several units per file
    write_jsonl(tmp_path / "in" / "a.jsonl", [document(i, lines=8) for i in range(400)])
    source, options = [{"name": "d", "uri": str(tmp_path / "in")}], {"preprocessing": {"limitToBudget": True}}
    spec, grown, again = (make_spec(tmp_path / "out", source, tokenBudget=b, **options) for b in (8000, 20000, 30000))
    storage = Storage.from_spec(spec.storage)
    prepare(spec, storage, 0, 2)
    prepare(grown, storage, 1, 2)  # started after the edit
    reduce(grown, storage, 2)
    first = storage.read_json("data", "domain", "manifest.json")
    assert (first["budget"], first["tokens_needed"]) == (8000, 8000)
    prepare(grown, storage, 0, 2)  # segment 1 starts under 20000; the budget grows again meanwhile
    prepare(again, storage, 1, 2)
    reduce(again, storage, 2)
    second = storage.read_json("data", "domain-segment-01", "manifest.json")
    assert (second["budget"], second["previous_budget"], second["tokens_needed"]) == (20000, 8000, 12000)
    run(again, world=2)  # the next budget is the next segment
    third = storage.read_json("data", "domain-segment-02", "manifest.json")
    assert (third["budget"], third["previous_budget"]) == (30000, 20000)


def test_workers_that_start_while_the_budget_grows_prepare_the_segment_under_its_first_workers_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers do not run together: one that starts after the edit while the first is still reading takes the
    budget that one recorded at its start; one that started before that start was recorded (it finished for the
    grown budget) is prepared again by the dedup. The packed segment is the one the old budget alone makes."""
    monkeypatch.setattr(readers, "MIN_CHUNK", 4096)  # several units per file
    write_jsonl(tmp_path / "in" / "a.jsonl", [document(i, lines=8) for i in range(400)])
    source, options = [{"name": "d", "uri": str(tmp_path / "in")}], {"preprocessing": {"limitToBudget": True}}
    spec, grown = (make_spec(tmp_path / "out", source, tokenBudget=b, **options) for b in (8000, 20000))
    storage = Storage.from_spec(spec.storage)
    prepare(grown, storage, 2, 3)  # raced: read the grown spec before worker 0 recorded its start
    with monkeypatch.context() as still_reading, pytest.raises(InterruptedError):
        still_reading.setattr(runner._UnitReader, "read", _interrupted)
        prepare(spec, storage, 0, 3)  # worker 0 started under 8000 and is still reading
    prepare(grown, storage, 1, 3)
    prepare(grown, storage, 0, 3)  # worker 0 restarted under the grown spec
    reduce(grown, storage, 3)
    manifest = storage.read_json("data", "domain", "manifest.json")
    assert (manifest["budget"], manifest["tokens_needed"]) == (8000, 8000)
    reference = make_spec(tmp_path / "reference", source, tokenBudget=8000, **options)
    run(reference, world=3)
    rows, tail, _ = shards_of(Storage.from_spec(reference.storage), "domain", "d")
    packed_rows, packed_tail, _ = shards_of(storage, "domain", "d")
    assert (packed_rows.tobytes(), packed_tail.tobytes()) == (rows.tobytes(), tail.tobytes())
    run(grown, world=3)
    segment = storage.read_json("data", "domain-segment-01", "manifest.json")
    assert (segment["budget"], segment["previous_budget"], segment["tokens_needed"]) == (20000, 8000, 12000)


def test_a_run_applied_again_with_a_grown_budget_is_not_bound_by_its_deleted_incarnations_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run deleted while preprocessing (a worker still reading, one finished) and applied again under the same
    name and storage with a larger budget is a new incarnation (KUBECPT_RUN_UID): its first segment is prepared for
    its own budget, as the operator records it, and packs what a fresh run of that budget packs. Under the old code
    the old incarnation's start marker made the segment 8000 tokens while status.segments said 20000."""
    monkeypatch.setattr(readers, "MIN_CHUNK", 4096)  # several units per file
    write_jsonl(tmp_path / "in" / "a.jsonl", [document(i, lines=8) for i in range(400)])
    source, options = [{"name": "d", "uri": str(tmp_path / "in")}], {"preprocessing": {"limitToBudget": True}}
    spec, grown = (make_spec(tmp_path / "out", source, tokenBudget=b, **options) for b in (8000, 20000))
    storage = Storage.from_spec(spec.storage)
    monkeypatch.setenv("KUBECPT_RUN_UID", "0f1e2d3c-0000-0000-0000-00000000000a")
    prepare(spec, storage, 1, 2)  # the deleted incarnation: worker 1 finished, worker 0 still reading
    with monkeypatch.context() as still_reading, pytest.raises(InterruptedError):
        still_reading.setattr(runner._UnitReader, "read", _interrupted)
        prepare(spec, storage, 0, 2)
    assert started_budget(storage, "domain", 20000) == 8000  # its own start binds the old incarnation
    monkeypatch.setenv("KUBECPT_RUN_UID", "0f1e2d3c-0000-0000-0000-00000000000b")  # applied again
    run(grown, world=2)
    manifest = storage.read_json("data", "domain", "manifest.json")
    assert (manifest["budget"], manifest["tokens_needed"]) == (20000, 20000)
    monkeypatch.delenv("KUBECPT_RUN_UID")
    reference = make_spec(tmp_path / "reference", source, tokenBudget=20000, **options)
    run(reference, world=2)
    rows, tail, _ = shards_of(Storage.from_spec(reference.storage), "domain", "d")
    packed_rows, packed_tail, _ = shards_of(storage, "domain", "d")
    assert (packed_rows.tobytes(), packed_tail.tobytes()) == (rows.tobytes(), tail.tobytes())


def test_a_start_recorded_before_markers_named_the_run_binds_every_incarnation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator upgraded while a segment is prepared: the running preprocess pods (made by the old operator)
    record markers naming no run; the dedup pod of the new one names its run and must keep their budget, else it
    would prepare every worker again for the grown budget."""
    storage = Storage.from_spec(make_spec(tmp_path / "out", [{"name": "d", "uri": str(tmp_path)}]).storage)
    record_start(storage, "domain", 8000)  # an old operator's pod: no KUBECPT_RUN_UID
    monkeypatch.setenv("KUBECPT_RUN_UID", "0f1e2d3c-0000-0000-0000-00000000000b")
    record_start(storage, "domain", 20000)
    assert started_budget(storage, "domain", 20000) == 8000
    monkeypatch.setenv("KUBECPT_RUN_UID", "0f1e2d3c-0000-0000-0000-00000000000c")  # applied again
    assert started_budget(storage, "domain", 30000) == 8000  # an unnamed start binds every incarnation
    record_start(storage, "domain-segment-01", 20000)
    monkeypatch.setenv("KUBECPT_RUN_UID", "0f1e2d3c-0000-0000-0000-00000000000d")
    assert started_budget(storage, "domain-segment-01", 30000) == 30000  # another's named start does not


def _interrupted(*args: object, **kwargs: object) -> None:
    raise InterruptedError("the worker is still reading")


def test_a_manifest_without_a_budget_is_the_specs_only_when_it_was_made_for_it(tmp_path: Path) -> None:
    """A set packed before manifests recorded their budget: the spec's budget when its tokens_needed are that
    budget's (preparing for it gives the same data); after a growth, which budget it was made for is unknown: one
    line names the manifest (the growth is never silently taken as prepared)."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [document(i) for i in range(60)])
    source = [{"name": "d", "uri": str(tmp_path / "in")}]
    spec, grown = (make_spec(tmp_path / "out", source, tokenBudget=b) for b in (8000, 20000))
    storage = Storage.from_spec(spec.storage)
    run(spec, world=1)
    older = storage.read_json("data", "domain", "manifest.json")
    del older["budget"]
    storage.write_json(older, "data", "domain", "manifest.json")
    run(spec, world=1)  # covered: nothing to do
    with pytest.raises(PreparedUnderAnotherSpec) as error:
        run(grown, world=1)
    assert str(error.value).startswith(f"{storage.path('data', 'domain', 'manifest.json')} records no budget")
    assert "tokens_needed 8000 are not those of spec.data.tokenBudget 20000" in str(error.value)
